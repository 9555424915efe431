"""``helm test``: every service of the release answers ready, and the release's pipeline version is in KFP.

    python -m cutalign.pipelines.release_check --ready http://rel-generator:8080/readyz ... \\
        --kfp-endpoint http://ml-pipeline.kubeflow:8888 --pipeline cutalign-online-iteration \\
        --wiring /pipeline/wiring.json

The pipeline version is looked up by the name the upload Job gives it (the sha256 of the pipeline compiled
from the same wiring, ``upload.version_name``), so the test fails while the upload has not
happened, e.g. KFP was down at install time and the Job is still retrying. Every problem is printed before
the exit status says whether there were any.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from cutalign.pipelines.upload import PipelineClient, compiled_for, version_name


def not_ready(url: str, timeout_s: float) -> str | None:
    """Why ``url`` is not ready (None when it answers 2xx)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - in-cluster http
            return None if 200 <= response.status < 300 else f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as e:
        return f"{url}: HTTP {e.code} {e.read()[:200].decode(errors='replace')}"
    except (urllib.error.URLError, OSError) as e:
        return f"{url}: {e}"


def missing_version(client: PipelineClient, pipeline: str, version: str) -> str | None:
    """Why ``pipeline`` has no version ``version`` in KFP (None when it has)."""
    pipeline_id = client.get_pipeline_id(pipeline)
    if pipeline_id is None:
        return f"KFP has no pipeline {pipeline!r}: see the logs of the release's pipeline-upload Job"
    name_filter = json.dumps(
        {"predicates": [{"key": "name", "operation": "EQUALS", "string_value": version}]}
    )
    if not client.list_pipeline_versions(pipeline_id, filter=name_filter).pipeline_versions:
        return (
            f"pipeline {pipeline!r} has no version {version!r} (this release's): is the upload Job retrying?"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ready", action="append", default=[], help="A readiness URL that must answer 2xx.")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="Per-request timeout.")
    parser.add_argument("--kfp-endpoint", help="KFP API; with --pipeline and --wiring: check the upload.")
    parser.add_argument(
        "--kfp-namespace", default="kubeflow", help="KFP namespace (multi-user: the profile)."
    )
    parser.add_argument("--pipeline", help="Pipeline name in KFP.")
    parser.add_argument("--wiring", type=Path, help="The release's PipelineWiring JSON.")
    args = parser.parse_args(argv)
    problems = [p for url in args.ready if (p := not_ready(url, args.timeout_s))]
    if args.kfp_endpoint and args.pipeline and args.wiring:
        import kfp

        with tempfile.TemporaryDirectory() as tmp:
            version = version_name(compiled_for(args.wiring, Path(tmp)))
        client = kfp.Client(host=args.kfp_endpoint, namespace=args.kfp_namespace)
        if problem := missing_version(client, args.pipeline, version):
            problems.append(problem)
    for problem in problems:
        print(f"NOT READY: {problem}", file=sys.stderr)
    print(f"{len(args.ready)} services checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
