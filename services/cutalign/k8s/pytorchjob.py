"""Build the PyTorchJob (Kubeflow Training Operator v1, ``kubeflow.org/v1``) that runs one training run.

Shape, and why:

* one ``Master`` (the operator requires exactly 1) plus ``launcher.workers`` ``Worker`` replicas, each pod
  running ``torchrun --nproc-per-node=N services/trainer/main.py <run args>`` in the container the operator
  requires to be named ``pytorch``; ``spec.nprocPerNode`` tells the operator the same N, and it sets the
  ``PET_*`` env (nnodes, node rank, master address/port) torchrun reads;
* ``restartPolicy: OnFailure`` with ``runPolicy.backoffLimit``: a crashed pod restarts and the trainer resumes
  from its last checkpoint (``CUTALIGN_TRAINER_RESUME=true``) instead of failing the run;
  ``cleanPodPolicy: Running`` stops pods still running when the job ends (keeping finished ones for their
  logs) and ``ttlSecondsAfterFinished`` deletes the job later;
* no ``elasticPolicy``: its rendezvous points at worker-0 and changes the world size on the fly, which a
  fixed-size gang that resumes from checkpoints does not need; ``--max-restarts`` restarts failed local
  workers inside a pod instead;
* GPUs as ``nvidia.com/gpu`` requests/limits, node selector and tolerations for GPU nodes;
* the store's keys only as ``secretKeyRef`` (see ``trainer_pod``).

The manifest is built with the Kubeflow Training SDK's typed models (``kubeflow-training``) and returned as
the plain dict ``CustomObjectsApi.create_namespaced_custom_object`` takes. The chart renders the same manifest
into a ConfigMap (``charts/cutalign/templates/trainer/job-templates.yaml``); a test keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubeflow.training import models as kf
from kubernetes import client as k8s

from cutalign.config import LauncherSettings, S3Settings, TrainerSettings
from cutalign.k8s import trainer_pod as pod

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER_NAME = "pytorch"  # the operator only wires up a container with this name


def build_pytorchjob(
    name: str,
    run_args: Sequence[str],
    launcher: LauncherSettings,
    s3: S3Settings,
    trainer: TrainerSettings,
) -> dict[str, Any]:
    """The PyTorchJob for one run; validate it with ``cutalign.k8s.validate.CrdCatalog`` before submitting."""
    replica_specs = {"Master": _replica_spec(1, run_args, launcher, s3, trainer)}
    if launcher.workers:
        replica_specs["Worker"] = _replica_spec(launcher.workers, run_args, launcher, s3, trainer)
    job = kf.KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=k8s.V1ObjectMeta(name=name, namespace=launcher.namespace, labels=pod.pod_labels(launcher)),
        spec=kf.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(launcher.procs_per_node),
            pytorch_replica_specs=replica_specs,
            run_policy=kf.KubeflowOrgV1RunPolicy(
                backoff_limit=launcher.backoff_limit,
                ttl_seconds_after_finished=launcher.ttl_seconds_after_finished,
                active_deadline_seconds=launcher.active_deadline_seconds,
                clean_pod_policy="Running",
            ),
        ),
    )
    result: dict[str, Any] = pod.to_dict(job)
    return result


def _replica_spec(
    replicas: int,
    run_args: Sequence[str],
    launcher: LauncherSettings,
    s3: S3Settings,
    trainer: TrainerSettings,
) -> kf.KubeflowOrgV1ReplicaSpec:
    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=launcher.image,
        image_pull_policy=launcher.image_pull_policy,
        command=pod.trainer_command(launcher),
        args=list(run_args),
        env=pod.trainer_env(launcher, s3, trainer),
        ports=[k8s.V1ContainerPort(name="pytorchjob-port", container_port=pod.MASTER_PORT, protocol="TCP")],
        resources=pod.trainer_resources(launcher),
        volume_mounts=pod.trainer_volume_mounts(launcher, s3),
        security_context=pod.container_security_context(),
    )
    return kf.KubeflowOrgV1ReplicaSpec(
        replicas=replicas,
        restart_policy="OnFailure",
        template=k8s.V1PodTemplateSpec(
            metadata=k8s.V1ObjectMeta(labels=pod.pod_labels(launcher)),
            spec=k8s.V1PodSpec(
                service_account_name=launcher.service_account,
                automount_service_account_token=False,
                security_context=pod.pod_security_context(),
                node_selector=launcher.node_selector or None,
                tolerations=pod.tolerations(launcher) or None,
                volumes=pod.trainer_volumes(launcher, s3),
                containers=[container],
            ),
        ),
    )
