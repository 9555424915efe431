"""One online iteration end to end: the KFP pipeline on the KFP local runner, driven by the multi-iteration
driver, against the real local platform and the real services (policy server, generator, judge, builder).

Everything is real and runs here: Tansu + SeaweedFS, the policy server (KServe, a subprocess), the generator,
judge and target builder services (threads, through their ``run``/``serve`` functions), and every pipeline
task (a subprocess per task, as the local runner runs them). The model is a random 2-layer Llama: the test
checks the loop's plumbing and its records, not that the tiny model learns to count.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cutalign.builder import TargetBuilder
from cutalign.bus import provision_topics
from cutalign.config import BuilderSettings, GeneratorSettings, JudgeSettings, KafkaSettings, PolicySettings
from cutalign.demo.task import CountingTask
from cutalign.generator.service import run as run_generator
from cutalign.judging.service import run as run_judge
from cutalign.pipelines.driver import local_submitter, run_iterations
from cutalign.policy.launcher import start_policy_server
from cutalign.policy.promotion import current_release
from cutalign.store import ArtifactStore
from cutalign.store.layout import eval_key, iteration_manifest_key, model_prefix, prompts_key, release_key
from cutalign.v1 import training_pb2
from policy_support import http_json, tiny_policy

pytestmark = pytest.mark.slow

TRAIN_PROMPTS = 8
EVAL_PROMPTS = 6


class ServiceThreads:
    """Runs each service's blocking loop in a thread until the test ends; re-raises what a service raised."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def start(self, name: str, target: Callable[[], Any]) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException as e:  # reported by close(): a service failing is a test failure
                self.errors.append(e)

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        if self.errors:
            raise self.errors[0]


@pytest.fixture
def services() -> Iterator[ServiceThreads]:
    threads = ServiceThreads()
    yield threads
    threads.close()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_one_online_iteration_runs_end_to_end_on_the_kfp_local_runner(
    store: ArtifactStore,
    kafka_settings: KafkaSettings,
    env_for: dict[str, str],
    services: ServiceThreads,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provision_topics(kafka_settings)
    store.upload_dir("models/tiny/", tiny_policy(tmp_path / "base"))
    base_uri = store.uri("models/tiny")
    task = CountingTask()
    prompts = write_jsonl(tmp_path / "prompts-1.jsonl", task.train_prompts()[:TRAIN_PROMPTS])
    eval_set = write_jsonl(tmp_path / "eval.jsonl", task.eval_prompts()[:EVAL_PROMPTS])
    # the pipeline's tasks are subprocesses of the local runner: they inherit this environment
    for name, value in env_for.items():
        if name.startswith(("CUTALIGN_KAFKA_", "CUTALIGN_S3_")):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("CUTALIGN_ITERATION_POLL_INTERVAL_S", "0.5")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # each local task leaves a temp dir behind
    monkeypatch.setenv("OMP_NUM_THREADS", "2")

    server = start_policy_server(
        base_uri,
        env={**env_for, "OMP_NUM_THREADS": "1"},
        max_batch_size=8,
        log_path=tmp_path / "policy-server.log",
    )
    monkeypatch.setenv("CUTALIGN_ITERATION_POLICY_ADMIN_TOKEN", server.admin_token)  # the promote step's
    try:
        policy = PolicySettings(url=server.url, model_name=server.model_name, max_new_tokens=16)
        generator = GeneratorSettings(
            iteration=1, group_id=f"{unique_name}-gen", batch_size=8, poll_timeout_s=0.2
        )
        services.start("generator", lambda: run_generator(kafka_settings, policy, generator, services.stop))
        judge = JudgeSettings(judge="counting", group_id=f"{unique_name}-judge", http_port=0)
        services.start("judge", lambda: run_judge(kafka_settings, judge, stop_event=services.stop))
        builder = TargetBuilder(
            kafka_settings,
            store.settings,
            BuilderSettings(
                iteration=1, http_port=0, shard_max_seconds=0.5, group_id=f"{unique_name}-builder"
            ),
            store=store,
        )
        services.start("builder", lambda: builder.serve(services.stop))
        assert builder.ready.wait(30), "the target builder did not become ready"
        monkeypatch.setenv("CUTALIGN_ITERATION_BUILDER_ADMIN_TOKEN", builder.admin_token)  # the seal step's

        outcomes = run_iterations(
            store,
            local_submitter(str(tmp_path / "kfp")),
            iterations=1,
            first_iteration=1,
            prompts_template=prompts,
            eval_uri=eval_set,
            initial_policy_uri=base_uri,
            params={
                "builder_url": f"http://127.0.0.1:{builder.http_port}",
                "policy_admin_url": server.url,
                "lora_r": 4,
                "lora_alpha": 8,
                "gpus": 0,
                "deadline_s": 90.0,
                "gate_tolerance": 1.0,  # the method promotes every iteration
                "judge": "counting",
                "trainer_overrides_json": json.dumps(
                    {"max_steps": 2, "micro_batch_size": 4, "checkpoint_every": 1}
                ),
                "eval_overrides_json": json.dumps({"eval_max_new_tokens": 16, "eval_batch_size": 8}),
            },
        )
        _, served = http_json("GET", f"{server.url}/v1/policy/version")
    finally:
        server.stop()

    # the driver saw the iteration promote a new policy, trained from the base model
    (outcome,) = outcomes
    assert (outcome.iteration, outcome.started_from, outcome.promoted) == (1, base_uri, True)
    # every step left its record in the bucket layout
    assert store.exists(prompts_key(1))
    manifest = store.get_manifest(iteration_manifest_key(1), training_pb2.IterationManifest)
    assert manifest.sealed_by.startswith("http@")  # sealed through the running builder's endpoint
    assert sum(manifest.counts_before_downsampling.values()) == TRAIN_PROMPTS  # one judgment per prompt
    assert store.list(model_prefix(1)), "the trained model is missing"
    report = json.loads(store.get_bytes(eval_key(1)))
    assert report["metrics"]["eval/total"] == EVAL_PROMPTS and len(report["results"]) == EVAL_PROMPTS
    release = current_release(store)
    assert release is not None and release.version.iteration == 1
    assert release.version.uri == outcome.current_policy == store.uri(model_prefix(1)).rstrip("/")
    assert release.manifest_key == iteration_manifest_key(1)
    assert release.eval_metrics["eval/accuracy"] == report["metrics"]["eval/accuracy"]
    assert store.exists(release_key(1))
    # the policy server hot-reloaded the release, checked against its sha256
    assert served["policy"]["checkpoint_sha256"] == release.version.checkpoint_sha256
    # KFP recorded the evaluation as a Metrics artifact in the project's metric names
    (executor_output,) = (tmp_path / "kfp").rglob("evaluate-policy/executor_output.json")
    logged = json.loads(executor_output.read_text())["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["eval/accuracy"] == report["metrics"]["eval/accuracy"]
    assert logged["gate/passed"] == 1.0
