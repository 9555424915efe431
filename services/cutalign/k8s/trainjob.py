"""Build the Kubeflow Trainer v2 TrainJob (``trainer.kubeflow.org/v1alpha1``): the PyTorchJob's successor.

A TrainJob names a ClusterTrainingRuntime (``launcher.trainjob_runtime``, by default ``torch-distributed``),
which owns the JobSet template, the torch rendezvous env and the failure policy; the job itself only sets the
trainer (image, the same torchrun command, run arguments and resuming env as the PyTorchJob, nodes, processes
and resources per node). Pod-level settings the ``trainer`` block has no field for (service account, node
selector, tolerations, security contexts, volumes) go in a ``runtimePatches`` entry owned by cutalign, which
patches the runtime's ``node`` job (Trainer v2.2 API; older releases called this ``podTemplateOverrides``).

The schema cutalign validates TrainJobs against is hand-written from the documented fields of Trainer v2.2
(``cutalign/k8s/crds/trainer.kubeflow.org_trainjobs.yaml``): point ``CUTALIGN_LAUNCHER_CRD_DIR`` at your
cluster's CRDs to validate against the real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubernetes import client as k8s

from cutalign.config import LauncherSettings, S3Settings, TrainerSettings
from cutalign.k8s import trainer_pod as pod

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
PATCH_MANAGER = "cutalign.io/launcher"
TRAINER_JOB = "node"  # the replicated job (and container) of the torch runtimes that runs the trainer


def build_trainjob(
    name: str,
    run_args: Sequence[str],
    launcher: LauncherSettings,
    s3: S3Settings,
    trainer: TrainerSettings,
) -> dict[str, Any]:
    """The TrainJob for one run; validate it with ``cutalign.k8s.validate.CrdCatalog`` before submitting."""
    spec: dict[str, Any] = {
        "runtimeRef": {
            "name": launcher.trainjob_runtime,
            "apiGroup": "trainer.kubeflow.org",
            "kind": "ClusterTrainingRuntime",
        },
        "trainer": {
            "image": launcher.image,
            "command": pod.trainer_command(launcher),
            "args": list(run_args),
            "env": pod.to_dict(pod.trainer_env(launcher, s3, trainer)),
            "numNodes": launcher.workers + 1,
            "numProcPerNode": launcher.procs_per_node,
            "resourcesPerNode": pod.to_dict(pod.trainer_resources(launcher)),
        },
        "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": _runtime_patch(launcher, s3)}],
    }
    if launcher.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = launcher.active_deadline_seconds
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": launcher.namespace, "labels": pod.pod_labels(launcher)},
        "spec": spec,
    }


def _runtime_patch(launcher: LauncherSettings, s3: S3Settings) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "serviceAccountName": launcher.service_account,
        "securityContext": pod.to_dict(pod.pod_security_context()),
        "volumes": pod.to_dict(pod.trainer_volumes(launcher, s3)),
        "containers": [
            {
                "name": TRAINER_JOB,
                "volumeMounts": pod.to_dict(pod.trainer_volume_mounts(launcher, s3)),
                "securityContext": pod.to_dict(pod.container_security_context()),
            }
        ],
    }
    if launcher.node_selector:
        pod_spec["nodeSelector"] = dict(launcher.node_selector)
    if launcher.tolerations:
        pod_spec["tolerations"] = pod.to_dict(pod.tolerations(launcher))
    pod_template = {
        "metadata": pod.to_dict(k8s.V1ObjectMeta(labels=pod.pod_labels(launcher))),
        "spec": pod_spec,
    }
    replicated_job = {"name": TRAINER_JOB, "template": {"spec": {"template": pod_template}}}
    return {"template": {"spec": {"replicatedJobs": [replicated_job]}}}
