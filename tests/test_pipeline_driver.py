"""The multi-iteration driver: each iteration starts from the last promoted policy (real store and releases).

The pipeline run itself is replaced by a recording submitter that does what a run does to the store — promote
or not — so the driver's sequencing is checked in seconds; the real pipeline run is in ``test_pipeline_e2e``.
"""

from __future__ import annotations

from typing import Any

import pytest

from cutalign.pipelines.driver import run_iterations
from cutalign.policy.promotion import promote
from cutalign.store import ArtifactStore
from cutalign.v1 import common_pb2, training_pb2

BASE = "s3://models/base"


class RecordingSubmitter:
    """Records each run's arguments; promotes the iterations listed in ``promote_in``, like a passing gate."""

    def __init__(self, store: ArtifactStore, promote_in: set[int]) -> None:
        self.store = store
        self.promote_in = promote_in
        self.runs: list[dict[str, Any]] = []

    def __call__(self, arguments: dict[str, Any]) -> None:
        self.runs.append(arguments)
        iteration = arguments["iteration"]
        if iteration in self.promote_in:
            version = common_pb2.PolicyVersion(
                model_id="tiny",
                checkpoint_sha256=f"{iteration:064x}",
                iteration=iteration,
                uri=f"s3://bucket/iterations/{iteration:04d}/model",
            )
            promote(self.store, training_pb2.PolicyRelease(version=version))


def test_each_iteration_starts_from_the_last_promoted_policy(store: ArtifactStore) -> None:
    submit = RecordingSubmitter(store, promote_in={1, 3})

    outcomes = run_iterations(
        store,
        submit,
        iterations=4,
        first_iteration=1,
        prompts_template="s3://bucket/data/prompts-{iteration}.jsonl",
        eval_uri="s3://bucket/data/eval.jsonl",
        initial_policy_uri=BASE,
        params={"lora_r": 8, "gate_tolerance": 0.01},
    )

    assert all(r["base_policy_uri"] == BASE and "policy_uri" not in r for r in submit.runs)  # the plan picks
    assert [o.started_from for o in outcomes] == [
        BASE,
        "s3://bucket/iterations/0001/model",
        "s3://bucket/iterations/0001/model",  # iteration 2's gate failed: iteration 3 starts where 2 did
        "s3://bucket/iterations/0003/model",
    ]
    assert [r["prompts_uri"] for r in submit.runs][:2] == [
        "s3://bucket/data/prompts-1.jsonl",
        "s3://bucket/data/prompts-2.jsonl",
    ]
    assert all(r["eval_uri"] == "s3://bucket/data/eval.jsonl" and r["lora_r"] == 8 for r in submit.runs)
    assert [(o.iteration, o.promoted) for o in outcomes] == [(1, True), (2, False), (3, True), (4, False)]
    assert outcomes[-1].current_policy == "s3://bucket/iterations/0003/model"


def test_the_driver_refuses_to_reuse_prompts_or_to_override_what_it_sets(store: ArtifactStore) -> None:
    submit = RecordingSubmitter(store, promote_in=set())
    with pytest.raises(ValueError, match="no '\\{iteration\\}'"):
        run_iterations(
            store,
            submit,
            iterations=2,
            first_iteration=1,
            prompts_template="prompts.jsonl",
            eval_uri="eval.jsonl",
            initial_policy_uri=BASE,
        )
    with pytest.raises(ValueError, match="set by the driver"):
        run_iterations(
            store,
            submit,
            iterations=1,
            first_iteration=1,
            prompts_template="prompts.jsonl",
            eval_uri="eval.jsonl",
            initial_policy_uri=BASE,
            params={"policy_uri": "x"},
        )
    assert submit.runs == []
