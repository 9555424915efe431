"""The online iteration as a Kubeflow Pipelines v2 pipeline (docs/method.md §6): one run = one iteration.

    [exit handler: release-training-jobs]
        plan-iteration -> publish-prompts -> wait-for-judging -> seal-iteration -> train-policy
            -> evaluate-policy -> [gate passed] promote-policy

``plan-iteration`` makes the run repeatable and schedulable: with the defaults (``iteration=0``, empty
``prompts_uri`` and ``policy_uri``) it runs the next iteration on a fresh slice of the prompt pool from the
current release (``cutalign.iteration.plan``), so a KFP recurring run drives the online loop by itself. Every
step's body is in ``components``; artifacts give the run its lineage in the KFP UI (the sealed manifest as a
``Dataset``, the candidate checkpoint as a ``Model`` pointer, the evaluation as ``Metrics``);
``promote-policy`` runs only when the gate passes (``dsl.If``). The exit handler deletes the run's unfinished
training job when the run fails or is cancelled. Caching is off for every task: each step has side effects
(messages, manifests, releases) that a cache hit would silently skip.

On a cluster each task gets the release's settings from its ConfigMap, its Secrets and CA bundles, resources
and placement from the ``PipelineWiring`` the pipeline was compiled with (see ``wiring``); the local runner
ignores those and the tasks inherit the caller's environment instead. (No ``from __future__ import
annotations``: KFP reads the pipeline function's annotations as types.)
"""

from functools import partial
from typing import Any

from kfp import dsl, kubernetes

from cutalign.config import LauncherSettings, TrainerSettings
from cutalign.pipelines import components
from cutalign.pipelines.wiring import MountedBundle, PipelineWiring, SecretEnv, TaskResources, config_keys

PIPELINE_NAME = "cutalign-online-iteration"
_TRAINER = TrainerSettings()
_LAUNCHER = LauncherSettings()


class _Deploy:
    """Applies the wiring to tasks: env, Secrets, CA bundles, resources, placement, no caching."""

    def __init__(self, wiring: PipelineWiring) -> None:
        self.wiring = wiring
        self.env = {key: key for key in config_keys()}

    def __call__(
        self,
        task: dsl.PipelineTask,
        resources: TaskResources | None = None,
        *,
        s3: bool = True,
        kafka: bool = False,
        secrets: tuple[SecretEnv | None, ...] = (),
    ) -> dsl.PipelineTask:
        w = self.wiring
        task.set_caching_options(False)
        kubernetes.use_config_map_as_env(task, w.config_map, self.env, optional=True)
        wanted = [*((w.s3,) if s3 else ()), *((w.kafka,) if kafka else ()), *secrets]
        for secret in (s for s in wanted if s is not None):
            kubernetes.use_secret_as_env(task, secret.secret, secret.keys, optional=secret.optional)
        for bundle in (w.s3_ca if s3 else None, w.kafka_ca if kafka else None):
            if bundle is not None:
                _mount(task, bundle)
        if w.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(w.image_pull_secrets))
        for key, value in w.pod_labels.items():
            kubernetes.add_pod_label(task, key, value)
        for key, value in w.pod_annotations.items():
            kubernetes.add_pod_annotation(task, key, value)
        _place(task, resources or w.steps)
        return task


def _mount(task: dsl.PipelineTask, bundle: MountedBundle) -> None:
    if bundle.kind == "secret":
        kubernetes.use_secret_as_volume(task, bundle.name, bundle.mount_path)
    else:
        kubernetes.use_config_map_as_volume(task, bundle.name, bundle.mount_path)


def _place(task: dsl.PipelineTask, r: TaskResources) -> None:
    if r.cpu:
        task.set_cpu_request(r.cpu)
    if r.cpu_limit:
        task.set_cpu_limit(r.cpu_limit)
    if r.memory:
        task.set_memory_request(r.memory).set_memory_limit(r.memory)
    if r.gpus:
        task.set_accelerator_type(r.accelerator).set_accelerator_limit(r.gpus)
    for key, value in r.node_selector.items():
        kubernetes.add_node_selector(task, key, value)
    for t in r.tolerations:
        kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)


def build_pipeline(wiring: PipelineWiring | None = None) -> Any:
    """The ``online_iteration`` pipeline deployed as ``wiring`` says (default: the chart's defaults)."""
    w = wiring or PipelineWiring()
    deploy = _Deploy(w)
    component = partial(dsl.component, base_image=w.image, install_kfp_package=False)
    plan_op, publish_op, wait_op, seal_op = (
        component(f)
        for f in (
            components.plan_iteration,
            components.publish_prompts,
            components.wait_for_judging,
            components.seal_iteration,
        )
    )
    train_op, evaluate_op, promote_op, release_op = (
        component(f)
        for f in (
            components.train_policy,
            components.evaluate_policy,
            components.promote_policy,
            components.release_training_jobs,
        )
    )

    @dsl.pipeline(
        name=PIPELINE_NAME, description="One online CUT iteration: prompts -> judgments -> train -> gate."
    )
    def online_iteration(
        iteration: int = 0,
        prompts_uri: str = "",
        prompt_pool_uri: str = "",
        prompts_per_iteration: int = 0,
        eval_uri: str = "",
        policy_uri: str = "",
        base_policy_uri: str = "",
        threshold: float = _TRAINER.threshold,
        unlikelihood_weight: float = _TRAINER.unlikelihood_weight,
        objective: str = _TRAINER.objective,
        lora: bool = _TRAINER.lora,
        lora_r: int = _TRAINER.lora_r,
        lora_alpha: int = _TRAINER.lora_alpha,
        learning_rate: float = _TRAINER.learning_rate,
        gpus: int = _LAUNCHER.gpus_per_node,
        launcher: str = _LAUNCHER.backend,
        trainer_overrides_json: str = "{}",
        builder_url: str = "",
        policy_admin_url: str = "",
        target_count: int = 0,
        deadline_s: float = 3600.0,
        min_count: int = 1,
        gate_tolerance: float = 0.0,
        judge: str = "",
        judge_options_json: str = "",
        eval_overrides_json: str = "{}",
    ) -> None:
        """One online iteration.

        Args:
            iteration: Iteration number (1, 2, ...), or 0 for the next one (see cutalign.iteration.plan).
            prompts_uri: Training prompts (JSONL or s3:// URI; may contain '{iteration}'); empty: the pool.
            prompt_pool_uri: JSONL pool iteration i takes rows [(i-1)*n, i*n) of (n: prompts_per_iteration).
            prompts_per_iteration: Prompts per iteration taken from the pool.
            eval_uri: Held-out eval prompts (JSONL path or s3:// URI), the same for every iteration.
            policy_uri: Starting policy; empty: the current release, else base_policy_uri.
            base_policy_uri: The base model, used until the first promotion.
            threshold: λ, the detection ratio threshold of CUT.
            unlikelihood_weight: α, the weight of the unlikelihood term.
            objective: cut, sft, hindsight or unlikelihood.
            lora: Train a LoRA adapter (merged into the exported model) instead of every weight.
            lora_r: LoRA rank.
            lora_alpha: LoRA alpha.
            learning_rate: AdamW learning rate.
            gpus: GPUs per training node (cluster launchers).
            launcher: pytorchjob or trainjob (a cluster job), or local (train inside the step's pod).
            trainer_overrides_json: Any other TrainerSettings fields, as a JSON object.
            builder_url: Target builder base URL for POST /seal (empty: seal in the task).
            policy_admin_url: Embedded policy server to hot-reload after promotion (empty: none).
            target_count: Judged samples to wait for (0: one per published prompt).
            deadline_s: Longest wait for generation and judging.
            min_count: Fewer durable examples than this at the deadline fails the run.
            gate_tolerance: Promote when accuracy >= previous accuracy - tolerance.
            judge: Judge plug-in for evaluation (empty: CUTALIGN_JUDGE_JUDGE).
            judge_options_json: The judge's options (empty: CUTALIGN_JUDGE_OPTIONS_JSON).
            eval_overrides_json: Other IterationSettings fields (eval_max_new_tokens, eval_template, ...).
        """
        attempt = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        release = deploy(release_op(launcher=launcher, attempt=attempt), s3=False)
        with dsl.ExitHandler(release, name="iteration"):
            plan = deploy(
                plan_op(
                    iteration=iteration,
                    prompts_uri=prompts_uri,
                    prompt_pool_uri=prompt_pool_uri,
                    prompts_per_iteration=prompts_per_iteration,
                    policy_uri=policy_uri,
                    base_policy_uri=base_policy_uri,
                    eval_uri=eval_uri,
                )
            )
            number, starting = plan.outputs["iteration"], plan.outputs["policy_uri"]
            publish = deploy(
                publish_op(iteration=number, prompts_uri=plan.outputs["prompts_uri"]), kafka=True
            )
            wait = deploy(
                wait_op(
                    iteration=number,
                    published=publish.output,
                    target_count=target_count,
                    deadline_s=deadline_s,
                    min_count=min_count,
                ),
                kafka=True,
            )
            sealed = deploy(
                seal_op(iteration=number, builder_url=builder_url), secrets=(w.builder_admin,)
            ).after(wait)
            trained = deploy(
                train_op(
                    iteration=number,
                    policy_uri=starting,
                    launcher=launcher,
                    objective=objective,
                    threshold=threshold,
                    unlikelihood_weight=unlikelihood_weight,
                    lora=lora,
                    lora_r=lora_r,
                    lora_alpha=lora_alpha,
                    learning_rate=learning_rate,
                    gpus=gpus,
                    trainer_overrides_json=trainer_overrides_json,
                    attempt=attempt,
                    manifest=sealed.outputs["manifest"],
                ),
                w.train,
            )
            evaluated = deploy(
                evaluate_op(
                    iteration=number,
                    policy_uri=starting,
                    eval_uri=eval_uri,
                    gate_tolerance=gate_tolerance,
                    judge=judge,
                    judge_options_json=judge_options_json,
                    eval_overrides_json=eval_overrides_json,
                    model=trained.outputs["model"],
                ),
                w.evaluate,
                secrets=(w.judge,),
            )
            with dsl.If(evaluated.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - a KFP condition
                deploy(
                    promote_op(
                        iteration=number,
                        policy_admin_url=policy_admin_url,
                        model=trained.outputs["model"],
                        manifest=sealed.outputs["manifest"],
                        metrics=evaluated.outputs["metrics"],
                    ),
                    secrets=(w.policy_admin,),
                )

    return online_iteration


online_iteration = build_pipeline()
