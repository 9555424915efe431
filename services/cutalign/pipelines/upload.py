"""Upload the release's pipeline to Kubeflow Pipelines, once per distinct file: the chart's upload Job.

``helm install``/``upgrade`` runs ``python -m cutalign.pipelines.upload --wiring wiring.json --name ...``
in a Job: it compiles the pipeline with the release's ``PipelineWiring`` (Secrets, CA bundles, resources, run
defaults; see ``cutalign.pipelines.wiring``) from the package in the image, then uploads it. The first run
creates the pipeline; every run adds a version named after the compiled file's sha256 unless it exists, so
an upgrade that changes nothing uploads nothing, a re-run Job is harmless, and ``helm test``
(``cutalign.pipelines.release_check``) can look the release's version up by name. ``--file`` uploads a file
compiled elsewhere instead. With ``--schedule CRON`` it also keeps a recurring run of that version (the
online loop with no one in it: each firing runs the next iteration).

The Job is a plain Job, not a hook: while KFP is down it fails and is retried by Kubernetes with backoff,
and the release installs regardless.

Credentials: in a multi-user Kubeflow, ``kfp.Client`` reads the service-account token the chart projects at
``/var/run/secrets/kubeflow/pipelines/token`` (audience ``pipelines.kubeflow.org``); a standalone KFP needs
none.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

logger = logging.getLogger(__name__)


class PipelineClient(Protocol):
    """The part of ``kfp.Client`` the upload uses."""

    def get_pipeline_id(self, name: str) -> str | None: ...

    def upload_pipeline(
        self, pipeline_package_path: str, pipeline_name: str | None = ..., description: str | None = ...
    ) -> Any: ...

    def upload_pipeline_version(
        self, pipeline_package_path: str, pipeline_version_name: str, pipeline_id: str | None = ...
    ) -> Any: ...

    def list_pipeline_versions(
        self,
        pipeline_id: str,
        page_token: str = ...,
        page_size: int = ...,
        sort_by: str = ...,
        filter: str | None = ...,
    ) -> Any: ...


class SchedulerClient(Protocol):
    """The part of ``kfp.Client`` the recurring run uses."""

    def create_experiment(
        self, name: str, description: str | None = ..., namespace: str | None = ...
    ) -> Any: ...

    def list_recurring_runs(self, *, experiment_id: str | None = ..., filter: str | None = ...) -> Any: ...

    def delete_recurring_run(self, recurring_run_id: str) -> Any: ...

    def create_recurring_run(self, experiment_id: str, job_name: str, **options: Any) -> Any: ...


@dataclass(frozen=True)
class Uploaded:
    message: str
    pipeline_id: str
    version_id: str


def version_name(path: Path) -> str:
    """Content-addressed version name: the same file always maps to the same version."""
    return "sha256-" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def check_pipeline_file(path: Path) -> None:
    """Fail before talking to KFP if the file is not a compiled KFP pipeline (IR YAML)."""
    if not path.is_file() or path.stat().st_size == 0:
        raise FileNotFoundError(
            f"{path} is missing or empty: compile it with `python -m cutalign.pipelines.compile`"
        )
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or "pipelineInfo" not in doc or "root" not in doc:
        raise ValueError(f"{path} is not a compiled KFP pipeline (no pipelineInfo/root): compile it with kfp")


def upload(client: PipelineClient, path: Path, name: str, description: str) -> Uploaded:
    """Create the pipeline or add this file as a new version; returns what was done and the version."""
    version = version_name(path)
    pipeline_id = client.get_pipeline_id(name)
    created = pipeline_id is None
    if pipeline_id is None:
        client.upload_pipeline(str(path), pipeline_name=name, description=description)
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            raise RuntimeError(f"KFP did not list pipeline {name!r} after creating it; run the upload again")
    name_filter = json.dumps(
        {"predicates": [{"key": "name", "operation": "EQUALS", "string_value": version}]}
    )
    existing = client.list_pipeline_versions(pipeline_id, filter=name_filter).pipeline_versions or []
    if existing:
        message = f"pipeline {name!r} already has version {version!r}; nothing uploaded"
        return Uploaded(message, pipeline_id, existing[0].pipeline_version_id)
    added = client.upload_pipeline_version(str(path), pipeline_version_name=version, pipeline_id=pipeline_id)
    message = f"{'created pipeline' if created else 'added'} {name!r} version {version!r}"
    return Uploaded(message, pipeline_id, added.pipeline_version_id)


def schedule(
    client: SchedulerClient,
    uploaded: Uploaded,
    *,
    experiment: str,
    name: str,
    cron: str,
    namespace: str | None = None,
    service_account: str | None = None,
) -> str:
    """Keep one recurring run ``name`` of the release's version: every firing runs the next iteration with
    the defaults, one at a time (max concurrency 1, no catch-up). A recurring run of an older version is
    replaced; one of this version is left alone."""
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    name_filter = json.dumps(
        {"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": name}]}
    )
    existing = (
        client.list_recurring_runs(experiment_id=experiment_id, filter=name_filter).recurring_runs or []
    )
    if any(r.pipeline_version_reference.pipeline_version_id == uploaded.version_id for r in existing):
        return f"recurring run {name!r} already runs this version"
    for old in existing:
        client.delete_recurring_run(old.recurring_run_id)
    client.create_recurring_run(
        experiment_id,
        name,
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        pipeline_id=uploaded.pipeline_id,
        version_id=uploaded.version_id,
        enable_caching=False,
        service_account=service_account,
    )
    return f"recurring run {name!r} ({cron}) now runs the new version (replaced {len(existing)})"


def compiled_for(wiring_path: Path, out_dir: Path) -> Path:
    """The release's pipeline, compiled from its wiring JSON into ``out_dir``."""
    from cutalign.pipelines.compile import compile_pipeline, read_wiring

    return compile_pipeline(out_dir, read_wiring(wiring_path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="KFP API, e.g. http://ml-pipeline.kubeflow:8888")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wiring", type=Path, help="PipelineWiring JSON: compile the release's pipeline.")
    source.add_argument("--file", type=Path, help="A compiled pipeline IR YAML.")
    parser.add_argument("--name", required=True, help="Pipeline name in the KFP UI.")
    parser.add_argument("--namespace", default="kubeflow", help="KFP namespace (multi-user: the profile's).")
    parser.add_argument("--description", default="cutalign online alignment iteration", help="Pipeline text.")
    parser.add_argument(
        "--schedule", help="Cron expression (KFP: 6 fields) of a recurring run of the version."
    )
    parser.add_argument("--experiment", default="cutalign", help="Experiment of the recurring run.")
    parser.add_argument("--recurring-run-name", default="cutalign-online-loop", help="Its name.")
    parser.add_argument("--service-account", help="Service account of its runs (may create training jobs).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        path = compiled_for(args.wiring, Path(tmp)) if args.wiring else args.file
        check_pipeline_file(path)

        import kfp  # heavy; imported only when an upload really happens

        client = kfp.Client(host=args.endpoint, namespace=args.namespace)
        uploaded = upload(client, path, args.name, args.description)
        logger.info(uploaded.message)
        if args.schedule:
            logger.info(
                schedule(
                    client,
                    uploaded,
                    experiment=args.experiment,
                    name=args.recurring_run_name,
                    cron=args.schedule,
                    namespace=args.namespace,
                    service_account=args.service_account,
                )
            )


if __name__ == "__main__":
    main()
