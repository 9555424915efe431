"""Step 4 (cluster launchers): run the trainer as a PyTorchJob or a TrainJob and wait for its verdict.

The job is built by ``cutalign.k8s`` (the same manifest the chart renders), validated offline against its CRD
before it is submitted — a misspelt field would otherwise be pruned silently by the API server — and created
with the Kubernetes ``CustomObjectsApi``.

One pipeline run is one attempt at an iteration: the job's name and its ``cutalign.io/attempt`` label carry
the KFP run id, and so does the checkpoint prefix, so a *retried step* of the same run finds the job it
created (409 Conflict) and waits for that one, while a *new run* of the same iteration starts a fresh job from
fresh checkpoints (with that run's hyper-parameters) instead of adopting the old one. A job this run leaves
unfinished — the step was interrupted (SIGTERM when the run is cancelled), timed out, or the run failed — is
deleted (``delete_unfinished_jobs``; the pipeline's exit handler calls it too), so no GPU job outlives its
run; a finished job stays for its logs until ``ttlSecondsAfterFinished``.

The step polls the job's status conditions: ``Succeeded`` (PyTorchJob) or ``Complete`` (TrainJob) is
success, ``Failed`` is failure, with the operator's reason and message in the error.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from cutalign.config import LauncherSettings, S3Settings, TrainerSettings
from cutalign.cut.trainer import Outputs
from cutalign.iteration.train import TrainedPolicy, iteration_outputs, read_metrics, run_name
from cutalign.k8s.pytorchjob import build_pytorchjob
from cutalign.k8s.trainjob import build_trainjob
from cutalign.k8s.validate import CrdCatalog
from cutalign.store import ArtifactStore

log = logging.getLogger(__name__)


class TrainingJobFailed(RuntimeError):
    """The cluster reported the training job as failed, or it did not finish in time."""


class CustomObjectsApi(Protocol):
    """The part of ``kubernetes.client.CustomObjectsApi`` the launcher uses."""

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any]
    ) -> Any: ...

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any: ...

    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, *, label_selector: str
    ) -> Any: ...

    def delete_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any: ...


@dataclass(frozen=True)
class JobKind:
    group: str
    version: str
    plural: str
    succeeded: str  # condition type that means the run finished successfully
    build: Callable[[str, Sequence[str], LauncherSettings, S3Settings, TrainerSettings], dict[str, Any]]


JOB_KINDS = {
    "pytorchjob": JobKind("kubeflow.org", "v1", "pytorchjobs", "Succeeded", build_pytorchjob),
    "trainjob": JobKind("trainer.kubeflow.org", "v1alpha1", "trainjobs", "Complete", build_trainjob),
}


ATTEMPT_LABEL = "cutalign.io/attempt"  # the KFP run id of the run that created the job
ITERATION_LABEL = "cutalign.io/iteration"


def job_name(iteration: int, run: str, attempt: str = "") -> str:
    """``cut-it-0003-1f0c2a9b``: a DNS-1035 label, the same for every retry of one pipeline run's step."""
    suffix = f"-it-{iteration:04d}" + (f"-{_label_safe(attempt)[:8]}" if attempt else "")
    return run.replace("_", "-")[: 63 - len(suffix)].rstrip("-") + suffix


def _label_safe(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in value.lower()).strip("-_.")[:63]


def trainer_run_args(manifest_uri: str, policy_uri: str, outputs: Outputs) -> list[str]:
    """Arguments of the trainer entry point (``services/trainer/main.py``) for a run on the layout."""
    return [
        "--data",
        manifest_uri,
        "--model",
        policy_uri,
        "--out",
        outputs.model,
        "--model-out",
        outputs.model,
        "--metrics-out",
        outputs.metrics,
        "--checkpoints",
        outputs.checkpoints,
    ]


def job_verdict(job: dict[str, Any], kind: JobKind) -> tuple[bool, str] | None:
    """(succeeded, detail) once a terminal condition is True, else None (still running)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        detail = f"{condition.get('reason', '')}: {condition.get('message', '')}".strip(": ")
        if condition.get("type") == kind.succeeded:
            return True, detail
        if condition.get("type") == "Failed":
            return False, detail
    return None


def delete_unfinished_jobs(api: CustomObjectsApi, namespace: str, attempt: str) -> list[str]:
    """Delete every training job of ``attempt`` (a KFP run id) that has not finished; returns their names.

    Jobs that succeeded or failed are kept (their pods' logs explain the run); a job still pending or running
    is what would hold GPUs after its run ended.
    """
    deleted = []
    selector = f"{ATTEMPT_LABEL}={_label_safe(attempt)}"
    for kind in JOB_KINDS.values():
        try:
            jobs = api.list_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, label_selector=selector
            )
        except ApiException as e:
            if e.status == 404:  # this job kind's CRD is not installed: nothing of it to delete
                continue
            raise
        for job in jobs.get("items") or []:
            name = job["metadata"]["name"]
            if job_verdict(job, kind) is None:
                api.delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
                log.warning("deleted unfinished training job %s/%s of run %s", namespace, name, attempt)
                deleted.append(name)
    return deleted


def submit_job(api: CustomObjectsApi, job: dict[str, Any], kind: JobKind, catalog: CrdCatalog) -> None:
    """Validate, then create the job; an existing job of the same name (a retried step) is adopted."""
    catalog.validate(job)
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, job)
        log.info("created %s %s/%s", job["kind"], namespace, name)
    except ApiException as e:
        if e.status != 409:
            raise
        log.info("%s %s/%s already exists (retried step): waiting for it", job["kind"], namespace, name)


def wait_for_job(
    api: CustomObjectsApi,
    kind: JobKind,
    namespace: str,
    name: str,
    *,
    poll_interval_s: float,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Poll until the job succeeds (returns the condition detail) or fails / times out (raises)."""
    deadline = clock() + timeout_s
    while True:
        job = api.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
        verdict = job_verdict(job, kind)
        if verdict is not None:
            succeeded, detail = verdict
            if not succeeded:
                raise TrainingJobFailed(
                    f"training job {namespace}/{name} failed ({detail}); read its pods' logs with "
                    f"`kubectl -n {namespace} logs -l training.kubeflow.org/job-name={name}`"
                )
            return detail
        if clock() >= deadline:
            raise TrainingJobFailed(
                f"training job {namespace}/{name} did not finish within {timeout_s:.0f}s (it is deleted): "
                "raise iteration.job_timeout_s"
            )
        sleep(poll_interval_s)


def train_on_cluster(
    api: CustomObjectsApi,
    settings: TrainerSettings,
    manifest_uri: str,
    policy_uri: str,
    iteration: int,
    *,
    store: ArtifactStore,
    launcher: LauncherSettings,
    poll_interval_s: float = 15.0,
    timeout_s: float = 7 * 86400.0,
    catalog: CrdCatalog | None = None,
    sleep: Callable[[float], None] = time.sleep,
    attempt: str = "",
) -> TrainedPolicy:
    """Run the trainer as ``launcher.backend`` (PyTorchJob or TrainJob) and return the candidate policy.

    ``attempt`` (the KFP run id) scopes the job and its checkpoints to this run (see the module docstring).
    """
    kind = JOB_KINDS[launcher.backend]
    run = run_name(settings)
    outputs = iteration_outputs(store, iteration, run, attempt)
    name = job_name(iteration, run, attempt)
    args = trainer_run_args(manifest_uri, policy_uri, outputs)
    job = kind.build(
        name, args, launcher, store.settings.model_copy(update={"bucket": store.bucket}), settings
    )
    job["metadata"]["labels"].update({ITERATION_LABEL: str(iteration)})
    if attempt:
        job["metadata"]["labels"][ATTEMPT_LABEL] = _label_safe(attempt)
    submit_job(api, job, kind, catalog or CrdCatalog(launcher.crd_dir))
    try:
        detail = wait_for_job(
            api,
            kind,
            launcher.namespace,
            name,
            poll_interval_s=poll_interval_s,
            timeout_s=timeout_s,
            sleep=sleep,
        )
    except BaseException:  # interrupted, timed out or failed: never leave a running job behind
        job_now = api.get_namespaced_custom_object(
            kind.group, kind.version, launcher.namespace, kind.plural, name
        )
        if job_verdict(job_now, kind) is None:
            api.delete_namespaced_custom_object(
                kind.group, kind.version, launcher.namespace, kind.plural, name
            )
            log.warning("deleted unfinished training job %s/%s", launcher.namespace, name)
        raise
    log.info("training job %s/%s succeeded: %s", launcher.namespace, name, detail)
    steps = read_metrics(store, outputs.metrics)
    last = steps[-1] if steps else {}
    return TrainedPolicy(
        iteration,
        run,
        outputs.model,
        outputs.metrics,
        f"{outputs.checkpoints}/",
        int(last.get("step", 0)),
        {k: float(v) for k, v in last.items()},
    )


def kube_api() -> CustomObjectsApi:
    """A ``CustomObjectsApi`` as the pod's service account inside a cluster, else from ``$KUBECONFIG``."""
    from kubernetes import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    api: CustomObjectsApi = client.CustomObjectsApi()
    return api


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM (a cancelled KFP run stops its pods) raises SystemExit, so cleanup code runs."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
