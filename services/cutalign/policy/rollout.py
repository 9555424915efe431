"""Rolling a promoted release out through the Kubernetes API: what makes vLLM, TGI and KServe serve it.

* **KServe** (``kserve`` mode): the InferenceService's predictor container gets the release as its storage
  URI (``STORAGE_URI``, how KServe gives a custom predictor container its model: the storage initializer
  downloads it into ``/mnt/models`` before the server starts), so ``kubectl get isvc -o yaml`` names the
  served release and KServe rolls a new revision out, readiness-gated. The patch carries the object's
  ``resourceVersion``: a concurrent change is a 409 and the read-modify-patch is retried;
* **Deployment** (``vllm`` and ``tgi`` modes, full releases): the pod template's annotation
  ``cutalign.io/policy-release`` is set to the release id — the ``kubectl rollout restart`` mechanism: a
  rolling update whose new pods' model sync fetches the promoted release, while old pods serve until new
  ones are ready. A
  ``helm upgrade`` leaves the annotation alone (the chart never renders it).

Both wait until the rollout is complete, by the rules ``kubectl rollout status`` applies (Deployment) or the
InferenceService's ``Ready`` condition for the patched generation, so a promotion returns only once every
replica serves the release. ``RolloutFailed`` says why it did not (timeout, progress deadline, failed load).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, AppsV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_fixed,
    wait_random_exponential,
)

log = logging.getLogger(__name__)

RELEASE_ANNOTATION = "cutalign.io/policy-release"
KSERVE = ("serving.kserve.io", "v1beta1", "inferenceservices")
PREDICTOR_CONTAINER = "kserve-container"
STORAGE_URI_ENV = "STORAGE_URI"
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class RolloutFailed(RuntimeError):
    """The resource did not finish serving the release."""


def in_cluster_client() -> ApiClient:
    """An ``ApiClient`` authenticated as this pod's service account."""
    from kubernetes import client, config

    config.load_incluster_config()
    return client.ApiClient()


def this_namespace() -> str:
    """The namespace this pod runs in (its service account's)."""
    try:
        return _NAMESPACE_FILE.read_text().strip()
    except OSError as e:
        raise RolloutFailed(
            "not running in a pod: set CUTALIGN_ITERATION_POLICY_NAMESPACE to the policy server's namespace"
        ) from e


def _conflict(error: BaseException) -> bool:
    return isinstance(error, ApiException) and error.status == 409


def set_storage_uri(
    api: ApiClient, namespace: str, name: str, storage_uri: str, *, timeout_s: float, poll_s: float = 5.0
) -> dict[str, Any]:
    """Point the InferenceService at ``storage_uri`` and wait until KServe serves that generation."""
    custom = CustomObjectsApi(api)
    for attempt in Retrying(
        retry=retry_if_exception(_conflict), stop=stop_after_attempt(5), wait=wait_random_exponential(max=2)
    ):
        with attempt:
            isvc = custom.get_namespaced_custom_object(*KSERVE[:2], namespace, KSERVE[2], name)
            containers = isvc["spec"]["predictor"].get("containers") or []
            predictor = next((c for c in containers if c.get("name") == PREDICTOR_CONTAINER), None)
            if predictor is None:
                raise RolloutFailed(f"InferenceService {namespace}/{name} has no {PREDICTOR_CONTAINER!r}")
            env = [e for e in predictor.get("env") or [] if e.get("name") != STORAGE_URI_ENV]
            predictor["env"] = [*env, {"name": STORAGE_URI_ENV, "value": storage_uri}]
            patch = {
                "metadata": {"resourceVersion": isvc["metadata"]["resourceVersion"]},
                "spec": {"predictor": {"containers": containers}},  # a merge patch replaces the list whole
            }
            patched = custom.patch_namespaced_custom_object(*KSERVE[:2], namespace, KSERVE[2], name, patch)
    generation = int(patched["metadata"].get("generation") or 0)
    log.info("InferenceService %s/%s -> %s (generation %d)", namespace, name, storage_uri, generation)

    def ready() -> bool:
        obj = custom.get_namespaced_custom_object(*KSERVE[:2], namespace, KSERVE[2], name)
        status = obj.get("status") or {}
        if int(status.get("observedGeneration") or 0) < generation:
            return False
        failure = (status.get("modelStatus") or {}).get("lastFailureInfo") or {}
        if failure.get("reason") and (status.get("modelStatus") or {}).get("transitionStatus") in (
            "BlockedByFailedLoad",
            "InvalidSpec",
        ):
            raise RolloutFailed(f"KServe could not serve {storage_uri}: {failure}")
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        return (conditions.get("Ready") or {}).get("status") == "True"

    _wait(ready, f"InferenceService {namespace}/{name} serving {storage_uri}", timeout_s, poll_s)
    return patched


def roll_deployment(
    api: ApiClient, namespace: str, name: str, release: str, *, timeout_s: float, poll_s: float = 5.0
) -> None:
    """Start a rolling update of the Deployment onto ``release`` and wait until it completes."""
    apps = AppsV1Api(api)
    patch = {"spec": {"template": {"metadata": {"annotations": {RELEASE_ANNOTATION: release}}}}}
    generation = int(apps.patch_namespaced_deployment(name, namespace, patch).metadata.generation or 0)
    log.info("Deployment %s/%s rolling out %s (generation %d)", namespace, name, release, generation)

    def complete() -> bool:
        deployment = apps.read_namespaced_deployment(name, namespace)
        status = deployment.status
        if status is None or int(status.observed_generation or 0) < generation:
            return False
        for condition in status.conditions or []:
            if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
                raise RolloutFailed(f"Deployment {namespace}/{name}: {condition.message}")
        wanted = deployment.spec.replicas if deployment.spec.replicas is not None else 1
        updated, available = status.updated_replicas or 0, status.available_replicas or 0
        return updated >= wanted and (status.replicas or 0) <= updated and available >= updated

    _wait(complete, f"Deployment {namespace}/{name} rolling out {release}", timeout_s, poll_s)


def _wait(done: Callable[[], bool], what: str, timeout_s: float, poll_s: float) -> None:
    try:
        Retrying(
            retry=retry_if_result(lambda finished: not finished),
            stop=stop_after_delay(timeout_s),
            wait=wait_fixed(poll_s),
        )(done)
    except RetryError as e:
        raise RolloutFailed(f"{what}: not complete after {timeout_s:.0f}s") from e
    log.info("%s: complete", what)
