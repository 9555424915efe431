"""``cutalign k8s``: render the training job for a run and validate manifests offline."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
import yaml

from cutalign.config import LauncherSettings, S3Settings, TrainerSettings
from cutalign.k8s.validate import (
    DEFAULT_KUBE_VERSION,
    CrdCatalog,
    ManifestInvalid,
    load_manifests,
    validate_manifests,
)

app = typer.Typer(help="Kubernetes: render training jobs, validate manifests offline.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="k8s")


@app.command("validate")
def validate_cmd(
    files: list[Path] = typer.Argument(
        ..., help="YAML files ('-' for stdin), e.g. `helm template ... | cutalign k8s validate -`."
    ),
    crd_dir: Path | None = typer.Option(
        None,
        help="CRD YAML directory (default: CUTALIGN_LAUNCHER_CRD_DIR, else the CRDs cutalign ships).",
    ),
    kube_version: str = typer.Option(
        DEFAULT_KUBE_VERSION, help="Kubernetes version of the built-in schemas."
    ),
) -> None:
    """Validate standard objects strictly (kubernetes-validate) and custom resources against their CRDs."""
    catalog = CrdCatalog(crd_dir or LauncherSettings().crd_dir)  # type: ignore[call-arg]
    objs = [
        obj for f in files for obj in load_manifests(sys.stdin.read() if str(f) == "-" else f.read_text())
    ]
    try:
        reports = validate_manifests(objs, catalog, kube_version)
    except ManifestInvalid as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from e
    for r in reports:
        typer.echo(f"ok  {r.kind}/{r.name}  against {r.validated_against}")


@app.command("job")
def job_cmd(
    name: str = typer.Argument(..., help="Job name (DNS-1035 label, e.g. cut-it-0003)."),
    run_args: list[str] = typer.Argument(
        None, help="Trainer arguments after `--` (e.g. -- --data s3://... --model ... --out ...)."
    ),
    validate: bool = typer.Option(True, help="Validate against the CRD before printing."),
) -> None:
    """Print the PyTorchJob or TrainJob (CUTALIGN_LAUNCHER_BACKEND) of a run, configured by CUTALIGN_* env."""
    from cutalign.k8s.pytorchjob import build_pytorchjob
    from cutalign.k8s.trainjob import build_trainjob

    launcher = LauncherSettings()  # type: ignore[call-arg]  # values from the environment
    build = build_trainjob if launcher.backend == "trainjob" else build_pytorchjob
    job = build(name, run_args or [], launcher, S3Settings(), TrainerSettings())  # type: ignore[call-arg]
    if validate:
        try:
            report = CrdCatalog(launcher.crd_dir).validate(job)
        except ManifestInvalid as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(1) from e
        typer.echo(f"# validated against {report.validated_against}")
    typer.echo(yaml.safe_dump(job, sort_keys=False), nl=False)
