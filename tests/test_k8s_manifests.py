"""Training jobs built in code, validated offline against the CRDs cutalign ships.

No Kubernetes API server can run here, so nothing is submitted: the PyTorchJob and TrainJob that
``cutalign.k8s`` builds are validated against the CRD schemas (closed: unknown fields are errors) and the
Training Operator's admission rules, the way an API server with the operator's webhook would judge them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cutalign.cli.main import app
from cutalign.config import LauncherSettings, S3Settings, Toleration, TrainerSettings
from cutalign.k8s.pytorchjob import build_pytorchjob
from cutalign.k8s.trainjob import build_trainjob
from cutalign.k8s.validate import CrdCatalog, ManifestInvalid, shipped_crd_dir
from cutalign.pipelines import release_check
from cutalign.pipelines.release_check import missing_version
from cutalign.pipelines.upload import check_pipeline_file, schedule, upload, version_name

RUN_ARGS = [
    "--data",
    "s3://cutalign/iterations/0003/manifest.json",
    "--model",
    "s3://cutalign/models/base/",
    "--out",
    "s3://cutalign/iterations/0003/",
]
ACCESS_KEY, SECRET_KEY = "AKIA-test-access-value", "test-secret-value-123"


@pytest.fixture(scope="module")
def catalog() -> CrdCatalog:
    return CrdCatalog()


@pytest.fixture
def gpu_launcher() -> LauncherSettings:
    return LauncherSettings(
        namespace="team-a",
        image="ghcr.io/cutalign/trainer:0.1.0",
        workers=2,
        gpus_per_node=4,
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        s3_secret="team-a-s3",
        backoff_limit=5,
        ttl_seconds_after_finished=3600,
    )


@pytest.fixture
def s3() -> S3Settings:
    return S3Settings(
        endpoint="minio.minio.svc:9000", access_key=ACCESS_KEY, secret_key=SECRET_KEY, bucket="cutalign"
    )


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_shipped_crds_are_the_vendored_versions(catalog: CrdCatalog) -> None:
    found = {(v.kind, v.api_version): v.origin for v in catalog.versions()}
    served = {
        ("PyTorchJob", "kubeflow.org/v1"),
        ("InferenceService", "serving.kserve.io/v1beta1"),
        ("TrainJob", "trainer.kubeflow.org/v1alpha1"),
        ("Tenant", "minio.min.io/v2"),
        ("PodMonitor", "monitoring.coreos.com/v1"),
        ("ServiceMonitor", "monitoring.coreos.com/v1"),
        ("PrometheusRule", "monitoring.coreos.com/v1"),
        *((kind, f"kafka.strimzi.io/{v}") for kind in ("KafkaTopic", "KafkaUser") for v in ("v1", "v1beta2")),
    }
    assert served <= set(found)
    assert found[("PyTorchJob", "kubeflow.org/v1")] == "controller-gen v0.16.5"
    assert found[("InferenceService", "serving.kserve.io/v1beta1")] == "controller-gen v0.19.0"
    assert found[("PodMonitor", "monitoring.coreos.com/v1")] == "controller-gen v0.21.0"
    for kind in ("TrainJob", "Tenant"):
        assert next(o for (k, _), o in found.items() if k == kind).startswith("hand-written"), kind
    # The vendored files are the upstream bytes recorded in crds/README.md.
    readme = (shipped_crd_dir() / "README.md").read_text()
    for path in shipped_crd_dir().glob("*.yaml"):
        if path.name.startswith(("trainer.", "minio.")):
            continue  # hand-written
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest in readme, (
            f"{path.name} differs from the vendored upstream file recorded in crds/README.md"
        )


def test_pytorchjob_built_in_code_is_valid_against_training_operator_crd(
    catalog: CrdCatalog, gpu_launcher: LauncherSettings, s3: S3Settings
) -> None:
    job = build_pytorchjob("cut-it-0003", RUN_ARGS, gpu_launcher, s3, TrainerSettings(learning_rate=1e-4))
    report = catalog.validate(job)
    assert report.validated_against.startswith("pytorchjobs.kubeflow.org v1 (kubeflow.org_pytorchjobs.yaml")
    assert "controller-gen v0.16.5" in report.validated_against

    spec = job["spec"]
    assert set(spec["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    assert spec["nprocPerNode"] == "4"
    assert spec["runPolicy"] == {
        "backoffLimit": 5,
        "ttlSecondsAfterFinished": 3600,
        "cleanPodPolicy": "Running",
    }
    for replica in spec["pytorchReplicaSpecs"].values():
        assert replica["restartPolicy"] == "OnFailure"
        pod = replica["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"
        assert container["command"] == [
            "torchrun",
            "--nproc-per-node=4",
            "--max-restarts=0",
            "/app/services/trainer/main.py",
        ]
        assert container["args"] == RUN_ARGS
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        env = _env(container)
        assert env["CUTALIGN_TRAINER_RESUME"] == "true"  # a restarted pod resumes from its last checkpoint
        assert env["CUTALIGN_TRAINER_LEARNING_RATE"] == "0.0001"
        assert env["CUTALIGN_S3_ENDPOINT"] == "minio.minio.svc:9000"
        assert env["CUTALIGN_S3_ACCESS_KEY"] == {"secretKeyRef": {"name": "team-a-s3", "key": "access-key"}}
        assert env["CUTALIGN_S3_SECRET_KEY"] == {"secretKeyRef": {"name": "team-a-s3", "key": "secret-key"}}
    text = yaml.safe_dump(job)
    assert ACCESS_KEY not in text and SECRET_KEY not in text


def test_trainer_resumes_even_when_its_settings_disable_resume(s3: S3Settings) -> None:
    job = build_pytorchjob("cut-it-0003", RUN_ARGS, LauncherSettings(), s3, TrainerSettings(resume=False))
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert _env(container)["CUTALIGN_TRAINER_RESUME"] == "true"


def test_cpu_job_has_one_process_and_no_gpu_request(catalog: CrdCatalog, s3: S3Settings) -> None:
    job = build_pytorchjob("cut-cpu", [], LauncherSettings(gpus_per_node=0), s3, TrainerSettings())
    catalog.validate(job)
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "--nproc-per-node=1" in container["command"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])


def test_trainjob_built_in_code_is_valid_against_hand_written_trainer_v2_schema(
    catalog: CrdCatalog, gpu_launcher: LauncherSettings, s3: S3Settings
) -> None:
    launcher = gpu_launcher.model_copy(update={"backend": "trainjob", "active_deadline_seconds": 7200})
    job = build_trainjob("cut-it-0003", RUN_ARGS, launcher, s3, TrainerSettings())
    report = catalog.validate(job)
    assert report.validated_against.startswith("trainjobs.trainer.kubeflow.org v1alpha1")
    assert "hand-written" in report.validated_against

    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 4)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in trainer["env"]}
    assert env["CUTALIGN_S3_SECRET_KEY"] == {"secretKeyRef": {"name": "team-a-s3", "key": "secret-key"}}
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = patch["template"]["spec"]["template"]["spec"]
    assert patch["name"] == "node" and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert SECRET_KEY not in yaml.safe_dump(job)


def test_misspelt_fields_are_rejected_not_pruned(
    catalog: CrdCatalog, gpu_launcher: LauncherSettings, s3: S3Settings
) -> None:
    """An API server drops unknown fields of structural schemas silently; the closed schema rejects them."""
    job = build_pytorchjob("cut-it-0003", RUN_ARGS, gpu_launcher, s3, TrainerSettings())
    job["spec"]["nprocsPerNode"] = "4"
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = (
        "Always"
    )
    with pytest.raises(ManifestInvalid) as caught:
        catalog.validate(job)
    message = str(caught.value)
    assert "'nprocsPerNode' was unexpected" in message
    assert "'imagePullPolcy' was unexpected" in message
    assert "pytorchjobs.kubeflow.org v1" in message


def test_training_operator_admission_rules(
    catalog: CrdCatalog, gpu_launcher: LauncherSettings, s3: S3Settings
) -> None:
    job = build_pytorchjob("Cut_It", RUN_ARGS, gpu_launcher, s3, TrainerSettings())
    replicas = job["spec"]["pytorchReplicaSpecs"]
    replicas["Master"]["replicas"] = 2
    replicas["Worker"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    job["spec"]["elasticPolicy"] = {"nProcPerNode": 4}
    with pytest.raises(ManifestInvalid) as caught:
        catalog.validate(job)
    errors = "\n".join(caught.value.errors)
    assert "metadata.name: 'Cut_It' must be a DNS-1035 label" in errors
    assert "Master.replicas: must be exactly 1 (got 2)" in errors
    assert "Worker.template.spec.containers: needs a container named 'pytorch'" in errors
    assert "spec.elasticPolicy.nProcPerNode: must not be used with spec.nprocPerNode" in errors


def test_trainjob_schema_bounds(catalog: CrdCatalog, s3: S3Settings) -> None:
    job = build_trainjob("cut-it-0003", [], LauncherSettings(backend="trainjob"), s3, TrainerSettings())
    job["spec"]["trainer"]["numNodes"] = 0
    job["spec"]["runtimeRef"]["kind"] = "Runtime"
    job["spec"]["podTemplateOverrides"] = []  # the pre-v2.2 field: not part of the v2.2 API
    with pytest.raises(ManifestInvalid) as caught:
        catalog.validate(job)
    errors = "\n".join(caught.value.errors)
    assert "spec.trainer.numNodes: 0 is less than the minimum of 1" in errors
    assert "spec.runtimeRef.kind" in errors
    assert "'podTemplateOverrides' was unexpected" in errors


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"partitions": 0, "replicas": 3}, "spec.partitions: 0 is less than the minimum of 1"),
        ({"partitions": 3, "replicas": 40000}, "spec.replicas: 40000 is greater than the maximum of 32767"),
        (
            {"partitions": 3, "replicas": 3, "config": "retention.ms=1"},
            "spec.config: 'retention.ms=1' is not of type",
        ),
        ({"partitions": 3, "replica": 3}, "'replica' was unexpected"),
    ],
)
def test_kafkatopic_schema(catalog: CrdCatalog, spec: dict[str, Any], error: str) -> None:
    topic = {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {"name": "t"},
        "spec": spec,
    }
    with pytest.raises(ManifestInvalid, match="kafkatopics.kafka.strimzi.io v1beta2") as caught:
        catalog.validate(topic)
    assert any(error in e for e in caught.value.errors), caught.value.errors
    topic["spec"] = {
        "partitions": 3,
        "replicas": 3,
        "config": {"retention.ms": "1"},
        "topicName": "cutalign.x",
    }
    assert catalog.validate(topic).kind == "KafkaTopic"


def test_crd_directory_comes_from_launcher_settings(tmp_path: Path, s3: S3Settings) -> None:
    shutil.copy(shipped_crd_dir() / "kubeflow.org_pytorchjobs.yaml", tmp_path)
    launcher = LauncherSettings(crd_dir=str(tmp_path))
    catalog = CrdCatalog(launcher.crd_dir)
    job = build_pytorchjob("cut-it-0003", RUN_ARGS, launcher, s3, TrainerSettings())
    assert f"({tmp_path.name}" not in catalog.validate(job).validated_against  # names the file, not the dir
    assert catalog.crd_dir == tmp_path
    with pytest.raises(ManifestInvalid, match=f"no CRD for it in {tmp_path}"):
        catalog.validate(
            {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {}}
        )
    with pytest.raises(FileNotFoundError, match="CUTALIGN_LAUNCHER_CRD_DIR"):
        CrdCatalog(tmp_path / "missing")


def test_launcher_rejects_more_processes_than_gpus() -> None:
    with pytest.raises(ValueError, match="nproc_per_node .* exceeds launcher.gpus_per_node"):
        LauncherSettings(gpus_per_node=2, nproc_per_node=4)


def test_cli_prints_a_validated_job_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUTALIGN_LAUNCHER_BACKEND", "trainjob")
    monkeypatch.setenv("CUTALIGN_LAUNCHER_GPUS_PER_NODE", "2")
    monkeypatch.setenv("CUTALIGN_LAUNCHER_TOLERATIONS", '[{"key": "nvidia.com/gpu", "operator": "Exists"}]')
    result = CliRunner().invoke(app, ["k8s", "job", "cut-it-0009", "--", *RUN_ARGS])
    assert result.exit_code == 0, result.output
    header, _, body = result.output.partition("\n")
    assert header.startswith("# validated against trainjobs.trainer.kubeflow.org v1alpha1")
    job = yaml.safe_load(body)
    assert job["kind"] == "TrainJob" and job["spec"]["trainer"]["args"] == RUN_ARGS


def test_cli_validate_fails_listing_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "dta": {}},
                {
                    "apiVersion": "kafka.strimzi.io/v1beta2",
                    "kind": "KafkaTopic",
                    "metadata": {"name": "t"},
                    "spec": {"partitions": 0},
                },
                {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
            ]
        )
    )
    result = CliRunner().invoke(app, ["k8s", "validate", str(bad)])
    assert result.exit_code == 1
    assert "3 problem(s)" in result.output
    assert "'dta' was unexpected" in result.output
    assert "spec.partitions: 0 is less than the minimum of 1" in result.output
    assert "Couldn't find schema for kind Widget" in result.output


def _compiled_pipeline(path: Path) -> Path:
    """A tiny pipeline compiled by the real KFP compiler: the uploader's input format."""
    from kfp import compiler, dsl

    # No annotations: `from __future__ import annotations` would make them strings, which KFP rejects.
    @dsl.component(base_image="python:3.11.11-slim-bookworm")
    def hello():  # type: ignore[no-untyped-def]
        print("hello")

    @dsl.pipeline(name="stand-in")
    def stand_in():  # type: ignore[no-untyped-def]
        hello()

    compiler.Compiler().compile(stand_in, str(path))
    return path


class FakeKfpClient:
    """Stands in for ``kfp.Client``: a KFP API server needs a Kubernetes cluster, which cannot run here."""

    def __init__(self) -> None:
        self.pipelines: dict[str, str] = {}
        self.versions: dict[str, list[str]] = {}
        self.recurring: dict[str, SimpleNamespace] = {}

    def get_pipeline_id(self, name: str) -> str | None:
        return self.pipelines.get(name)

    def upload_pipeline(
        self, pipeline_package_path: str, pipeline_name: str | None = None, description: str | None = None
    ) -> None:
        assert pipeline_name is not None
        self.pipelines[pipeline_name] = f"id-{pipeline_name}"
        self.versions[f"id-{pipeline_name}"] = [pipeline_name]

    def upload_pipeline_version(
        self, pipeline_package_path: str, pipeline_version_name: str, pipeline_id: str | None = None
    ) -> SimpleNamespace:
        assert pipeline_id is not None
        self.versions[pipeline_id].append(pipeline_version_name)
        return SimpleNamespace(pipeline_version_id=f"vid-{pipeline_version_name}")

    def list_pipeline_versions(
        self,
        pipeline_id: str,
        page_token: str = "",
        page_size: int = 10,
        sort_by: str = "",
        filter: str | None = None,
    ) -> SimpleNamespace:
        wanted = json.loads(filter or "{}")["predicates"][0]["string_value"]
        found = [
            SimpleNamespace(pipeline_version_id=f"vid-{v}") for v in self.versions[pipeline_id] if v == wanted
        ]
        return SimpleNamespace(pipeline_versions=found or None)

    def create_experiment(
        self, name: str, description: str | None = None, namespace: str | None = None
    ) -> Any:
        return SimpleNamespace(experiment_id=f"exp-{name}")

    def list_recurring_runs(self, *, experiment_id: str | None = None, filter: str | None = None) -> Any:
        wanted = json.loads(filter or "{}")["predicates"][0]["string_value"]
        return SimpleNamespace(
            recurring_runs=[r for r in self.recurring.values() if r.display_name == wanted] or None
        )

    def delete_recurring_run(self, recurring_run_id: str) -> None:
        del self.recurring[recurring_run_id]

    def create_recurring_run(self, experiment_id: str, job_name: str, **options: Any) -> None:
        run_id = f"rr-{len(self.recurring) + 1}-{options['version_id']}"
        self.recurring[run_id] = SimpleNamespace(
            recurring_run_id=run_id,
            display_name=job_name,
            pipeline_version_reference=SimpleNamespace(pipeline_version_id=options["version_id"]),
            options=options,
        )


def test_pipeline_upload_is_idempotent_with_fake_kfp_client(tmp_path: Path) -> None:
    path = _compiled_pipeline(tmp_path / "online_iteration.yaml")
    check_pipeline_file(path)
    client = FakeKfpClient()
    version = version_name(path)
    name = "cutalign-online-iteration"
    assert upload(client, path, name, "d").message == f"created pipeline {name!r} version {version!r}"
    again = upload(client, path, name, "d")
    assert again.message.endswith("nothing uploaded") and again.version_id == f"vid-{version}"
    # the release's version is findable by its name from the first install on (helm test looks it up)
    assert client.versions[f"id-{name}"] == [name, version]
    assert missing_version(client, name, version) is None
    assert "has no version 'sha256-0'" in str(missing_version(client, name, "sha256-0"))
    assert "KFP has no pipeline 'other'" in str(missing_version(client, "other", version))


def test_one_recurring_run_follows_the_newest_release_version(tmp_path: Path) -> None:
    """The online loop with no one in it: each upgrade that changes the pipeline re-points the schedule."""
    client = FakeKfpClient()
    first = upload(client, _compiled_pipeline(tmp_path / "a.yaml"), "p", "d")
    options = {"experiment": "cutalign", "name": "loop", "cron": "0 0 * * * *", "service_account": "runner"}
    assert "now runs the new version (replaced 0)" in schedule(client, first, **options)
    assert schedule(client, first, **options).endswith("already runs this version")
    (run,) = client.recurring.values()
    assert run.options | {"pipeline_id": "id-p"} == {
        "cron_expression": "0 0 * * * *",
        "max_concurrency": 1,  # one iteration at a time
        "no_catchup": True,
        "pipeline_id": "id-p",
        "version_id": first.version_id,
        "enable_caching": False,
        "service_account": "runner",
    }
    (tmp_path / "b.yaml").write_text((tmp_path / "a.yaml").read_text() + "\n# changed\n")
    second = upload(client, tmp_path / "b.yaml", "p", "d")
    assert "(replaced 1)" in schedule(client, second, **options)
    assert [r.pipeline_version_reference.pipeline_version_id for r in client.recurring.values()] == [
        second.version_id
    ]


def test_release_check_reports_every_service_that_is_not_ready(tmp_path: Path) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/readyz" else 503)
            self.end_headers()
            self.wfile.write(b"not yet")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert release_check.main(["--ready", f"{base}/readyz"]) == 0
        assert release_check.main(["--ready", f"{base}/readyz", "--ready", f"{base}/other"]) == 1
        assert "HTTP 503 not yet" in str(release_check.not_ready(f"{base}/other", 5))
    finally:
        server.shutdown()


def test_pipeline_upload_refuses_files_that_are_not_compiled_pipelines(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cutalign.pipelines.compile"):
        check_pipeline_file(tmp_path / "online_iteration.yaml")
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\n")
    with pytest.raises(ValueError, match="not a compiled KFP pipeline"):
        check_pipeline_file(other)
