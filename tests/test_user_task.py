"""A user's own task, end to end as the README tells it: `init-model` -> `train --objective sft` -> `probe`
-> `run`, with a task and a judge written in a directory outside the repository, and the aligned model
handed back as a Hugging Face directory.

The judge returns `(text, positive)` and names the first wrong letter without spans, as a user's would. The
tiny model cannot read judgments, so the probe must say so and `run` must refuse until `--force`.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from cutalign.cli.main import app
from cutalign.platform import LocalPlatform

pytestmark = pytest.mark.slow
torch.set_num_threads(1)

JUDGE_MODULE = '''
"""Spell a word backwards; judged letter by letter. Only the standard library."""


class BackwardsJudge:
    id = "backwards-v1"

    def judge(self, instruction, response, reference):
        target, got = reference["word"][::-1], response.strip()
        if got == target:
            return ("Perfect.", True)
        for i, (a, b) in enumerate(zip(got, target)):
            if a != b:
                return (f"Letter {i + 1} should be {b!r}, not {a!r}.", False)
        return (f"It should be {len(target)} letters long, not {len(got)}.", False)
'''
WORDS = [
    "amber",
    "basil",
    "cedar",
    "delta",
    "ember",
    "fable",
    "gamma",
    "haste",
    "irony",
    "joker",
    "karma",
    "lemon",
    "mango",
    "noble",
    "olive",
    "pearl",
    "quill",
    "raven",
    "solar",
    "tango",
    "ultra",
    "vivid",
    "waltz",
    "xenon",
    "yield",
    "zebra",
]


def rows(words: list[str]) -> str:
    return "".join(
        json.dumps({"id": w, "instruction": f"Spell {w} backwards.", "word": w}) + "\n" for w in words
    )


def test_init_train_probe_run_and_the_aligned_model_comes_back(
    tmp_path: Path, platform_env: LocalPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "mytask"
    user.mkdir()
    (user / "backwards.py").write_text(textwrap.dedent(JUDGE_MODULE))
    monkeypatch.syspath_prepend(str(user))
    monkeypatch.setenv("PYTHONPATH", str(user))  # the pipeline's task subprocesses import the judge too
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (user / "prompts.jsonl").write_text(rows(WORDS[:22]))
    (user / "eval.jsonl").write_text(rows(WORDS[22:]))
    sft = [{"instruction": f"Spell {w} backwards.", "output": w[::-1]} for w in WORDS[:22]]
    (user / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    (user / "corpus.txt").write_text((user / "prompts.jsonl").read_text() + "Perfect. Letter should be not")
    cli = CliRunner()
    judge = ["--judge", "backwards:BackwardsJudge", "--template", "short", "--max-new-tokens", "8"]

    init = ["init-model", "--corpus", str(user / "corpus.txt"), "--out", str(user / "base"), "--layers", "2"]
    made = cli.invoke(app, [*init, "--hidden-size", "32", "--heads", "2", "--intermediate-size", "64"])
    assert made.exit_code == 0, made.output
    train = [
        "train",
        "--data",
        str(user / "sft.jsonl"),
        "--model",
        str(user / "base"),
        "--out",
        str(user / "sft"),
    ]
    options = ["--objective", "sft", "--no-lora", "--epochs", "20", "--template", "short", "--no-progress"]
    trained = cli.invoke(app, [*train, *options, "--micro-batch-size", "8"])
    assert trained.exit_code == 0, trained.output
    model = user / "sft" / "model"

    probe = ["probe", "--model", str(model), "--prompts", str(user / "prompts.jsonl"), *judge]
    probed = cli.invoke(app, [*probe, "--out", str(tmp_path / "probe.json")])
    assert probed.exit_code == 0, probed.output
    figures = json.loads((tmp_path / "probe.json").read_text())
    assert figures["probe/responses"] == 22 and figures["probe/spans_reported"] == 0.0
    assert "expect CUT not to learn" in probed.output and "what to change" in probed.output

    files = [
        "--prompts",
        str(user / "prompts.jsonl"),
        "--eval",
        str(user / "eval.jsonl"),
        "--base-model",
        str(model),
    ]
    sizes = ["--iterations", "1", "--prompts-per-iteration", "8", "--steps", "2", "--micro-batch-size", "4"]
    run = ["run", *files, *judge, *sizes, "--lora-r", "4", "--threads", "1", "--out", str(tmp_path / "run")]
    refused = cli.invoke(app, run)
    assert refused.exit_code == 2 and "the probe expects CUT not to learn" in refused.output
    assert "--force" in refused.output and "Traceback" not in refused.output

    forced = cli.invoke(app, [*run, "--force"])
    assert forced.exit_code == 0, forced.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (judged,) = report["runs"]
    assert judged["arm"] == "cut", "no spans: auto chooses faithful CUT"
    assert judged["records"][1]["release_uri"].startswith("s3://") and "released s3://" in forced.output
    aligned = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert aligned.num_parameters() > 0 and str(tmp_path / "run" / "model") in forced.output
    release = json.loads((tmp_path / "run" / "model" / "cutalign-release.json").read_text())
    assert release["version"]["iteration"] == 1
