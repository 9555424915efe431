"""The online iteration's steps as KFP components: thin wrappers over ``cutalign.iteration`` functions.

Each function is turned into a component by ``online_iteration.build_pipeline`` (on the wiring's image, with
nothing installed at run time: every cutalign module, torch and kfp are in the project image) and imports
inside its body, as KFP requires; no ``from __future__ import annotations`` here, since KFP reads the
annotations as types. Settings come from the environment (the release's ConfigMap and Secrets on a cluster,
the caller's environment on the local runner); run parameters are applied on top.
"""

from typing import NamedTuple

from kfp import dsl


def plan_iteration(
    iteration: int,
    prompts_uri: str,
    prompt_pool_uri: str,
    prompts_per_iteration: int,
    policy_uri: str,
    base_policy_uri: str,
    eval_uri: str,
) -> NamedTuple("Plan", [("iteration", int), ("prompts_uri", str), ("policy_uri", str)]):  # type: ignore[valid-type]  # noqa: UP014, E501 - KFP reads this inline form
    """Decide the iteration, record its prompts and pick the starting policy ('next' mode: 0 / empty)."""
    import logging
    from collections import namedtuple

    from cutalign.config import S3Settings
    from cutalign.iteration.plan import PlanError, plan_iteration
    from cutalign.store import ArtifactStore

    logging.basicConfig(level=logging.INFO)
    if not eval_uri:
        raise PlanError(
            "eval_uri is empty: set it to the held-out prompt set (the chart: pipeline.run.evalUri)"
        )
    plan = plan_iteration(
        ArtifactStore(S3Settings()),
        iteration=iteration,
        prompts_uri=prompts_uri,
        prompt_pool_uri=prompt_pool_uri,
        prompts_per_iteration=prompts_per_iteration,
        policy_uri=policy_uri,
        base_policy_uri=base_policy_uri,
    )
    Plan = namedtuple("Plan", ["iteration", "prompts_uri", "policy_uri"])  # noqa: N806 - KFP's outputs
    return Plan(plan.iteration, plan.prompts_uri, plan.policy_uri)


def publish_prompts(iteration: int, prompts_uri: str) -> int:
    """Publish the iteration's recorded prompt set on the prompts topic; returns how many prompts it has.

    A sealed iteration (its run stopped after sealing) publishes nothing: its data is complete.
    """
    import logging

    from cutalign.config import KafkaSettings, S3Settings
    from cutalign.iteration.prompts import load_prompt_set
    from cutalign.iteration.prompts import publish_prompts as publish
    from cutalign.store import ArtifactStore
    from cutalign.store.layout import iteration_manifest_key

    logging.basicConfig(level=logging.INFO)
    store = ArtifactStore(S3Settings())
    if store.exists(iteration_manifest_key(iteration)):
        logging.getLogger(__name__).info(
            "iteration %d is sealed: not publishing its prompts again", iteration
        )
        return len(load_prompt_set(prompts_uri, store).rows)
    return publish(prompts_uri, iteration, store=store, kafka=KafkaSettings()).count


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
        abort_file=settings.abort_file,
    )
    return progress.examples


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
    attempt: str,
    manifest: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
) -> str:
    """Train the candidate from ``policy_uri`` on the sealed manifest (in-process, or as a cluster job).

    ``attempt`` is the KFP run id: the job and its checkpoints belong to this run (a new run of the same
    iteration starts over with its own hyper-parameters; a retried step resumes).
    """
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

        trained = train_local(trainer, manifest_uri, policy_uri, iteration, store=store, attempt=attempt)
    elif launcher in ("pytorchjob", "trainjob"):
        from cutalign.iteration.cluster import kube_api, sigterm_raises, train_on_cluster

        settings = IterationSettings()
        with sigterm_raises():  # a cancelled run stops this pod: delete the job before exiting
            trained = train_on_cluster(
                kube_api(),
                trainer,
                manifest_uri,
                policy_uri,
                iteration,
                store=store,
                launcher=settings_with(LauncherSettings, {"backend": launcher, "gpus_per_node": gpus}),
                poll_interval_s=settings.job_poll_interval_s,
                timeout_s=settings.job_timeout_s,
                attempt=attempt,
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


def release_training_jobs(launcher: str, attempt: str, status: dsl.PipelineTaskFinalStatus) -> int:
    """Exit handler: delete this run's unfinished training jobs (a failed or cancelled run); -> how many."""
    import logging

    logging.basicConfig(level=logging.INFO)
    log = logging.getLogger(__name__)
    if launcher not in ("pytorchjob", "trainjob"):
        log.info("run %s ended %s; launcher %s leaves no cluster job", attempt, status.state, launcher)
        return 0
    from cutalign.config import LauncherSettings
    from cutalign.iteration.cluster import delete_unfinished_jobs, kube_api

    deleted = delete_unfinished_jobs(kube_api(), LauncherSettings().namespace, attempt)
    log.info(
        "run %s ended %s; deleted %d unfinished training job(s) %s",
        attempt,
        status.state,
        len(deleted),
        deleted,
    )
    return len(deleted)
