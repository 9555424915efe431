"""``cutalign run`` (the online loop on a user's own task) and ``cutalign eval`` (one model, one eval set)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cutalign.cli.flags import Flags, settings_flags
from cutalign.config import JudgeSettings, OnlineSettings, PolicySettings, TrainerSettings

# TrainerSettings a run sets itself for every iteration (cutalign.iteration.arms.run_loop) or takes from
# the task (the template) and the arm (the Align-P ratio): not flags of the commands that drive a run
DRIVER_SET = (
    "template",
    "epochs",
    "max_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "resume",
    "seed",
    "align_p_ratio",
)
TRAINER = Flags(TrainerSettings, "trainer", skip=DRIVER_SET)
JUDGE = Flags(JudgeSettings, "judge", only=("judge", "options_json"), prefix="judge-")
DECODING = Flags(PolicySettings, "policy", only=("template", "max_new_tokens"))

PromptsFile = Annotated[
    Path, typer.Option(exists=True, dir_okay=False, help="JSONL of {id, instruction, ...}.")
]
EvalFile = Annotated[
    Path,
    typer.Option("--eval", exists=True, dir_okay=False, help="Held-out JSONL, same format as --prompts."),
]
ModelDir = Annotated[Path, typer.Option(exists=True, file_okay=False, help="Hugging Face model directory.")]


def task_of(prompts: Path, eval_file: Path, judge: JudgeSettings, policy: PolicySettings) -> Any:
    """The user's task from the files and settings; the judge is loaded once so a typo fails first."""
    from cutalign.iteration.task import Decoding, FileTask
    from cutalign.judges.loader import load_judge, parse_options

    options = parse_options(judge.options_json)
    load_judge(judge.judge, options)
    return FileTask(
        prompts, eval_file, judge.judge, options, Decoding(policy.template, policy.max_new_tokens)
    )


@settings_flags(Flags(OnlineSettings, "online"), TRAINER, JUDGE, DECODING)
def run_command(
    prompts: PromptsFile,
    eval_file: EvalFile,
    base_model: ModelDir,
    online: OnlineSettings,
    trainer: TrainerSettings,
    judge: JudgeSettings,
    policy: PolicySettings,
    out: Annotated[Path, typer.Option(help="Directory for report.json, report.md, accuracy.png.")] = Path(
        "out/run"
    ),
) -> None:
    """Online alignment on your own task: each iteration publishes fresh prompts from PROMPTS, the policy
    (served from BASE_MODEL, then each promoted iteration) answers, JUDGE judges, the target builder seals the
    judgments, the trainer learns from them, and the result is evaluated on EVAL and promoted — through the
    local platform, services and KFP pipeline, as `cutalign demo` does.

    Extra JSONL fields (anything but id/instruction/input) reach the judge as `reference`.
    """
    from cutalign.cli.progress import RunProgress, quiet_libraries
    from cutalign.cli.reading import print_probe
    from cutalign.cli.show import print_session
    from cutalign.iteration.arms import parse_arm
    from cutalign.iteration.export import export_current
    from cutalign.iteration.task import fresh_prompt_sets, unused_prompts
    from cutalign.online.session import run_session
    from cutalign.online.stack import StackSettings, new_run_id
    from cutalign.reading.prepare import prepare
    from cutalign.store import ArtifactStore

    quiet_libraries()
    if online.arm != "auto":
        parse_arm(online.arm)  # a bad arm fails before anything starts
    task = task_of(prompts, eval_file, judge, policy)
    pool = task.train_prompts()
    sets = fresh_prompt_sets(pool, online.iterations, online.prompts_per_iteration, online.seed)
    run_id = new_run_id()
    work = out / "runs" / run_id
    console = Console()
    prepared = prepare(
        task, base_model.resolve(), online, unused_prompts(pool, sets), work, threshold=trainer.threshold
    )
    if prepared.report is not None:
        print_probe(prepared.report, console)
    online = online.model_copy(update={"arm": prepared.arm})
    base = prepared.base
    with RunProgress(console, online.iterations, online.arm) as progress:
        result = run_session(
            task,
            online,
            trainer,
            StackSettings(run_id=run_id, work_dir=work),
            lambda store: upload_base_model(store, base),
            lambda uri, s3: base,
            callbacks=progress.callbacks(),
        )
    if prepared.report is not None and prepared.verdict is not None:
        result.config["probe"] = {"metrics": prepared.report.metrics(), "verdict": asdict(prepared.verdict)}
    print_session(result, out, console)
    judged = result.results[0]
    release = export_current(
        ArtifactStore(result.s3.model_copy(update={"bucket": judged.bucket})), out / "model"
    )
    for record in judged.records:
        console.print(f"iteration {record.iteration} released {record.release_uri or '(nothing)'}")
    console.print(f"the aligned model (iteration {release.version.iteration}) is in {out / 'model'}")


def eval_command(
    model: ModelDir,
    eval_file: EvalFile,
    judge: JudgeSettings,
    policy: PolicySettings,
    out: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Write the full report (every response) as JSON.")
    ] = None,
) -> None:
    """Evaluate one model on a held-out JSONL with a judge: greedy responses under the plain template, judged,
    accuracy = share judged positive — the pipeline's evaluation step, without the pipeline."""
    from cutalign.cli.progress import quiet_libraries
    from cutalign.iteration.evaluate import evaluate_policy
    from cutalign.judges.loader import load_judge

    quiet_libraries()
    task = task_of(eval_file, eval_file, judge, policy)
    report = evaluate_policy(
        str(model),
        task.eval_prompts(),
        load_judge(task.judge, task.judge_options),
        s3=None,
        template=task.decoding.template,
        max_new_tokens=task.decoding.max_new_tokens,
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(report.to_json())
    typer.echo(json.dumps(report.metrics(), sort_keys=True))
    typer.echo(f"accuracy {report.accuracy:.3f} ({report.positives}/{report.total}) for {model}")


def upload_base_model(store: Any, directory: Path) -> str:
    """Copy a local base model to ``models/<dir name>-<sha256 prefix>/`` (once per content); return its URI.

    The whole run then reads it from the store like any promoted policy: the policy server, which loads later
    releases from S3, gets its S3 settings from serving an S3 URI, and the run's records name it by content.
    """
    from cutalign.policy.version import dir_sha256
    from cutalign.store.layout import base_model_prefix

    prefix = base_model_prefix(f"{directory.name}-{dir_sha256(directory)[:12]}")
    store.ensure_bucket()
    if not store.list(prefix):
        store.upload_dir(prefix, directory)
    return str(store.uri(prefix).rstrip("/"))


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("eval")(settings_flags(JUDGE, DECODING)(eval_command))
