"""Upload the release's pipeline to Kubeflow Pipelines, once per distinct file: the chart's upload Job.

``helm install``/``upgrade`` runs ``python -m cutalign.k8s.pipeline_upload --wiring wiring.json --name ...``
in a Job: it compiles the pipeline with the release's ``PipelineWiring`` (Secrets, CA bundles, resources, run
defaults; see ``cutalign.pipelines.wiring``) from the package in the image, then uploads it. The first run
creates the pipeline; every run adds a version named after the compiled file's sha256 unless it exists, so
an upgrade that changes nothing uploads nothing, a re-run Job is harmless, and ``helm test``
(``cutalign.k8s.release_check``) can look the release's version up by name. ``--file`` uploads a file
compiled elsewhere instead.

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


def upload(client: PipelineClient, path: Path, name: str, description: str) -> str:
    """Create the pipeline or add this file as a new version; returns what was done, for the log."""
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
        return f"pipeline {name!r} already has version {version!r}; nothing uploaded"
    client.upload_pipeline_version(str(path), pipeline_version_name=version, pipeline_id=pipeline_id)
    return f"{'created pipeline' if created else 'added'} {name!r} version {version!r}"


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        path = compiled_for(args.wiring, Path(tmp)) if args.wiring else args.file
        check_pipeline_file(path)

        import kfp  # heavy; imported only when an upload really happens

        client = kfp.Client(host=args.endpoint, namespace=args.namespace)
        logger.info(upload(client, path, args.name, args.description))


if __name__ == "__main__":
    main()
