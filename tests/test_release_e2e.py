"""The production release, run here: ``ci/production-values.yaml`` rendered by Helm, its Deployments
started as local processes against the local platform, and two iterations of the release's compiled pipeline
on the KFP local runner with the chart's parameters in 'next' mode, production feedback posted between them.

Real: Helm rendering, every service process (command, args and env from the rendered ConfigMaps and the
Secrets the chart README has an operator create), the pipeline compiled from the release's wiring by the code
the upload Job runs, each task's env from its compiled kfp-kubernetes config, the broker, the store, torchrun
training and the policy server's hot reload. Stand-ins, named as such:

* **Kubernetes API + Training Operator**: ``kube_standin.KubernetesStandIn`` (creates, lists, deletes
  PyTorchJobs and runs the Master's container as a local process).
* **The policy server**: the production profile serves with vLLM, which cannot run here and whose stand-in
  runs no model; the release is rendered with ``policy.mode=embedded`` so the policy Deployment is
  cutalign's embedded server (the production vLLM pod runs from its rendered containers in
  ``test_release_vllm_pod.py``).
* **The LLM judge**: its model cannot run here; ``judge.judge=counting`` judges the counting task instead.
* **GPUs**: none here: ``launcher.gpusPerNode=0`` and one training process per node.
* **Kafka SASL_SSL and S3 TLS**: the rendered settings are checked (SASL user and password, CA paths) before
  the endpoints are rewritten to the local plain-TCP broker and store.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from cutalign.demo.task import CountingTask
from cutalign.pipelines.compile import compile_pipeline
from cutalign.pipelines.wiring import PipelineWiring
from cutalign.platform import LocalPlatform
from cutalign.policy.promotion import current_release
from cutalign.store import ArtifactStore
from cutalign.store.layout import iteration_manifest_key, prompts_key, release_key
from cutalign.v1 import training_pb2
from helm_support import CHART, HELM, find, render
from kube_standin import KubernetesStandIn
from policy_support import http_json, tiny_policy
from release_support import (
    LocalRelease,
    installed_cluster,
    local_rewrites,
    release_topics,
    task_environment,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HELM.exists(), reason=f"{HELM} is missing: run `make helm-tool` first"),
]

POOL, PER_ITERATION, EVAL = 12, 6, 4
FEEDBACK_SOURCE = "e2e-support-bot"


@dataclass
class Run:
    store: ArtifactStore
    release: LocalRelease
    kube: KubernetesStandIn
    resolved_task_env: dict[str, str]
    feedback_answers: list[int]
    iterations: list[int]


def overlay(name: str, bucket: str, base: str, topics: dict[str, str]) -> dict[str, Any]:
    """Test-scoped values on top of the production profile (names, the stand-ins, tiny sizes)."""
    return {
        "s3": {"bucket": bucket},
        "kafka": {
            **topics,
            "sessionTimeoutMs": 6000,  # the local broker holds a first JoinGroup for session/2
            "heartbeatIntervalMs": 2000,
        },
        "policy": {"mode": "embedded", "gpus": 0, "maxNewTokens": 16},
        "policyServer": {
            "policyUri": base,
            "device": "cpu",
            "watchIntervalS": 1.0,
            "maxBatchSize": 8,
            "existingSecret": "cutalign-policy-admin",
        },
        "generator": {"groupId": f"{name}-generator", "batchSize": 8, "pollTimeoutS": 0.2},
        "judge": {"judge": "counting", "groupId": f"{name}-judge"},
        "builder": {"groupId": f"{name}-builder", "shardMaxSeconds": 0.5},
        "feedback": {"policyRefreshS": 1.0},
        "launcher": {"gpusPerNode": 0, "workers": 0, "nodeSelector": {}, "tolerations": []},
        "trainer": {"maxSteps": 2, "microBatchSize": 4, "checkpointEvery": 1, "loraR": 4, "loraAlpha": 8},
        "iteration": {
            "pollIntervalS": 0.5,
            "gateTolerance": 1.0,
            "evalMaxNewTokens": 16,
            "evalBatchSize": 8,
            "deadlineS": 120,
            "jobPollIntervalS": 1,
        },
        "pipeline": {
            "run": {
                "evalUri": f"s3://{bucket}/data/eval.jsonl",
                "promptPoolUri": f"s3://{bucket}/data/pool.jsonl",
                "promptsPerIteration": PER_ITERATION,
                "basePolicyUri": base,
            }
        },
    }


def post_feedback(url: str, token: str, sha256: str, n: int) -> list[int]:
    statuses = []
    for i in range(n):
        status, _ = http_json(
            "POST",
            f"{url}/v1/feedback",
            {
                "instruction": f"Count from {10 + i} to {14 + i}.",
                "response": f"{10 + i} {11 + i} {13 + i}",
                "feedback": f"After {11 + i} it says {13 + i}, but it should say {12 + i}.",
                "positive": False,
                "source": FEEDBACK_SOURCE,
                "policy_version": sha256,
                "user_id": f"user-{i}",
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        statuses.append(status)
    return statuses


@pytest.fixture(scope="module")
def run(platform: LocalPlatform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    from kfp import local
    from kfp.components import load_component_from_file

    work = tmp_path_factory.mktemp("release")
    name = f"t-release-{uuid.uuid4().hex[:8]}"
    store = ArtifactStore(platform.s3.model_copy(update={"bucket": name}))
    store.ensure_bucket()
    store.upload_dir("models/base/", tiny_policy(work / "base"))
    base = store.uri("models/base")
    task = CountingTask()
    for key, rows in (
        ("data/pool.jsonl", task.train_prompts()[:POOL]),
        ("data/eval.jsonl", task.eval_prompts()[:EVAL]),
    ):
        store.put_bytes(key, "".join(json.dumps(r) + "\n" for r in rows).encode())
    values = overlay(name, name, base, release_topics(platform, name, partitions=2))
    (work / "overlay.yaml").write_text(yaml.safe_dump(values))
    objs = render(CHART, "-f", str(CHART / "ci" / "production-values.yaml"), "-f", str(work / "overlay.yaml"))
    cluster = installed_cluster(objs, platform, work)

    release = LocalRelease(objs, cluster, work)
    with (
        pytest.MonkeyPatch.context() as env,
        KubernetesStandIn(cluster, lambda: local_rewrites(platform), work) as kube,
    ):
        try:
            policy = release.start(
                "rel-cutalign-policy",
                lambda port: local_rewrites(platform),
                extra_args=lambda p: ["--http_port", str(p)],
            )
            release.wait_ready()  # the generator asks the server what it serves (a pod would restart)
            for deployment in ("generator", "judge", "target-builder", "feedback"):
                release.start(f"rel-cutalign-{deployment}", lambda port: local_rewrites(platform, policy.url))
            release.wait_ready()

            # the release's pipeline, compiled from its wiring as the upload Job compiles it
            wiring = PipelineWiring.model_validate_json(
                find(objs, "ConfigMap", "-pipeline-upload")["data"]["wiring.json"]
            )
            compiled = compile_pipeline(work / "pipeline", wiring)
            _, platform_spec = yaml.safe_load_all(compiled.read_text())
            task_env: dict[str, str] = {}
            for _, pod_env, _mounts in task_environment(platform_spec, cluster):
                for key, value in pod_env.items():
                    assert task_env.setdefault(key, value) == value, key  # one env serves every local task
            resolved = dict(task_env)
            for key, value in local_rewrites(platform).apply(task_env).items():
                env.setenv(key, value)
            env.setenv("KUBECONFIG", kube.kubeconfig)
            env.setenv("TMPDIR", str(work))  # the local runner leaves a directory per task
            env.setenv("OMP_NUM_THREADS", "2")
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "kfp"))
            pipeline = load_component_from_file(str(compiled))
            # every parameter is the chart's default, but the two service URLs (cluster DNS names)
            endpoints = {
                "builder_url": release.services["rel-cutalign-target-builder"].url,
                "policy_admin_url": policy.url,
            }
            pipeline(**endpoints)
            release.check_running()
            first = current_release(store)
            assert first is not None
            answers = post_feedback(
                release.services["rel-cutalign-feedback"].url,
                cluster.secrets["cutalign-feedback"]["token"],
                first.version.checkpoint_sha256,
                3,
            )
            pipeline(**endpoints)
            release.check_running()
            yield Run(store, release, kube, resolved, answers, [1, 2])
        finally:
            release.close()


def test_rendered_release_carries_the_production_wiring(run: Run) -> None:
    """What the pods and task pods get on the cluster, before anything is rewritten to the local platform."""
    generator = run.release.resolved["rel-cutalign-generator"]
    assert generator["CUTALIGN_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert generator["CUTALIGN_KAFKA_SASL_USERNAME"] == "rel-cutalign-generator"
    assert generator["CUTALIGN_KAFKA_SASL_PASSWORD"] == "scram-generator"  # its own KafkaUser's Secret
    assert generator["CUTALIGN_KAFKA_SSL_CA_LOCATION"] == "/etc/cutalign/ca/kafka/ca.crt"
    assert generator["CUTALIGN_S3_CA_BUNDLE"] == "/etc/cutalign/ca/s3/ca.crt"
    assert run.release.resolved["rel-cutalign-judge"]["CUTALIGN_JUDGE_LLM_API_TOKEN"] == "e2e-llm-token"
    tasks = run.resolved_task_env
    assert tasks["CUTALIGN_KAFKA_SASL_USERNAME"] == "rel-cutalign-pipeline"
    assert tasks["CUTALIGN_KAFKA_SASL_PASSWORD"] == "scram-pipeline"
    assert tasks["CUTALIGN_S3_ACCESS_KEY"] and tasks["CUTALIGN_JUDGE_LLM_API_TOKEN"] == "e2e-llm-token"
    assert tasks["CUTALIGN_ITERATION_POLICY_ADMIN_TOKEN"] == "e2e-admin-token"
    # the seal step and the builder it calls hold the same token, from the operator's Secret
    assert tasks["CUTALIGN_ITERATION_BUILDER_ADMIN_TOKEN"] == "e2e-builder-token"
    assert (
        run.release.resolved["rel-cutalign-target-builder"]["CUTALIGN_BUILDER_ADMIN_TOKEN"]
        == "e2e-builder-token"
    )
    assert tasks["CUTALIGN_LAUNCHER_NAMESPACE"] == "cutalign-test"


def test_two_recurring_runs_with_every_default_run_iterations_one_and_two(run: Run) -> None:
    store = run.store
    manifests = [
        store.get_manifest(iteration_manifest_key(i), training_pb2.IterationManifest) for i in (1, 2)
    ]
    for i, manifest in enumerate(manifests, start=1):
        assert manifest.sealed_by.startswith("http@")  # through the running builder's seal endpoint
        rows = [json.loads(line) for line in store.get_bytes(prompts_key(i)).decode().splitlines()]
        assert len(rows) == PER_ITERATION  # a fresh slice of the pool for each iteration
        judged = sum(v for k, v in manifest.counts_before_downsampling.items())
        assert judged >= PER_ITERATION
    ids = [
        [json.loads(line)["id"] for line in store.get_bytes(prompts_key(i)).decode().splitlines()]
        for i in (1, 2)
    ]
    assert not set(ids[0]) & set(ids[1])
    # both iterations promoted (gate tolerance 1.0), each trained from the policy before it
    releases = [store.get_manifest(release_key(i), training_pb2.PolicyRelease) for i in (1, 2)]
    current = current_release(store)
    assert current is not None and current.version.iteration == 2
    assert releases[0].version.checkpoint_sha256 != releases[1].version.checkpoint_sha256
    # training ran as one PyTorchJob per run, named after the run, and nothing was left running
    jobs = [job["metadata"] for job in run.kube.created]
    assert [m["labels"]["cutalign.io/iteration"] for m in jobs] == ["1", "2"]
    assert len({m["labels"]["cutalign.io/attempt"] for m in jobs}) == 2
    assert all(m["name"].startswith("cut-it-000") for m in jobs) and run.kube.deleted == []
    # the policy server hot-reloaded iteration 2's release (with the admin token from its Secret)
    _, served = http_json("GET", f"{run.release.services['rel-cutalign-policy'].url}/v1/policy/version")
    assert served["policy"]["checkpoint_sha256"] == current.version.checkpoint_sha256


def test_production_feedback_is_accepted_between_iterations(run: Run) -> None:
    assert run.feedback_answers == [202, 202, 202]


def test_production_feedback_posted_between_the_runs_reaches_iteration_twos_manifest(run: Run) -> None:
    manifest = run.store.get_manifest(iteration_manifest_key(2), training_pb2.IterationManifest)
    assert f"feedback:{FEEDBACK_SOURCE}" in manifest.judge_ids
