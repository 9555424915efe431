"""The demo's fast variant end to end (1 iteration, tiny sizes) over the real broker, store, policy server,
services and KFP local runner — the CI stand-in for `make demo`.

Everything is real: Tansu + SeaweedFS (the session platform), the base model built by the demo's recipe and
cached in S3, the embedded policy server (a KServe subprocess), generator/judge/builder threads, each pipeline
task a local-runner subprocess, the in-process SFT baseline, and the written report. The model is tiny, so
the test checks the run's plumbing and records, not that it learns.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from rich.console import Console

from cutalign.cli.show import print_session
from cutalign.config import KafkaSettings, OnlineSettings, S3Settings
from cutalign.demo.app import JUDGMENT_ARM, DemoSettings, run_demo
from cutalign.demo.basemodel import SPEC_FILE, BaseModelSpec, WarmStartData, cached_base_model
from cutalign.modelinit import ModelShape
from cutalign.online.session import Callbacks
from cutalign.online.stack import run_bucket
from cutalign.policy.promotion import current_release
from cutalign.reading.settings import WarmStartSettings
from cutalign.store import ArtifactStore
from cutalign.store.layout import eval_key, iteration_manifest_key

pytestmark = pytest.mark.slow

FAST = DemoSettings(
    base=BaseModelSpec(  # smallest warm start whose responses are not blank (blank ones are dead-lettered)
        shape=ModelShape(layers=2, hidden_size=64, heads=2, intermediate_size=128, max_positions=256),
        data=WarmStartData(n_plain=96, n_judged=48),
        training=WarmStartSettings(epochs=12, batch_size=16, learning_rate=3e-3),
    ),
    online=OnlineSettings(
        iterations=1, prompts_per_iteration=8, steps=2, arm=JUDGMENT_ARM, baseline=True, threads=1
    ),
    eval_size=6,
    trainer={"micro_batch_size": 4, "lora_r": 4, "lora_alpha": 4, "cutoff": 256},
)


def test_fast_demo_runs_one_iteration_through_the_services_and_reports_both_arms(
    kafka_settings: KafkaSettings,
    s3_settings: S3Settings,
    store: ArtifactStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    stages: list[str] = []
    tasks: list[tuple[int, str]] = []
    result = run_demo(
        FAST,
        tmp_path / "demo",
        kafka=kafka_settings,
        s3=s3_settings,
        callbacks=Callbacks(stage=stages.append, task=lambda i, name: tasks.append((i, name))),
    )

    # the judgment arm went through the pipeline: every prompt judged, the candidate evaluated and promoted
    judged, baseline = result.results
    assert judged.arm == JUDGMENT_ARM and baseline.arm == "sft"
    base, iteration = judged.records
    assert base.iteration == 0 and base.accuracy == result.base_accuracy
    assert iteration.iteration == 1 and iteration.promoted and iteration.steps == 2
    assert iteration.positives + iteration.negatives == FAST.online.prompts_per_iteration
    assert iteration.trained_positives == iteration.positives, "the span arm keeps every positive"
    assert {name for _, name in tasks} >= {
        "publish-prompts",
        "wait-for-judging",
        "train-policy",
        "promote-policy",
    }
    assert set(iteration.seconds) >= {"wait-for-judging", "train-policy", "evaluate-policy"}
    # ... recorded in the run's own bucket, with the release the server was hot-reloaded to
    run_store = ArtifactStore(s3_settings.model_copy(update={"bucket": judged.bucket}))
    assert judged.bucket == run_bucket(result.config["run_id"])
    assert run_store.exists(iteration_manifest_key(1))
    evaluated = json.loads(run_store.get_bytes(eval_key(1)))
    assert evaluated["metrics"]["eval/accuracy"] == iteration.accuracy
    assert evaluated["metrics"]["eval/total"] == FAST.eval_size
    release = current_release(run_store)
    assert release is not None and release.version.iteration == 1

    # the SFT baseline ran in-process on the same prompts, from the same base accuracy, in its own bucket
    assert [r.iteration for r in baseline.records] == [0, 1]
    assert baseline.records[0].accuracy == result.base_accuracy and baseline.bucket != judged.bucket
    assert baseline.records[1].positives + baseline.records[1].negatives == FAST.online.prompts_per_iteration
    assert baseline.records[1].positives == iteration.positives, "iteration 1: same base, prompts, data"

    # the base model was built once and is cached in the default bucket: a second run would fetch it
    assert result.config["base_cached"] is False
    assert store.exists(FAST.base.key_prefix + SPEC_FILE)
    assert cached_base_model(FAST.base, store, tmp_path / "unused")[1] is True

    # nothing the demo started is left running
    alive = {t.name for t in threading.enumerate()}
    assert not alive & {"generator", "judge", "builder"}
    assert any("policy server" in s for s in stages) and any("baseline" in s for s in stages)

    console = Console(record=True, width=80)
    print_session(result, tmp_path / "out", console)
    body = json.loads((tmp_path / "out" / "report.json").read_text())
    assert body["runs"][0]["records"][1]["accuracy"] == iteration.accuracy
    assert body["config"]["seconds"]["total"] > 0
    assert (tmp_path / "out" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    text = console.export_text()
    assert f"{iteration.positives}/{iteration.negatives}" in text and "sft" in text
    assert f"{iteration.accuracy:.3f}" in text, "the accuracy is printed whole at 80 columns"
    assert max(len(line) for line in text.splitlines()) <= 80
