"""Promotion through every serving mode, checked by the generator's version guard: after a promotion the
guard accepts the new release and refuses the old one, and says exactly what the server reported.

* ``embedded``: the real policy server (a subprocess), hot-reloaded through its admin route;
* ``kserve``: the chart's rendered InferenceService in a **stand-in Kubernetes API** (``FakeKubernetesAPI``);
  promotion patches its storage URI; the test plays KServe (storage initializer + a real policy server pod
  on the downloaded release, behind a **stand-in Service**) and marks the new generation Ready;
* ``tgi`` and ``vllm`` (full releases): the chart's rendered Deployment in the stand-in Kubernetes API;
  promotion rolls it; the test plays the Deployment controller: a new "pod" runs the real model sync
  (``cutalign.policy.sync``) against the real S3 store, then a **TGI stand-in** / **vLLM stand-in** on
  what it synced, and the stand-in Service switches to it;
* ``vllm`` with LoRA: a **vLLM stand-in** with runtime LoRA updating; promotion releases the adapter and the
  real model-sync sidecar code loads it with ``/v1/load_lora_adapter`` (no restart), unloading old ones.

The stand-ins are in ``serving_standins.py``; what each imitates, and from which source, is written there.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cutalign.config import IterationSettings, ModelSyncSettings, PolicySettings
from cutalign.generator.guard import PolicyVersionMismatch, VersionGuard
from cutalign.iteration.promote import publish_release
from cutalign.policy.client import PolicyClient
from cutalign.policy.launcher import PolicyServerProcess, start_policy_server
from cutalign.policy.promotion import build_release, current_release, promote
from cutalign.policy.rollout import RELEASE_ANNOTATION, STORAGE_URI_ENV
from cutalign.policy.sync import SERVED_MARKER, SyncError, VLLMAdapters, follow, reconcile, sync_base
from cutalign.policy.version import dir_sha256, policy_sha256, release_id
from cutalign.store import ArtifactStore
from cutalign.v1 import training_pb2
from policy_support import admin_load, tiny_adapter, tiny_policy
from serving_standins import FakeKubernetesAPI, ServiceStandIn, TGIStandIn, VLLMStandIn

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
HELM = ROOT / ".tools" / "helm" / "helm" / "helm"
NAMESPACE = "serving-test"
PROMPT = "Q: name a colour\nA: "


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving")
    base = tiny_policy(root / "base", seed=0)
    return {
        "base": base,
        "merged": tiny_policy(root / "merged", seed=1),
        "adapter1": tiny_adapter(root / "adapter1", base, seed=1),
        "adapter2": tiny_adapter(root / "adapter2", base, seed=2),
        "adapter3": tiny_adapter(root / "adapter3", base, seed=3),
    }


@pytest.fixture
def uploaded(store: ArtifactStore, checkpoints: dict[str, Path]) -> dict[str, str]:
    """The base model and iteration 1's trainer outputs (merged model, unmerged adapter) in S3."""
    store.upload_dir("models/base/", checkpoints["base"])
    store.upload_dir("iterations/0001/model/", checkpoints["merged"])
    store.upload_dir("iterations/0001/adapter/", checkpoints["adapter1"])
    return {
        "base": store.uri("models/base/"),
        "model": store.uri("iterations/0001/model"),
        "adapter": store.uri("iterations/0001/adapter"),
    }


def guard_on(url: str, mode: str, store: ArtifactStore | None, expected: str | None = None) -> VersionGuard:
    backend = "tgi" if mode == "tgi" else "openai"  # the chart's choice per mode
    settings = PolicySettings(url=url, mode=mode, backend=backend, max_retries=0, max_new_tokens=4)  # type: ignore[arg-type]
    return VersionGuard(PolicyClient(settings), expected, store)


def refusal_of(guard: VersionGuard) -> list[str]:
    """What the guard says while a rollout is under way (promoted, but the old pod still answers)."""
    try:
        guard.check()
    except PolicyVersionMismatch as e:
        return [str(e)]
    return []


def publish(
    store: ArtifactStore,
    mode: str,
    *,
    model_uri: str,
    trained_from: str,
    iteration: int = 1,
    kube: FakeKubernetesAPI | None = None,
    **settings: Any,
) -> training_pb2.PolicyRelease:
    return publish_release(
        store,
        iteration=iteration,
        model_uri=model_uri,
        trained_from=trained_from,
        eval_metrics={"eval/accuracy": 0.5},
        manifest_key=f"iterations/{iteration:04d}/manifest.json",
        settings=IterationSettings(
            model_id="tiny",
            policy_resource="rel-cutalign-policy" if kube else None,
            policy_namespace=NAMESPACE,
            rollout_timeout_s=120,
            **settings,
        ),
        policy=PolicySettings(mode=mode, lora_adapters=True),  # type: ignore[arg-type]
        sync=ModelSyncSettings(base_model_uri=store.uri("models/base/")),
        kube=kube.client() if kube else None,
        poll_s=0.1,
    )


def rendered(kind: str, *values: str) -> dict[str, Any]:
    """The chart's policy object of ``kind``, rendered by the real Helm with ``values`` (``--set``)."""
    if not HELM.exists():
        pytest.skip(f"{HELM} is missing: run `make helm-tool` first")
    args = [str(HELM), "template", "rel", str(ROOT / "charts" / "cutalign"), "--namespace", NAMESPACE]
    defaults = (
        "s3.endpoint=minio:9000",
        "modelSync.baseModelUri=s3://b/models/base/",
        "policyServer.policyUri=s3://b/models/base/",
        "pipeline.upload.enabled=false",
        "judge.llm.url=http://judge-llm:8000",
    )
    for value in (*defaults, *values):
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    (obj,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == "rel-cutalign-policy"]
    return obj


# -- embedded: the real server, hot reload -----------------------------------------------------------------


def test_embedded_promotion_hot_reloads_the_server_and_the_guard_follows_it(
    store: ArtifactStore, uploaded: dict[str, str], env_for: dict[str, str], checkpoints: dict[str, Path]
) -> None:
    store.upload_dir("iterations/0000/model/", checkpoints["base"])  # the base, under the loadable roots
    with start_policy_server(
        uploaded["base"], env=env_for, torch_threads=1, policy_model_id="base"
    ) as server:
        guard = guard_on(server.url, "embedded", store)
        assert guard.check().checkpoint_sha256 == dir_sha256(checkpoints["base"]), "pins the base first"

        release = publish(
            store,
            "embedded",
            model_uri=uploaded["model"],
            trained_from=uploaded["base"],
            policy_admin_url=server.url,
            policy_admin_token=server.admin_token,
        )
        assert release.version.checkpoint_sha256 == dir_sha256(checkpoints["merged"])
        assert guard.check().checkpoint_sha256 == release.version.checkpoint_sha256

        # the server goes back to the old policy (by hand): the guard refuses it, naming both
        old = {"uri": store.uri("iterations/0000/model"), "model_id": "base"}
        assert admin_load(server, old)[0] == 200
        with pytest.raises(PolicyVersionMismatch) as refused:
            guard.check()
        assert release.version.checkpoint_sha256 in str(refused.value)
        assert dir_sha256(checkpoints["base"]) in str(refused.value), "says what it saw"


# -- KServe: the storage URI of the InferenceService -------------------------------------------------------


class KServeController:
    """Plays KServe for one InferenceService: on a new generation, the storage initializer downloads the
    STORAGE_URI into a fresh directory, a real policy server starts on it, the Service switches to it, the
    old pod stops, and the generation is marked Ready."""

    def __init__(
        self, kube: FakeKubernetesAPI, store: ArtifactStore, env: dict[str, str], work: Path
    ) -> None:
        self.kube, self.store, self.env, self.work = kube, store, env, work
        self.pods: list[PolicyServerProcess] = []
        self.service: ServiceStandIn | None = None
        self.during_rollout: Callable[[], None] = lambda: None
        self.done = threading.Event()

    def start_pod(self, isvc: dict[str, Any]) -> PolicyServerProcess:
        (container,) = isvc["spec"]["predictor"]["containers"]
        uri = next(e["value"] for e in container["env"] if e["name"] == STORAGE_URI_ENV)
        mnt = self.work / f"mnt-models-{len(self.pods)}"
        bucket_store = ArtifactStore(self.store.settings, bucket=uri.removeprefix("s3://").split("/")[0])
        bucket_store.download_dir(uri.removeprefix("s3://").split("/", 1)[1].rstrip("/") + "/", mnt)
        pod = start_policy_server(mnt, env=self.env, torch_threads=1)
        self.pods.append(pod)
        return pod

    def on_spec_change(self, isvc: dict[str, Any]) -> None:
        self.during_rollout()
        pod = self.start_pod(isvc)
        assert self.service is not None
        self.service.retarget(pod.url)
        self.pods.pop(0).stop()
        meta = isvc["metadata"]
        status = {
            "observedGeneration": meta["generation"],
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        self.kube.set_status("InferenceService", meta["namespace"], meta["name"], status)
        self.done.set()

    def close(self) -> None:
        for pod in self.pods:
            pod.stop()
        if self.service is not None:
            self.service.close()


@pytest.fixture
def kube() -> Iterator[FakeKubernetesAPI]:
    with FakeKubernetesAPI() as api:
        yield api


def test_kserve_promotion_points_the_inference_service_at_the_release(
    store: ArtifactStore,
    uploaded: dict[str, str],
    env_for: dict[str, str],
    kube: FakeKubernetesAPI,
    tmp_path: Path,
    checkpoints: dict[str, Path],
) -> None:
    values = ("policy.mode=kserve", "policy.gpus=0", "policyServer.device=cpu")
    isvc = rendered("InferenceService", *values, f"policyServer.policyUri={uploaded['base']}")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    kube.add(isvc)
    controller = KServeController(kube, store, env_for, tmp_path)
    try:
        first = controller.start_pod(kube.get("InferenceService", NAMESPACE, "rel-cutalign-policy"))
        controller.service = ServiceStandIn(first.url)
        guard = guard_on(controller.service.url, "kserve", store)
        assert guard.check().checkpoint_sha256 == dir_sha256(checkpoints["base"])

        refusals: list[str] = []
        controller.during_rollout = lambda: refusals.extend(refusal_of(guard))
        kube.on_spec_change = controller.on_spec_change
        release = publish(
            store, "kserve", model_uri=uploaded["model"], trained_from=uploaded["base"], kube=kube
        )

        assert controller.done.is_set(), "promotion returned only once the new generation was Ready"
        (refused,) = refusals
        assert release.version.checkpoint_sha256 in refused and dir_sha256(checkpoints["base"]) in refused
        served = kube.get("InferenceService", NAMESPACE, "rel-cutalign-policy")
        (container,) = served["spec"]["predictor"]["containers"]
        assert {"name": STORAGE_URI_ENV, "value": uploaded["model"]} in container["env"], (
            "visible in the isvc"
        )
        content_type, patch = kube.patches[-1]
        assert content_type == "application/merge-patch+json" and patch["metadata"]["resourceVersion"]
        assert (
            guard.check().checkpoint_sha256
            == release.version.checkpoint_sha256
            == dir_sha256(checkpoints["merged"])
        )
    finally:
        controller.close()


def test_kserve_promotion_retries_a_concurrent_change_of_the_inference_service(
    store: ArtifactStore, uploaded: dict[str, str], kube: FakeKubernetesAPI
) -> None:
    """A 409 on the resourceVersion precondition (another writer changed the isvc): re-read, patch again."""
    kube.add(rendered("InferenceService", "policy.mode=kserve", "policy.gpus=0", "policyServer.device=cpu"))
    first_patch = True

    def controller(isvc: dict[str, Any]) -> None:
        meta = isvc["metadata"]
        status = {
            "observedGeneration": meta["generation"],
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        kube.set_status("InferenceService", NAMESPACE, meta["name"], status)

    original = kube.handle

    def racing(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        nonlocal first_patch
        if method == "PATCH" and first_patch:  # another writer lands between our GET and our PATCH
            first_patch = False
            kube.set_status("InferenceService", NAMESPACE, "rel-cutalign-policy", {"note": "other writer"})
        return original(method, path, headers, body)

    kube.handle = racing
    kube.on_spec_change = controller
    publish(store, "kserve", model_uri=uploaded["model"], trained_from=uploaded["base"], kube=kube)
    versions = [p["metadata"]["resourceVersion"] for _, p in kube.patches]
    assert len(versions) == 2 and versions[0] != versions[1], "the stale patch was refused, the fresh one won"


# -- TGI and vLLM with full releases: a rolling update of the Deployment -----------------------------------


class DeploymentController:
    """Plays the Deployment controller for the policy: on a new pod template, a new pod runs the real model
    sync init container into its own models volume, the server stand-in starts on what it synced, the
    Service switches, the old pod goes, and the status reports the rollout complete."""

    def __init__(self, kube: FakeKubernetesAPI, store: ArtifactStore, mode: str, work: Path) -> None:
        self.kube, self.store, self.mode, self.work = kube, store, mode, work
        self.pods: list[Any] = []
        self.service: ServiceStandIn | None = None
        self.during_rollout: Callable[[], None] = lambda: None
        self.synced: list[str] = []

    def start_pod(self) -> Any:
        models = self.work / f"pod-{len(self.pods)}" / "models"
        sync = ModelSyncSettings(base_model_uri=self.store.uri("models/base/"), models_dir=str(models))
        name = sync_base(sync, self.store)
        assert (models / SERVED_MARKER).read_text() == name
        self.synced.append(name)
        pod = TGIStandIn(str(models / name)) if self.mode == "tgi" else VLLMStandIn(models / name, name)
        self.pods.append(pod)
        return pod

    def on_spec_change(self, deployment: dict[str, Any]) -> None:
        self.during_rollout()
        pod = self.start_pod()
        assert self.service is not None
        self.service.retarget(pod.url)
        self.pods.pop(0).close()
        meta, replicas = deployment["metadata"], deployment["spec"]["replicas"]
        counts = ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
        status = {"observedGeneration": meta["generation"], **dict.fromkeys(counts, replicas)}
        self.kube.set_status("Deployment", meta["namespace"], meta["name"], status)

    def close(self) -> None:
        for pod in self.pods:
            pod.close()
        if self.service is not None:
            self.service.close()


@pytest.mark.parametrize("mode", ["tgi", "vllm"])
def test_a_full_release_rolls_the_deployment_and_the_model_sync_serves_it(
    store: ArtifactStore,
    uploaded: dict[str, str],
    kube: FakeKubernetesAPI,
    tmp_path: Path,
    mode: str,
    checkpoints: dict[str, Path],
) -> None:
    deployment = rendered("Deployment", f"policy.mode={mode}")
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate", "no Recreate outage per promotion"
    kube.add(deployment)
    controller = DeploymentController(kube, store, mode, tmp_path)
    try:
        controller.service = ServiceStandIn(controller.start_pod().url)
        guard = guard_on(controller.service.url, mode, store)
        base = guard.check()
        assert base.checkpoint_sha256 == dir_sha256(checkpoints["base"]), "the synced base, by its release id"

        refusals: list[str] = []
        controller.during_rollout = lambda: refusals.extend(refusal_of(guard))
        kube.on_spec_change = controller.on_spec_change
        # trained from something the pods do not serve as a LoRA base: released merged, rolled out
        release = publish(
            store, mode, model_uri=uploaded["model"], trained_from="s3://elsewhere/x", kube=kube
        )
        assert not release.base_model_uri and release.version.uri == uploaded["model"]

        name = release_id(release.version)
        template = kube.get("Deployment", NAMESPACE, "rel-cutalign-policy")["spec"]["template"]
        assert template["metadata"]["annotations"][RELEASE_ANNOTATION] == name
        assert controller.synced == [release_id(base), name], "the new pod synced the promoted release"
        (refused,) = refusals
        observed = "model_sha=None" if mode == "tgi" else "/v1/models lists"
        assert name in refused or release.version.checkpoint_sha256 in refused
        assert observed in refused and release_id(base) in refused, "says exactly what the server reported"
        assert guard.check().checkpoint_sha256 == dir_sha256(checkpoints["merged"])
        with guard.client as client:
            assert client.complete(PROMPT).text == (f"[{name}]"), "generated by the promoted release"
    finally:
        controller.close()


def test_the_model_sync_refuses_a_release_whose_files_do_not_hash_to_it(
    store: ArtifactStore, uploaded: dict[str, str], checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    forged = build_release(checkpoints["base"], uri=uploaded["model"], iteration=1, model_id="tiny")
    promote(store, forged)  # says "base" but points at other files
    settings = ModelSyncSettings(base_model_uri=uploaded["base"], models_dir=str(tmp_path / "models"))
    with pytest.raises(SyncError, match="refusing a modified checkpoint"):
        sync_base(settings, store)
    assert not (tmp_path / "models" / SERVED_MARKER).exists(), "nothing for the server to start on"


# -- vLLM with LoRA: loaded at runtime, no restart ---------------------------------------------------------


def test_a_lora_release_is_loaded_into_the_running_vllm_without_a_restart(
    store: ArtifactStore,
    uploaded: dict[str, str],
    checkpoints: dict[str, Path],
    tmp_path: Path,
    kube: FakeKubernetesAPI,
) -> None:
    models = tmp_path / "models"
    sync = ModelSyncSettings(base_model_uri=uploaded["base"], models_dir=str(models), keep_adapters=2)
    base_name = sync_base(sync, store)
    with VLLMStandIn(tmp_path / "models" / base_name, base_name) as vllm:
        sidecar = VLLMAdapters(vllm.url, None)
        guard = guard_on(vllm.url, "vllm", store)
        assert guard.check().checkpoint_sha256 == dir_sha256(checkpoints["base"])

        release = publish(store, "vllm", model_uri=uploaded["model"], trained_from=uploaded["base"])
        name = release_id(release.version)
        assert release.version.uri == uploaded["adapter"] and release.base_model_uri == uploaded["base"]
        assert release.version.checkpoint_sha256 == policy_sha256(
            checkpoints["adapter1"], checkpoints["base"]
        )
        with pytest.raises(PolicyVersionMismatch, match=r"(?s)expected .*/v1/models lists"):
            guard.check()  # promoted, not loaded yet

        assert reconcile(sync, store, sidecar, set()) == name
        assert vllm.adapters[name].endswith(f"adapters/{name}") and guard.check().iteration == 1
        with guard.client as client:
            assert client.complete(PROMPT).text == f"[{name}]"
        # the release id is the model requested (the plain template: the completions route)
        assert vllm.requests[-1] == ("/v1/completions", name)

        # two more promotions, now with the sidecar running and the chart's Deployment (1 replica) in the
        # stand-in Kubernetes API: each promotion returns once the pod reports serving it; the oldest adapter
        # is unloaded (keep_adapters=2), and refused by a guard still expecting it
        kube.add(rendered("Deployment", "policy.mode=vllm", "policy.replicas=1"))
        stop = threading.Event()
        following = sync.model_copy(update={"interval_s": 0.1, "http_port": 0, "server_url": vllm.url})
        sidecar_loop = threading.Thread(target=follow, args=(following, store, stop), daemon=True)
        sidecar_loop.start()
        releases = [release]
        try:
            for i in (2, 3):
                store.upload_dir(f"iterations/{i:04d}/adapter/", checkpoints[f"adapter{i}"])
                store.upload_dir(f"iterations/{i:04d}/model/", checkpoints["merged"])
                model_uri = store.uri(f"iterations/{i:04d}/model")
                releases.append(
                    publish(
                        store,
                        "vllm",
                        model_uri=model_uri,
                        trained_from=uploaded["base"],
                        iteration=i,
                        kube=kube,
                    )
                )
                assert release_id(releases[-1].version) in vllm.adapters, "loaded before promotion returned"
        finally:
            stop.set()
            sidecar_loop.join(10)
        assert list(vllm.adapters) == [release_id(r.version) for r in releases[1:]]
        assert not (tmp_path / "models" / "adapters" / name).exists(), "its files are gone too"
        assert guard.check().checkpoint_sha256 == releases[-1].version.checkpoint_sha256
        stale = guard_on(vllm.url, "vllm", store, expected=release.version.checkpoint_sha256)
        with pytest.raises(PolicyVersionMismatch):
            stale.check()


def test_an_adapter_over_another_base_is_not_loaded_in_place(
    store: ArtifactStore, uploaded: dict[str, str], checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    sync = ModelSyncSettings(base_model_uri=uploaded["base"], models_dir=str(tmp_path / "models"))
    base_name = sync_base(sync, store)
    other = tiny_policy(tmp_path / "other-base", seed=9)
    store.upload_dir("models/other/", other)
    adapter = tiny_adapter(tmp_path / "other-adapter", other, seed=4)
    store.upload_dir("iterations/0001/adapter/", adapter)
    release = build_release(
        adapter,
        uri=uploaded["adapter"],
        iteration=1,
        model_id="tiny",
        base_dir=other,
        base_model_uri=store.uri("models/other/"),
    )
    promote(store, release)
    with VLLMStandIn(tmp_path / "models" / base_name, base_name) as vllm:
        refused: set[str] = set()
        assert reconcile(sync, store, VLLMAdapters(vllm.url, None), refused) is None
        assert vllm.adapters == {} and refused == {release_id(release.version)}
    assert current_release(store) is not None


def test_the_vllm_stand_in_answers_the_lora_routes_like_vllm(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    """The error codes and bodies the sidecar relies on (vllm serving_models.py), and the switch."""
    with VLLMStandIn(checkpoints["base"], "base") as vllm:
        sidecar = VLLMAdapters(vllm.url, None)
        for body, code, kind in (
            ({"lora_name": "a"}, 400, "InvalidUserInput"),
            ({"lora_name": "a", "lora_path": str(tmp_path / "none")}, 404, "NotFoundError"),
        ):
            with pytest.raises(SyncError, match=f"answered {code}.*{kind}"):
                sidecar._call("POST", "/v1/load_lora_adapter", body)
        sidecar.load("a", checkpoints["adapter1"])
        with pytest.raises(SyncError, match="answered 400.*has already been loaded"):
            sidecar.load("a", checkpoints["adapter1"])
        assert sidecar.loaded() == ["a"]
        sidecar.unload("a")
        with pytest.raises(SyncError, match="answered 404.*cannot be found"):
            sidecar.unload("a")
    no_runtime_updates = VLLMStandIn(checkpoints["base"], "base", runtime_lora_updating=False)
    with no_runtime_updates, pytest.raises(SyncError, match="answered 404"):  # no VLLM_ALLOW_RUNTIME_...
        VLLMAdapters(no_runtime_updates.url, None).load("a", checkpoints["adapter1"])
    with VLLMStandIn(checkpoints["base"], "base", api_key="k") as vllm:
        with pytest.raises(SyncError, match="answered 401"):
            VLLMAdapters(vllm.url, None).loaded()
        assert VLLMAdapters(vllm.url, "k").loaded() == []
