"""The cluster training step (PyTorchJob / TrainJob) against a FAKE Kubernetes API (no API server runs here).

The fake stands in only for the API server's custom-objects endpoints (create, get with a scripted status,
list by label selector, delete);
everything else is real: the job is built by ``cutalign.k8s``, validated against the shipped CRD schemas, and
the outputs are read back from the real S3 store.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from cutalign.config import LauncherSettings, TrainerSettings
from cutalign.iteration.cluster import TrainingJobFailed, delete_unfinished_jobs, job_name, train_on_cluster
from cutalign.k8s.validate import CrdCatalog
from cutalign.store import ArtifactStore
from cutalign.store.layout import checkpoint_prefix, metrics_key, model_prefix

MANIFEST_URI = "s3://bucket/iterations/0003/manifest.json"
POLICY_URI = "s3://bucket/models/base"


class FakeCustomObjectsApi:
    """Records created objects; ``get`` answers with the next scripted status (the last one repeats)."""

    def __init__(self, statuses: list[dict[str, Any]], *, exists: bool = False) -> None:
        self.statuses = statuses
        self.exists = exists
        self.created: list[tuple[str, str, str, str, dict[str, Any]]] = []
        self.deleted: list[tuple[str, str]] = []  # (plural, name)
        self.gets = 0

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        self.created.append((group, version, namespace, plural, copy.deepcopy(body)))
        if self.exists:
            raise ApiException(status=409, reason="AlreadyExists")
        return body

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        assert self.created, "the job was read before it was created"
        status = self.statuses[min(self.gets, len(self.statuses) - 1)]
        self.gets += 1
        return {"metadata": {"name": name, "namespace": namespace}, "status": status}

    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, *, label_selector: str
    ) -> dict[str, Any]:
        key, _, value = label_selector.partition("=")
        items = [
            {**body, "status": self.statuses[min(self.gets, len(self.statuses) - 1)]}
            for (_, _, ns, p, body) in self.created
            if ns == namespace and p == plural and body["metadata"]["labels"].get(key) == value
        ]
        return {"items": items}

    def delete_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> None:
        self.deleted.append((plural, name))


def condition(kind: str, status: str = "True", reason: str = "", message: str = "") -> dict[str, Any]:
    return {"conditions": [{"type": kind, "status": status, "reason": reason, "message": message}]}


RUNNING = condition("Running")
CREATED = condition("Created")


def write_metrics(store: ArtifactStore, iteration: int, run: str, steps: int) -> None:
    lines = [
        json.dumps({"step": s, "loss/total": 1.0 / s, "detection/precision": 0.5})
        for s in range(1, steps + 1)
    ]
    store.put_bytes(metrics_key(iteration, run), ("\n".join(lines) + "\n").encode())


@pytest.fixture(scope="module")
def catalog() -> CrdCatalog:
    """The shipped CRDs, loaded once (reading the 2 MB InferenceService CRD is the slow part)."""
    return CrdCatalog()


def run_step(
    store: ArtifactStore,
    api: FakeCustomObjectsApi,
    catalog: CrdCatalog,
    backend: str = "pytorchjob",
    attempt: str = "",
    sleep: Any = lambda _: None,
    **launcher: Any,
) -> Any:
    return train_on_cluster(
        api,
        TrainerSettings(threshold=1.2, lora_r=8),
        MANIFEST_URI,
        POLICY_URI,
        3,
        store=store,
        launcher=LauncherSettings(backend=backend, namespace="ml", gpus_per_node=2, **launcher),
        poll_interval_s=0.0,
        timeout_s=60,
        sleep=sleep,
        catalog=catalog,
        attempt=attempt,
    )


def test_fake_k8s_api_pytorchjob_is_created_valid_against_the_crd_and_awaited(
    store: ArtifactStore, catalog: CrdCatalog
) -> None:
    write_metrics(store, 3, "cut", steps=4)
    api = FakeCustomObjectsApi([CREATED, RUNNING, condition("Succeeded", reason="PyTorchJobSucceeded")])

    trained = run_step(store, api, catalog, workers=1)

    group, version, namespace, plural, job = api.created[0]
    assert (group, version, namespace, plural) == ("kubeflow.org", "v1", "ml", "pytorchjobs")
    assert catalog.validate(job).kind == "PyTorchJob"  # the body as submitted passes the CRD schema
    assert job["metadata"]["name"] == job_name(3, "cut") == "cut-it-0003"
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    args = master["args"]
    assert args[args.index("--data") + 1] == MANIFEST_URI
    assert args[args.index("--model") + 1] == POLICY_URI
    assert args[args.index("--model-out") + 1] == store.uri(model_prefix(3)).rstrip("/")
    assert args[args.index("--metrics-out") + 1] == store.uri(metrics_key(3, "cut"))
    assert args[args.index("--checkpoints") + 1] == store.uri(checkpoint_prefix(3, "cut")).rstrip("/")
    assert master["resources"]["limits"]["nvidia.com/gpu"] == "2"
    env = {e["name"]: e.get("value") for e in master["env"]}
    assert (env["CUTALIGN_TRAINER_THRESHOLD"], env["CUTALIGN_TRAINER_LORA_R"]) == ("1.2", "8")
    assert env["CUTALIGN_S3_BUCKET"] == store.bucket
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert api.gets == 3
    assert trained.model_uri == store.uri(model_prefix(3)).rstrip("/")
    assert (trained.steps, trained.final_metrics["detection/precision"]) == (4, 0.5)


def test_fake_k8s_api_trainjob_completes_on_its_complete_condition(
    store: ArtifactStore, catalog: CrdCatalog
) -> None:
    write_metrics(store, 3, "cut", steps=2)
    api = FakeCustomObjectsApi([{}, RUNNING, condition("Complete")])

    trained = run_step(store, api, catalog, backend="trainjob")

    group, version, _, plural, job = api.created[0]
    assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
    assert catalog.validate(job).kind == "TrainJob"
    assert job["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    assert trained.steps == 2


def test_fake_k8s_api_failed_job_raises_with_the_operators_reason(
    store: ArtifactStore, catalog: CrdCatalog
) -> None:
    api = FakeCustomObjectsApi(
        [RUNNING, condition("Failed", reason="BackoffLimitExceeded", message="pod OOMKilled")]
    )
    with pytest.raises(TrainingJobFailed, match="BackoffLimitExceeded: pod OOMKilled"):
        run_step(store, api, catalog)


def test_fake_k8s_api_retried_step_adopts_the_existing_job(store: ArtifactStore, catalog: CrdCatalog) -> None:
    write_metrics(store, 3, "cut", steps=1)
    api = FakeCustomObjectsApi([condition("Succeeded")], exists=True)
    trained = run_step(store, api, catalog)
    assert len(api.created) == 1 and trained.steps == 1


def test_fake_k8s_api_job_not_finished_in_time_raises_and_is_deleted(
    store: ArtifactStore, catalog: CrdCatalog
) -> None:
    api = FakeCustomObjectsApi([RUNNING])
    with pytest.raises(TrainingJobFailed, match="did not finish within 0s"):
        train_on_cluster(
            api,
            TrainerSettings(),
            MANIFEST_URI,
            POLICY_URI,
            3,
            store=store,
            launcher=LauncherSettings(namespace="ml"),
            poll_interval_s=0.0,
            timeout_s=0,
            sleep=lambda _: None,
            catalog=catalog,
        )
    assert api.deleted == [("pytorchjobs", "cut-it-0003")]  # no GPU job outlives its step


def test_fake_k8s_api_each_pipeline_run_gets_its_own_job_and_checkpoints(
    store: ArtifactStore, catalog: CrdCatalog
) -> None:
    """A new KFP run of an iteration must not adopt the previous run's job or resume its checkpoints."""
    names, checkpoints = [], []
    for attempt in ("0f1e2d3c-aaaa-bbbb-cccc-000000000001", "9a8b7c6d-aaaa-bbbb-cccc-000000000002"):
        api = FakeCustomObjectsApi([condition("Succeeded")])
        run_step(store, api, catalog, attempt=attempt)
        job = api.created[0][4]
        assert job["metadata"]["labels"]["cutalign.io/attempt"] == attempt
        assert job["metadata"]["labels"]["cutalign.io/iteration"] == "3"
        names.append(job["metadata"]["name"])
        args = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
        checkpoints.append(args[args.index("--checkpoints") + 1])
    assert names == ["cut-it-0003-0f1e2d3c", "cut-it-0003-9a8b7c6d"]
    assert checkpoints[0] != checkpoints[1]
    assert checkpoints[0] == store.uri(
        checkpoint_prefix(3, f"cut-{'0f1e2d3c-aaaa-bbbb-cccc-000000000001'}")
    ).rstrip("/")


def test_fake_k8s_api_interrupted_step_deletes_its_running_job(
    store: ArtifactStore, catalog: CrdCatalog
) -> None:
    """SIGTERM (a cancelled run) raises SystemExit inside the wait: the running job is deleted."""

    def interrupted(_: float) -> None:
        raise SystemExit(143)

    api = FakeCustomObjectsApi([RUNNING])
    with pytest.raises(SystemExit):
        run_step(store, api, catalog, attempt="1234", sleep=interrupted)
    assert api.deleted == [("pytorchjobs", "cut-it-0003-1234")]


@pytest.mark.parametrize(
    ("status", "deleted"), [(RUNNING, True), (condition("Succeeded"), False), (condition("Failed"), False)]
)
def test_fake_k8s_api_exit_handler_deletes_only_unfinished_jobs_of_its_run(
    store: ArtifactStore, catalog: CrdCatalog, status: dict[str, Any], deleted: bool
) -> None:
    api = FakeCustomObjectsApi([condition("Succeeded")])
    run_step(store, api, catalog, attempt="run-a")
    run_step(store, api, catalog, attempt="run-b")
    api.statuses, api.gets = [status], 0
    assert delete_unfinished_jobs(api, "ml", "run-a") == (["cut-it-0003-run-a"] if deleted else [])
    assert api.deleted == ([("pytorchjobs", "cut-it-0003-run-a")] if deleted else [])  # run-b untouched
