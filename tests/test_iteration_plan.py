"""'Next' mode: a recurring pipeline run derives iteration, prompts and policy from the real store."""

from __future__ import annotations

import json

import pytest

from cutalign.iteration.plan import PlanError, next_iteration, plan_iteration
from cutalign.policy.promotion import promote
from cutalign.store import ArtifactStore
from cutalign.store.layout import eval_key, iteration_manifest_key, prompts_key, release_key
from cutalign.v1 import common_pb2, training_pb2

BASE = "s3://models/base"


def pool(store: ArtifactStore, n: int) -> str:
    rows = [{"id": f"p{i}", "instruction": f"Count from {i} to {i + 3}."} for i in range(n)]
    store.put_bytes("pool/prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    return store.uri("pool/prompts.jsonl")


def seal(store: ArtifactStore, iteration: int) -> None:
    store.put_manifest(iteration_manifest_key(iteration), training_pb2.IterationManifest(iteration=iteration))


def release(store: ArtifactStore, iteration: int) -> None:
    version = common_pb2.PolicyVersion(
        model_id="m", checkpoint_sha256=f"{iteration:064x}", iteration=iteration, uri=f"s3://b/it{iteration}"
    )
    promote(store, training_pb2.PolicyRelease(version=version))


def recorded_ids(store: ArtifactStore, iteration: int) -> list[str]:
    return [json.loads(line)["id"] for line in store.get_bytes(prompts_key(iteration)).decode().splitlines()]


def test_next_mode_walks_the_iterations_with_fresh_pool_slices(store: ArtifactStore) -> None:
    uri = pool(store, 10)
    args = {"iteration": 0, "prompt_pool_uri": uri, "prompts_per_iteration": 4, "base_policy_uri": BASE}

    first = plan_iteration(store, **args)
    assert (first.iteration, first.policy_uri) == (1, BASE)  # nothing sealed or released yet
    assert first.prompts_uri == store.uri(prompts_key(1))
    assert recorded_ids(store, 1) == ["p0", "p1", "p2", "p3"]
    assert plan_iteration(store, **args).iteration == 1  # a retry before sealing: the same iteration

    seal(store, 1)
    assert next_iteration(store) == 1  # sealed, not evaluated: finish it on the sealed data
    store.put_bytes(eval_key(1), b"{}")
    release(store, 1)
    second = plan_iteration(store, **args)
    assert (second.iteration, second.policy_uri) == (2, "s3://b/it1")  # the current release
    assert recorded_ids(store, 2) == ["p4", "p5", "p6", "p7"]

    seal(store, 2)
    store.put_bytes(eval_key(2), b"{}")  # gate failed: evaluated, nothing released
    with pytest.raises(PlanError, match="prompt pool .* has 10 prompts: iteration 3 needs rows 8..11"):
        plan_iteration(store, **args)


def test_explicit_arguments_win_and_templates_name_the_iteration(store: ArtifactStore) -> None:
    pool(store, 3)
    store.put_bytes("sets/0007.jsonl", store.get_bytes("pool/prompts.jsonl"))
    plan = plan_iteration(
        store, iteration=7, prompts_uri=store.uri("sets/{iteration:04d}.jsonl"), policy_uri="s3://b/explicit"
    )
    assert (plan.iteration, plan.policy_uri) == (7, "s3://b/explicit")
    assert recorded_ids(store, 7) == ["p0", "p1", "p2"]


def test_a_released_iteration_is_never_run_again(store: ArtifactStore) -> None:
    release(store, 1)
    assert store.exists(release_key(1))
    with pytest.raises(PlanError, match="iteration 1 is already released"):
        plan_iteration(store, iteration=1, prompts_uri="unused", base_policy_uri=BASE)


def test_missing_inputs_fail_with_the_fix(store: ArtifactStore) -> None:
    with pytest.raises(PlanError, match="has no prompts: set prompts_uri"):
        plan_iteration(store, iteration=0, base_policy_uri=BASE)
    with pytest.raises(PlanError, match="set base_policy_uri"):
        plan_iteration(store, iteration=0, prompt_pool_uri=pool(store, 2), prompts_per_iteration=2)
