"""The online iteration as a Kubeflow Pipelines v2 pipeline (method page §6): one run = one iteration.

    publish-prompts -> wait-for-judging -> seal-iteration -> train-policy -> evaluate-policy
        -> [gate passed] promote-policy

Each component is a thin wrapper over a ``cutalign.iteration`` function (the demo and ``cutalign run`` call
the same functions), runs in the project image ``IMAGE`` (the chart's ``images.trainer``: every cutalign
module, torch and kfp are installed there, so nothing is pip-installed at run time) and imports inside its
body, as KFP requires. Artifacts give the run its lineage in the KFP UI: the sealed manifest (``Dataset``, its
``s3://`` URI in the metadata), the candidate checkpoint (``Model``: a pointer file, the checkpoint itself
stays in S3 where the trainer wrote it — copying multi-GB weights into the pipeline root would buy nothing)
and the evaluation (``Metrics``, in the project's metric names). ``promote-policy`` runs only when the gate
passes (``dsl.If``).

Configuration on a cluster: every task reads ``CUTALIGN_*`` settings from the release's ConfigMap and the S3
keys from its Secret (``config_map`` / ``s3_secret`` parameters, via kfp-kubernetes; the local runner
ignores them and the tasks inherit the caller's environment instead). Caching is off for every task: each
step has side effects (messages, manifests, releases) that a cache hit would silently skip.
"""

from kfp import dsl, kubernetes

# The project image (charts/cutalign/values.yaml images.trainer); a test keeps the two equal.
IMAGE = "ghcr.io/cutalign/trainer:0.1.0"
PIPELINE_NAME = "cutalign-online-iteration"

# CUTALIGN_* keys of the chart's ConfigMap that the steps read (missing keys keep the settings' defaults).
_SECTION_KEYS = {
    "S3": "ENDPOINT BUCKET SECURE REGION MULTIPART_PART_SIZE",
    "KAFKA": "BOOTSTRAP_SERVERS CLIENT_ID SECURITY_PROTOCOL SASL_MECHANISM SASL_USERNAME TOPIC_PROMPTS "
    "TOPIC_DEADLETTER MAX_MESSAGE_BYTES",
    "JUDGE": "JUDGE OPTIONS_JSON GUARD GUARD_MIN_CHARS GUARD_MIN_TOKENS",
    "BUILDER": "ALIGN_P_RATIO SEED",
    "ITERATION": "MODEL_ID POLL_INTERVAL_S HTTP_TIMEOUT_S COUNT_DEAD_LETTERS JOB_POLL_INTERVAL_S "
    "JOB_TIMEOUT_S POLICY_RESOURCE POLICY_NAMESPACE ROLLOUT_TIMEOUT_S",
    "POLICY": "MODE LORA_ADAPTERS",
    "MODEL_SYNC": "BASE_MODEL_URI",
    "LAUNCHER": "NAMESPACE IMAGE IMAGE_PULL_POLICY SERVICE_ACCOUNT WORKERS NPROC_PER_NODE CPU MEMORY "
    "SHM_SIZE NODE_SELECTOR TOLERATIONS POD_LABELS S3_SECRET BACKOFF_LIMIT TTL_SECONDS_AFTER_FINISHED "
    "ACTIVE_DEADLINE_SECONDS TRAINJOB_RUNTIME",
}
CONFIG_KEYS = [f"CUTALIGN_{section}_{key}" for section, keys in _SECTION_KEYS.items() for key in keys.split()]
S3_SECRET_KEYS = {"access-key": "CUTALIGN_S3_ACCESS_KEY", "secret-key": "CUTALIGN_S3_SECRET_KEY"}


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish_prompts(iteration: int, prompts_uri: str) -> int:
    """Record the iteration's prompt set in S3 and publish it on the prompts topic; returns how many."""
    import logging

    from cutalign.config import KafkaSettings, S3Settings
    from cutalign.iteration.prompts import publish_prompts as publish
    from cutalign.store import ArtifactStore

    logging.basicConfig(level=logging.INFO)
    published = publish(prompts_uri, iteration, store=ArtifactStore(S3Settings()), kafka=KafkaSettings())
    return published.count


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def wait_for_judging(
    iteration: int, published: int, target_count: int, deadline_s: float, min_count: int
) -> int:
    """Wait until the iteration's samples are judged and built (target 0: one per prompt); -> examples."""
    import logging

    from cutalign.config import IterationSettings, KafkaSettings, S3Settings
    from cutalign.iteration.progress import wait_for_iteration
    from cutalign.store import ArtifactStore

    logging.basicConfig(level=logging.INFO)
    settings = IterationSettings(
        target_count=target_count or None, deadline_s=deadline_s, min_count=min_count
    )
    progress = wait_for_iteration(
        ArtifactStore(S3Settings()),
        iteration,
        settings.target_count or published,
        kafka=KafkaSettings() if settings.count_dead_letters else None,
        deadline_s=settings.deadline_s,
        min_count=settings.min_count,
        poll_interval_s=settings.poll_interval_s,
    )
    return progress.examples


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def seal_iteration(iteration: int, builder_url: str, manifest: dsl.Output[dsl.Dataset]) -> str:
    """Seal the iteration (through the builder when ``builder_url`` is set); returns the manifest's URI."""
    import logging
    from pathlib import Path

    from cutalign.config import IterationSettings, S3Settings
    from cutalign.iteration.seal import seal
    from cutalign.store import ArtifactStore, manifest_json

    logging.basicConfig(level=logging.INFO)
    timeout_s = IterationSettings().http_timeout_s
    sealed = seal(
        ArtifactStore(S3Settings()), iteration, builder_url=builder_url or None, timeout_s=timeout_s
    )
    Path(manifest.path).write_bytes(manifest_json(sealed.manifest))
    manifest.metadata.update({"uri": sealed.manifest_uri, "iteration": iteration, **sealed.counts})
    return sealed.manifest_uri


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_policy(
    iteration: int,
    policy_uri: str,
    launcher: str,
    objective: str,
    threshold: float,
    unlikelihood_weight: float,
    lora: bool,
    lora_r: int,
    lora_alpha: int,
    learning_rate: float,
    gpus: int,
    trainer_overrides_json: str,
    manifest: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
) -> str:
    """Train the candidate from ``policy_uri`` on the sealed manifest (in-process, or as a cluster job)."""
    import json
    import logging
    from pathlib import Path

    from cutalign.config import IterationSettings, LauncherSettings, S3Settings, TrainerSettings
    from cutalign.iteration.overrides import settings_with
    from cutalign.store import ArtifactStore

    logging.basicConfig(level=logging.INFO)
    params = {
        "objective": objective,
        "threshold": threshold,
        "unlikelihood_weight": unlikelihood_weight,
        "lora": lora,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "learning_rate": learning_rate,
    }
    trainer = settings_with(TrainerSettings, params, trainer_overrides_json)
    store = ArtifactStore(S3Settings())
    manifest_uri = manifest.metadata["uri"]
    if launcher == "local":
        from cutalign.iteration.train import train_local

        trained = train_local(trainer, manifest_uri, policy_uri, iteration, store=store)
    elif launcher in ("pytorchjob", "trainjob"):
        from cutalign.iteration.cluster import in_cluster_api, train_on_cluster

        settings = IterationSettings()
        trained = train_on_cluster(
            in_cluster_api(),
            trainer,
            manifest_uri,
            policy_uri,
            iteration,
            store=store,
            launcher=settings_with(LauncherSettings, {"backend": launcher, "gpus_per_node": gpus}),
            poll_interval_s=settings.job_poll_interval_s,
            timeout_s=settings.job_timeout_s,
        )
    else:
        raise ValueError(f"launcher must be local, pytorchjob or trainjob, got {launcher!r}")
    pointer = {
        "uri": trained.model_uri,
        "metrics_uri": trained.metrics_uri,
        "run": trained.run,
        "steps": trained.steps,
        "iteration": iteration,
        "trained_from": policy_uri,
    }
    Path(model.path).write_text(json.dumps(pointer, indent=2, sort_keys=True))
    model.metadata.update(pointer)
    return trained.model_uri


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_policy(
    iteration: int,
    policy_uri: str,
    eval_uri: str,
    gate_tolerance: float,
    judge: str,
    judge_options_json: str,
    eval_overrides_json: str,
    model: dsl.Input[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
) -> bool:
    """Evaluate the candidate on the held-out set and log ``eval/*`` metrics; returns whether the gate passed.

    The verdict is the component's single ``Output``: the KFP 2.17 local runner resolves ``dsl.If``
    conditions only on outputs named ``Output``.
    """
    import logging

    from cutalign.config import IterationSettings, JudgeSettings, S3Settings
    from cutalign.iteration.assess import assess_candidate
    from cutalign.iteration.overrides import settings_with
    from cutalign.iteration.prompts import load_prompt_set
    from cutalign.judges.loader import judge_from_settings
    from cutalign.store import ArtifactStore

    logging.basicConfig(level=logging.INFO)
    settings = settings_with(IterationSettings, {"gate_tolerance": gate_tolerance}, eval_overrides_json)
    judge_params = {k: v for k, v in (("judge", judge), ("options_json", judge_options_json)) if v}
    store = ArtifactStore(S3Settings())
    assessment = assess_candidate(
        store,
        iteration=iteration,
        candidate_uri=model.metadata["uri"],
        starting_policy_uri=policy_uri,
        eval_prompts=load_prompt_set(eval_uri, store).rows,
        judge=judge_from_settings(settings_with(JudgeSettings, judge_params)),
        settings=settings,
        training_metrics_uri=model.metadata.get("metrics_uri"),
    )
    for name, value in assessment.metrics().items():
        metrics.log_metric(name, value)
    return assessment.decision.passed


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote_policy(
    iteration: int,
    policy_admin_url: str,
    model: dsl.Input[dsl.Model],
    manifest: dsl.Input[dsl.Dataset],
    metrics: dsl.Input[dsl.Metrics],
) -> str:
    """Release the candidate (policy/current.json) and roll it out in CUTALIGN_POLICY_MODE's serving stack."""
    import logging

    from cutalign.config import IterationSettings, ModelSyncSettings, PolicySettings, S3Settings
    from cutalign.iteration.promote import publish_release
    from cutalign.store import ArtifactStore
    from cutalign.store.layout import release_key

    logging.basicConfig(level=logging.INFO)
    settings = IterationSettings()
    if policy_admin_url:
        settings = settings.model_copy(update={"policy_admin_url": policy_admin_url})
    store = ArtifactStore(S3Settings())
    publish_release(
        store,
        iteration=iteration,
        model_uri=model.metadata["uri"],
        trained_from=model.metadata["trained_from"],
        eval_metrics={k: float(v) for k, v in metrics.metadata.items() if isinstance(v, int | float)},
        manifest_key=store.key_of(manifest.metadata["uri"]),
        settings=settings,
        policy=PolicySettings(),
        sync=ModelSyncSettings(),
    )
    return store.uri(release_key(iteration))


def _on_cluster(task: dsl.PipelineTask, config_map: str, s3_secret: str) -> dsl.PipelineTask:
    """Settings from the release's ConfigMap and S3 Secret; no caching (every step has side effects)."""
    kubernetes.use_config_map_as_env(task, config_map, {k: k for k in CONFIG_KEYS}, optional=True)
    kubernetes.use_secret_as_env(task, s3_secret, S3_SECRET_KEYS)
    task.set_caching_options(False)
    return task


@dsl.pipeline(
    name=PIPELINE_NAME, description="One online CUT iteration: prompts -> judgments -> train -> gate."
)
def online_iteration(
    iteration: int,
    prompts_uri: str,
    eval_uri: str,
    policy_uri: str,
    threshold: float = 1.1,
    unlikelihood_weight: float = 1.0,
    objective: str = "cut",
    lora: bool = True,
    lora_r: int = 16,
    lora_alpha: int = 16,
    learning_rate: float = 4e-4,
    gpus: int = 1,
    launcher: str = "local",
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
    config_map: str = "cutalign-config",
    s3_secret: str = "cutalign-s3",
) -> None:
    """One online iteration.

    Args:
        iteration: Iteration number (1, 2, ...): names every key it writes (iterations/{i:04d}/...).
        prompts_uri: Fresh training prompts (JSONL path or s3:// URI; never reused across iterations).
        eval_uri: Held-out eval prompts (JSONL path or s3:// URI), the same for every iteration.
        policy_uri: Policy the iteration generated with and trains from (the last promoted one).
        threshold: λ, the detection ratio threshold of CUT.
        unlikelihood_weight: α, the weight of the unlikelihood term.
        objective: cut, sft, hindsight or unlikelihood.
        lora: Train a LoRA adapter (merged into the exported model) instead of every weight.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        learning_rate: AdamW learning rate.
        gpus: GPUs per training node (cluster launchers).
        launcher: local (train in the task's process), pytorchjob or trainjob.
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
        config_map: ConfigMap holding the release's CUTALIGN_* settings (cluster only).
        s3_secret: Secret holding the S3 access-key and secret-key (cluster only).
    """
    publish = _on_cluster(
        publish_prompts(iteration=iteration, prompts_uri=prompts_uri), config_map, s3_secret
    )
    wait = _on_cluster(
        wait_for_judging(
            iteration=iteration,
            published=publish.output,
            target_count=target_count,
            deadline_s=deadline_s,
            min_count=min_count,
        ),
        config_map,
        s3_secret,
    )
    sealed = _on_cluster(seal_iteration(iteration=iteration, builder_url=builder_url), config_map, s3_secret)
    sealed.after(wait)
    trained = _on_cluster(
        train_policy(
            iteration=iteration,
            policy_uri=policy_uri,
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
            manifest=sealed.outputs["manifest"],
        ),
        config_map,
        s3_secret,
    )
    evaluated = _on_cluster(
        evaluate_policy(
            iteration=iteration,
            policy_uri=policy_uri,
            eval_uri=eval_uri,
            gate_tolerance=gate_tolerance,
            judge=judge,
            judge_options_json=judge_options_json,
            eval_overrides_json=eval_overrides_json,
            model=trained.outputs["model"],
        ),
        config_map,
        s3_secret,
    )
    with dsl.If(evaluated.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - a KFP condition
        _on_cluster(
            promote_policy(
                iteration=iteration,
                policy_admin_url=policy_admin_url,
                model=trained.outputs["model"],
                manifest=sealed.outputs["manifest"],
                metrics=evaluated.outputs["metrics"],
            ),
            config_map,
            s3_secret,
        )
