"""The trainer container and pod settings shared by both job kinds (PyTorchJob and TrainJob).

Both kinds run the same process: ``torchrun ... /app/services/trainer/main.py <run args>`` (the trainer's
entry script, copied into the trainer image) with the trainer's settings as ``CUTALIGN_TRAINER_*`` env, the
store's location as ``CUTALIGN_S3_*`` env and the store's keys from a Kubernetes Secret
(``valueFrom.secretKeyRef``: a key never appears in a manifest). ``CUTALIGN_TRAINER_RESUME`` is always
``true`` in a job: a restarted pod (restartPolicy OnFailure, or a rescheduled one) must continue from the last
checkpoint the trainer wrote under its output instead of starting over (or refusing to, which is what the
trainer does with resume off).

The pod runs as a non-root user on a read-only root filesystem; ``/tmp`` (scratch, Hugging Face cache) and
``/dev/shm`` (NCCL, data loader workers) are emptyDirs.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from kubernetes import client as k8s
from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings

from cutalign.config import LauncherSettings, S3Settings, TrainerSettings

TRAINER_SCRIPT = (
    "/app/services/trainer/main.py"  # services/trainer/main.py, copied by the Dockerfile's trainer stage
)
MASTER_PORT = 23456  # the Training Operator's default rendezvous port (port name "pytorchjob-port")
RUN_AS_USER = 10001  # the `cutalign` user of every image (Dockerfile)
COMPONENT_LABELS = {"app.kubernetes.io/name": "cutalign", "app.kubernetes.io/component": "trainer"}

_api = k8s.ApiClient()


def to_dict(model: Any) -> Any:
    """A Kubernetes/Kubeflow client model as the camelCase dict the API takes (``None`` fields dropped)."""
    return _api.sanitize_for_serialization(model)


def settings_env(settings: BaseSettings) -> list[k8s.V1EnvVar]:
    """Every non-secret, non-null field of a settings section as its ``CUTALIGN_<SECTION>_<FIELD>`` env var.

    Values are rendered the way pydantic-settings parses them back: booleans lower-case, lists/dicts JSON.
    """
    prefix = str(settings.model_config.get("env_prefix", ""))
    env = []
    for field in type(settings).model_fields:
        value = getattr(settings, field)
        if value is None or isinstance(value, SecretStr):
            continue
        env.append(k8s.V1EnvVar(name=f"{prefix}{field}".upper(), value=_env_value(value)))
    return env


def secret_env(name: str, secret: str, key: str) -> k8s.V1EnvVar:
    """An env var read from a Secret key; the pod fails to start if the Secret or key is missing."""
    return k8s.V1EnvVar(
        name=name, value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key))
    )


def trainer_env(launcher: LauncherSettings, s3: S3Settings, trainer: TrainerSettings) -> list[k8s.V1EnvVar]:
    """Env of the trainer container: trainer (resuming) and store settings, store keys from a Secret."""
    return [
        *settings_env(trainer.model_copy(update={"resume": True})),
        *settings_env(s3),
        secret_env("CUTALIGN_S3_ACCESS_KEY", launcher.s3_secret, launcher.s3_access_key_key),
        secret_env("CUTALIGN_S3_SECRET_KEY", launcher.s3_secret, launcher.s3_secret_key_key),
        k8s.V1EnvVar(name="HF_HOME", value="/tmp/hf"),
    ]


def trainer_command(launcher: LauncherSettings) -> list[str]:
    """torchrun over the trainer script; node count, rank and master address come from PET_* env."""
    return [
        "torchrun",
        f"--nproc-per-node={launcher.procs_per_node}",
        f"--max-restarts={launcher.max_restarts}",
        TRAINER_SCRIPT,
    ]


def trainer_resources(launcher: LauncherSettings) -> k8s.V1ResourceRequirements:
    """CPU/memory requests, a memory limit (OOM kills are clearer than node pressure) and whole GPUs."""
    requests: dict[str, str] = {"cpu": launcher.cpu, "memory": launcher.memory}
    limits: dict[str, str] = {"memory": launcher.memory}
    if launcher.gpus_per_node:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(launcher.gpus_per_node)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def trainer_volumes(launcher: LauncherSettings, s3: S3Settings) -> list[k8s.V1Volume]:
    volumes = [
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()),
        k8s.V1Volume(
            name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=launcher.shm_size)
        ),
    ]
    if s3.ca_bundle and launcher.s3_ca_secret:
        volumes.append(
            k8s.V1Volume(name="s3-ca", secret=k8s.V1SecretVolumeSource(secret_name=launcher.s3_ca_secret))
        )
    elif s3.ca_bundle and launcher.s3_ca_config_map:
        volumes.append(
            k8s.V1Volume(name="s3-ca", config_map=k8s.V1ConfigMapVolumeSource(name=launcher.s3_ca_config_map))
        )
    return volumes


def trainer_volume_mounts(launcher: LauncherSettings, s3: S3Settings) -> list[k8s.V1VolumeMount]:
    """/tmp, /dev/shm, and the S3 CA bundle in the directory ``s3.ca_bundle`` names (a private CA)."""
    mounts = [
        k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
        k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
    ]
    if s3.ca_bundle and (launcher.s3_ca_secret or launcher.s3_ca_config_map):
        mounts.append(
            k8s.V1VolumeMount(
                name="s3-ca", mount_path=str(PurePosixPath(s3.ca_bundle).parent), read_only=True
            )
        )
    return mounts


def pod_security_context() -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=RUN_AS_USER,
        run_as_group=RUN_AS_USER,
        fs_group=RUN_AS_USER,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
    )


def tolerations(launcher: LauncherSettings) -> list[k8s.V1Toleration]:
    return [
        k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect)
        for t in launcher.tolerations
    ]


def pod_labels(launcher: LauncherSettings) -> dict[str, str]:
    return {**COMPONENT_LABELS, **launcher.pod_labels}


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))  # as Helm's toJson writes it
    return str(value)
