"""Rolling a promoted release out: what makes the embedded server, vLLM, TGI and KServe serve it.

``roll_out`` does what ``policy.mode`` needs:

* **embedded**: the server's admin route hot-reloads the release (``iteration.policy_admin_url`` and its
  token), else the servers following ``policy/current.json`` (``watch_current``) load it themselves;
* **KServe**: the InferenceService's predictor container gets the release as its storage URI
  (``STORAGE_URI``, how KServe gives a custom predictor container its model: the storage initializer
  downloads it into ``/mnt/models`` before the server starts), so ``kubectl get isvc -o yaml`` names the
  served release and KServe rolls a new revision out, readiness-gated. The patch carries the object's
  ``resourceVersion``: a concurrent change is a 409 and the read-modify-patch is retried;
* **vLLM / TGI Deployment** (full releases): the pod template's annotation ``cutalign.io/policy-release`` is
  set to the release id — the ``kubectl rollout restart`` mechanism: a rolling update whose new pods' model
  sync fetches the promoted release while old pods serve until new ones are ready (``helm upgrade`` leaves
  the annotation alone: the chart never renders it);
* **vLLM LoRA release**: each pod's model-sync sidecar loads it (``policy.sync``) and reports it in
  ``policy/served/<pod>.json``; the rollout is complete when as many pods as the Deployment's replicas do.

Rollouts wait until complete, by the rules ``kubectl rollout status`` applies (Deployment) or the
InferenceService's ``Ready`` condition for the patched generation, so a promotion returns only once every
replica serves the release. ``RolloutFailed`` says why it did not (timeout, progress deadline, failed load).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
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

from cutalign.config import IterationSettings, PolicySettings
from cutalign.policy.version import release_id
from cutalign.store import ArtifactStore, ObjectMissing
from cutalign.store.layout import SERVED_PREFIX
from cutalign.v1 import training_pb2

log = logging.getLogger(__name__)

RELEASE_ANNOTATION = "cutalign.io/policy-release"
KSERVE = ("serving.kserve.io", "v1beta1", "inferenceservices")
PREDICTOR_CONTAINER = "kserve-container"
STORAGE_URI_ENV = "STORAGE_URI"
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class RolloutFailed(RuntimeError):
    """The resource did not finish serving the release."""


def kube_client() -> ApiClient:
    """An ``ApiClient`` as this pod's service account, or (outside a cluster) as the kubeconfig's user."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
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


def wait_for_pods_serving(
    store: ArtifactStore,
    api: ApiClient,
    namespace: str,
    name: str,
    release: str,
    *,
    since_ms: int,
    timeout_s: float,
    poll_s: float = 5.0,
) -> None:
    """Wait until as many pods as the Deployment has replicas report serving ``release`` (policy/served/)."""
    replicas = AppsV1Api(api).read_namespaced_deployment(name, namespace).spec.replicas
    wanted = 1 if replicas is None else int(replicas)

    def serving() -> bool:
        count = 0
        for key in store.list(SERVED_PREFIX):
            try:
                ack = json.loads(store.get_bytes(key))
            except (ObjectMissing, ValueError):
                continue  # a pod rewriting its report
            count += ack.get("release") == release and int(ack.get("at_ms", 0)) >= since_ms
        return count >= wanted

    _wait(serving, f"{wanted} pod(s) of {namespace}/{name} loading {release}", timeout_s, poll_s)


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


def roll_out(
    release: training_pb2.PolicyRelease,
    *,
    settings: IterationSettings,
    policy: PolicySettings,
    store: ArtifactStore,
    kube: ApiClient | None = None,
    poll_s: float = 5.0,
) -> None:
    """Make ``policy.mode``'s serving stack serve ``release``; returns once it does (or raises)."""
    if policy.mode == "embedded":
        if settings.policy_admin_url:
            token = settings.policy_admin_token.get_secret_value() if settings.policy_admin_token else None
            reload_policy_server(
                settings.policy_admin_url, release, token=token, timeout_s=settings.http_timeout_s
            )
        else:
            log.info("no policy admin URL: servers watching policy/current.json load the release")
        return
    lora = policy.mode == "vllm" and bool(release.base_model_uri)
    if lora and not settings.policy_resource:
        log.info("LoRA release %s: each vLLM pod's model sync loads it", release_id(release.version))
        return
    if not settings.policy_resource:
        raise ValueError(
            f"policy.mode {policy.mode} rolls releases out through the Kubernetes API: set "
            "CUTALIGN_ITERATION_POLICY_RESOURCE to the policy's Deployment or InferenceService name"
        )
    api = kube or kube_client()
    namespace = settings.policy_namespace or this_namespace()
    if lora:  # each pod's model sync loads it: wait until every replica says it serves it
        wait_for_pods_serving(
            store,
            api,
            namespace,
            settings.policy_resource,
            release_id(release.version),
            since_ms=int(time.time() * 1000),  # reports written from now on: pods that are gone don't count
            timeout_s=settings.rollout_timeout_s,
            poll_s=poll_s,
        )
    elif policy.mode == "kserve":
        set_storage_uri(
            api,
            namespace,
            settings.policy_resource,
            release.version.uri,
            timeout_s=settings.rollout_timeout_s,
            poll_s=poll_s,
        )
    else:
        roll_deployment(
            api,
            namespace,
            settings.policy_resource,
            release_id(release.version),
            timeout_s=settings.rollout_timeout_s,
            poll_s=poll_s,
        )


def reload_policy_server(
    admin_url: str, release: training_pb2.PolicyRelease, *, token: str | None, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Ask the embedded policy server to load ``release`` now (it refuses files that miss the sha256)."""
    if not token:
        raise ValueError(
            f"hot-reloading the policy server at {admin_url} needs its admin token: set "
            "CUTALIGN_ITERATION_POLICY_ADMIN_TOKEN (on a cluster, from the server's admin Secret)"
        )
    version = release.version
    body = {
        "uri": version.uri,
        "iteration": version.iteration,
        "expected_sha256": version.checkpoint_sha256,
        "model_id": version.model_id,
    }
    if release.base_model_uri:
        body["base_uri"] = release.base_model_uri
    url = f"{admin_url.rstrip('/')}/v1/policy/load"
    try:
        response = httpx2.post(
            url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
        )
    except httpx2.TransportError as e:
        raise RolloutFailed(f"POST {url} failed: {e}; is the server running and the URL right?") from e
    if response.status_code >= 400:
        raise RolloutFailed(f"POST {url} answered {response.status_code}: {response.text[:2000]}")
    log.info("policy server %s now serves %s", admin_url, version.checkpoint_sha256[:12])
    answer: dict[str, Any] = response.json()
    return answer
