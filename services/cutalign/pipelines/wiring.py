"""How the pipeline's tasks are deployed on one cluster: the pod settings a KFP task cannot read at run time.

A KFP task pod is created from the compiled pipeline before any of its code runs, so which Secrets and keys
become its environment, which CA bundles are mounted, its CPU/memory/GPU requests, node selectors,
tolerations and image pull secrets are fixed in the IR. ``PipelineWiring`` holds them, together with the
*defaults* of the run parameters (launcher, GPUs, builder and policy URLs, prompt pool, ...). The chart
renders one per release from its values (``<release>-pipeline-upload`` ConfigMap, ``wiring.json``) and its
upload Job compiles the release's own pipeline version from it, so a run created in the KFP UI with every
default does what the release is configured to do. ``PipelineWiring()`` is the chart's defaults for a
release named ``cutalign``: the committed ``compiled/online_iteration.yaml``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings

from cutalign import __version__, config
from cutalign.judges.llm import ENV_PREFIX as JUDGE_LLM_PREFIX

IMAGE = f"ghcr.io/cutalign/trainer:{__version__}"  # the chart's images.trainer; a test keeps the two equal

_MODEL = ConfigDict(extra="forbid", frozen=True)


class SecretEnv(BaseModel):
    """Keys of one Secret as environment variables of a task."""

    model_config = _MODEL

    secret: str = Field(description="Secret name (in the namespace the run's pods run in).")
    keys: dict[str, str] = Field(description="Secret key -> environment variable.")
    optional: bool = Field(False, description="Start the task even when the Secret is missing.")


class MountedBundle(BaseModel):
    """A CA bundle (Secret or ConfigMap) mounted into a task; the settings name the file under it."""

    model_config = _MODEL

    kind: Literal["secret", "configMap"]
    name: str
    mount_path: str


class TaskResources(BaseModel):
    """Requests, limits and placement of one kind of task pod."""

    model_config = _MODEL

    cpu: str | None = Field(None, description="CPU request.")
    cpu_limit: str | None = Field(None, description="CPU limit (None: none).")
    memory: str | None = Field(None, description="Memory request and limit.")
    gpus: int = Field(0, ge=0, description="Accelerators requested (limit) of type `accelerator`.")
    accelerator: str = Field("nvidia.com/gpu", description="Extended resource name of the accelerator.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[config.Toleration] = Field(default_factory=list)


def _s3_default() -> SecretEnv:
    return SecretEnv(
        secret="cutalign-s3",
        keys={"access-key": "CUTALIGN_S3_ACCESS_KEY", "secret-key": "CUTALIGN_S3_SECRET_KEY"},
    )


class PipelineWiring(BaseModel):
    """Everything about the task pods that is fixed when the pipeline is compiled (see the module doc)."""

    model_config = _MODEL

    image: str = Field(IMAGE, description="Image every task runs in (the project image).")
    image_pull_secrets: list[str] = Field(default_factory=list)
    config_map: str = Field("cutalign-pipeline-config", description="ConfigMap of the steps' CUTALIGN_* env.")
    s3: SecretEnv = Field(default_factory=_s3_default, description="S3 keys (every task but the cleanup).")
    kafka: SecretEnv | None = Field(None, description="Kafka SASL password (tasks that use the bus).")
    judge: SecretEnv | None = Field(None, description="LLM judge token (evaluation).")
    policy_admin: SecretEnv | None = Field(None, description="Policy server admin token (promotion).")
    builder_admin: SecretEnv | None = Field(None, description="Target builder's seal token (the seal step).")
    kafka_ca: MountedBundle | None = Field(None, description="CA of the brokers (tasks that use the bus).")
    s3_ca: MountedBundle | None = Field(None, description="CA of the S3 endpoint (every S3 task).")
    pod_labels: dict[str, str] = Field(default_factory=dict, description="Labels of every task pod.")
    pod_annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of task pods.")
    steps: TaskResources = Field(default_factory=lambda: TaskResources(cpu="250m", memory="1Gi"))
    train: TaskResources = Field(
        default_factory=lambda: TaskResources(cpu="250m", memory="1Gi"),
        description="The training step: it submits and follows the training job (launcher=local: trains).",
    )
    evaluate: TaskResources = Field(
        default_factory=lambda: TaskResources(cpu="4", memory="32Gi", gpus=1),
        description="Evaluation loads the candidate: the training hardware (one node's GPU).",
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="Run parameter defaults.")


# The settings sections the steps read; every non-secret field is taken from the ConfigMap when present.
STEP_SECTIONS: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("CUTALIGN_KAFKA_", config.KafkaSettings),
    ("CUTALIGN_S3_", config.S3Settings),
    ("CUTALIGN_JUDGE_", config.JudgeSettings),
    (JUDGE_LLM_PREFIX, config.PolicySettings),
    ("CUTALIGN_BUILDER_", config.BuilderSettings),
    ("CUTALIGN_ITERATION_", config.IterationSettings),
    ("CUTALIGN_LAUNCHER_", config.LauncherSettings),
    ("CUTALIGN_TRAINER_", config.TrainerSettings),
    ("CUTALIGN_POLICY_", config.PolicySettings),  # the promote step rolls out in policy.mode
    ("CUTALIGN_MODEL_SYNC_", config.ModelSyncSettings),
)


def config_keys() -> list[str]:
    """The ConfigMap keys the steps take as environment (every non-secret field of ``STEP_SECTIONS``)."""
    keys = []
    for prefix, cls in STEP_SECTIONS:
        for name, field in cls.model_fields.items():
            if "SecretStr" not in str(field.annotation):
                keys.append(f"{prefix}{name}".upper())
    return keys
