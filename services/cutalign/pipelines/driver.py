"""Run N online iterations in sequence, each starting from the last promoted policy (docs/method.md §6).

    python -m cutalign.pipelines.driver --iterations 3 --first-iteration 1 \\
        --prompts 's3://cutalign/data/prompts-{iteration}.jsonl' --eval s3://cutalign/data/eval.jsonl \\
        --policy s3://cutalign/models/base/ [--param lora_r=8 --param launcher=pytorchjob ...] \\
        [--host http://ml-pipeline.kubeflow:8888 --namespace kubeflow --service-account cutalign-pipeline]

Without ``--host`` every iteration runs here with the KFP local runner (``SubprocessRunner(use_venv=False)``:
the tasks run in this Python environment, which has cutalign installed, and train in-process unless
``--param launcher=...`` says otherwise); with ``--host`` each iteration is a run of the pipeline version the
release uploaded (``--pipeline``, default ``cutalign-online-iteration``: its defaults are the release's),
awaited with ``kfp.Client``. Either way the driver reads ``policy/current.json`` from the store
(``CUTALIGN_S3_*``) before each iteration to report the policy it starts from — the pipeline itself picks
the current release, or ``--policy`` before the first promotion. An iteration whose gate fails promotes
nothing, so the next one starts from the same policy. The generator, judge and target builder must be running
(``cutalign up`` plus the services, or the Helm release); the driver only orchestrates iterations. Without a
laptop in the loop, a KFP recurring run with the defaults does the same (``iteration=0``: the next one).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cutalign.config import S3Settings
from cutalign.iteration.plan import starting_policy
from cutalign.pipelines.online_iteration import PIPELINE_NAME, online_iteration
from cutalign.policy.promotion import current_release
from cutalign.store import ArtifactStore

log = logging.getLogger(__name__)

Submit = Callable[[dict[str, Any]], None]
_PARSERS: dict[str, Callable[[str], Any]] = {
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "BOOLEAN": lambda v: {"true": True, "false": False}[v.lower()],
    "STRING": str,
}


@dataclass(frozen=True)
class IterationOutcome:
    iteration: int
    started_from: str  # the policy URI the iteration generated with and trained from
    promoted: bool
    current_policy: str  # the policy served after the iteration


def pipeline_parameters() -> dict[str, str]:
    """Name -> KFP parameter type of every pipeline parameter."""
    inputs = online_iteration.pipeline_spec.root.input_definitions.parameters
    return {name: _type_name(spec.parameter_type) for name, spec in inputs.items()}


def _type_name(parameter_type: int) -> str:
    from kfp.pipeline_spec import pipeline_spec_pb2

    return str(pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(parameter_type))


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``["lora_r=8", "lora=false"]`` -> ``{"lora_r": 8, "lora": False}``, typed as the pipeline declares."""
    types = pipeline_parameters()
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in types:
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE with NAME one of {sorted(types)}")
        try:
            params[name] = _PARSERS[types[name]](value)
        except (ValueError, KeyError) as e:
            raise ValueError(f"--param {pair!r}: {value!r} is not a valid {types[name]}") from e
    return params


def run_iterations(
    store: ArtifactStore,
    submit: Submit,
    *,
    iterations: int,
    first_iteration: int,
    prompts_template: str,
    eval_uri: str,
    initial_policy_uri: str,
    params: Mapping[str, Any] | None = None,
) -> list[IterationOutcome]:
    """Run ``iterations`` pipeline runs one after the other; returns what each one did."""
    if iterations > 1 and "{iteration}" not in prompts_template:
        raise ValueError(
            f"--prompts {prompts_template!r} has no '{{iteration}}': each iteration needs fresh prompts "
            "(e.g. prompts-{iteration}.jsonl)"
        )
    reserved = {"iteration", "prompts_uri", "eval_uri", "policy_uri", "base_policy_uri"} & set(params or {})
    if reserved:
        raise ValueError(f"{sorted(reserved)} are set by the driver for each iteration; do not pass them")
    outcomes = []
    for iteration in range(first_iteration, first_iteration + iterations):
        policy_uri = starting_policy(store, "", initial_policy_uri)  # what the pipeline's plan step picks
        arguments = {
            **(params or {}),
            "iteration": iteration,
            "prompts_uri": prompts_template.format(iteration=iteration),
            "eval_uri": eval_uri,
            "base_policy_uri": initial_policy_uri,
        }
        log.info("iteration %d: starting from %s", iteration, policy_uri)
        submit(arguments)
        release = current_release(store)
        promoted = release is not None and release.version.iteration == iteration
        current = release.version.uri if release is not None else initial_policy_uri
        log.info(
            "iteration %d: %s", iteration, f"promoted {current}" if promoted else "gate failed, kept policy"
        )
        outcomes.append(IterationOutcome(iteration, policy_uri, promoted, current))
    return outcomes


def local_submitter(pipeline_root: str) -> Submit:
    """Run each iteration in this process tree with the KFP local runner (raises if a task fails).

    Training runs inside the task (``launcher=local``) unless the arguments name a cluster launcher.
    """
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root)

    def submit(arguments: dict[str, Any]) -> None:
        online_iteration(**{"launcher": "local", **arguments})

    return submit


def kfp_submitter(
    host: str,
    *,
    pipeline: str = PIPELINE_NAME,
    namespace: str | None = None,
    experiment: str = "cutalign",
    service_account: str | None = None,
    timeout_s: int = 7 * 86400,
) -> Submit:
    """Run each iteration as a run of ``pipeline``'s newest version on the KFP server at ``host`` and wait
    for it (raises unless it succeeded): the version the release uploaded, with the release's wiring."""
    import kfp

    client = kfp.Client(host=host, namespace=namespace)
    pipeline_id = client.get_pipeline_id(pipeline)
    if pipeline_id is None:
        raise RuntimeError(f"KFP at {host} has no pipeline {pipeline!r}: install the chart (it uploads it)")
    versions = client.list_pipeline_versions(pipeline_id, sort_by="created_at desc", page_size=1)
    version_id = versions.pipeline_versions[0].pipeline_version_id
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id

    def submit(arguments: dict[str, Any]) -> None:
        run = client.run_pipeline(
            experiment_id=experiment_id,
            job_name=f"cutalign-iteration-{arguments['iteration']:04d}",
            params=arguments,
            pipeline_id=pipeline_id,
            version_id=version_id,
            enable_caching=False,
            service_account=service_account,
        )
        result = client.wait_for_run_completion(run.run_id, timeout=timeout_s)
        if result.state != "SUCCEEDED":
            raise RuntimeError(
                f"KFP run {run.run_id} (iteration {arguments['iteration']}) ended {result.state}: "
                f"see {host}/#/runs/details/{run.run_id}"
            )

    return submit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--iterations", type=int, required=True, help="How many iterations to run.")
    parser.add_argument("--first-iteration", type=int, default=1, help="Number of the first one.")
    parser.add_argument(
        "--prompts", required=True, help="Prompt set per iteration; '{iteration}' is replaced."
    )
    parser.add_argument("--eval", required=True, help="Held-out eval prompt set (the same every iteration).")
    parser.add_argument("--policy", required=True, help="Policy before the first promotion (the base model).")
    parser.add_argument(
        "--param", action="append", default=[], help="Another pipeline parameter, NAME=VALUE."
    )
    parser.add_argument("--host", help="KFP API endpoint; without it, run locally with the KFP local runner.")
    parser.add_argument(
        "--pipeline", default=PIPELINE_NAME, help="With --host: the uploaded pipeline to run."
    )
    parser.add_argument("--namespace", help="KFP namespace (multi-user Kubeflow: the profile's).")
    parser.add_argument("--experiment", default="cutalign", help="KFP experiment of the runs.")
    parser.add_argument("--service-account", help="Service account of the runs (may create PyTorchJobs).")
    parser.add_argument("--pipeline-root", default=".cutalign/kfp", help="Local runner: where artifacts go.")
    parser.add_argument(
        "--export", type=Path, help="Afterwards, write the current release here as a Hugging Face directory."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.host:
        submit = kfp_submitter(
            args.host,
            pipeline=args.pipeline,
            namespace=args.namespace,
            experiment=args.experiment,
            service_account=args.service_account,
        )
    else:
        submit = local_submitter(args.pipeline_root)
    store = ArtifactStore(S3Settings())
    outcomes = run_iterations(
        store,
        submit,
        iterations=args.iterations,
        first_iteration=args.first_iteration,
        prompts_template=args.prompts,
        eval_uri=args.eval,
        initial_policy_uri=args.policy,
        params=parse_params(args.param),
    )
    json.dump([o.__dict__ for o in outcomes], sys.stdout, indent=2)
    sys.stdout.write("\n")
    if args.export is not None:
        from cutalign.iteration.export import export_current

        release = export_current(store, args.export)
        log.info("exported the release of iteration %d to %s", release.version.iteration, args.export)
    return 0


if __name__ == "__main__":
    sys.exit(main())
