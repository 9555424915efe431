"""`cutalign run` and `cutalign eval` tried as a new user would: a task and a judge written outside the
repository (a module in the test's tmp dir, on PYTHONPATH), a base model directory, prompt files.

`cutalign run` finds the running platform the way it finds `cutalign up`'s (CUTALIGN_PLATFORM_* and the S3
credentials), so here it reuses the session's real Tansu + SeaweedFS — and must leave them running.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cutalign.cli.main import app
from cutalign.platform import LocalPlatform
from cutalign.store import ArtifactStore
from cutalign.store.layout import eval_key
from policy_support import tiny_policy

torch.set_num_threads(1)

JUDGE_MODULE = '''
"""A user's task: spell a word backwards. Only the standard library; no import from cutalign."""


class ReverseJudge:
    id = "reverse-v1"

    def judge(self, instruction, response, reference):
        target = reference["word"][::-1]
        if response.strip() == target:
            return ("Perfect.", True)
        return (f"The reversed word is {target}, not {response.strip()[:20]!r}.", False)
'''
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]


@pytest.fixture
def user_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's files: judge module on PYTHONPATH (this process and the pipeline's subprocesses)."""
    package = tmp_path / "usertask"
    package.mkdir()
    (package / "reverse_task.py").write_text(textwrap.dedent(JUDGE_MODULE))
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.setenv("PYTHONPATH", str(package))
    rows = [{"id": f"w{i}", "instruction": f"Spell {w} backwards.", "word": w} for i, w in enumerate(WORDS)]
    (package / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    (package / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[8:]))
    tiny_policy(package / "base")
    return package


def test_eval_judges_one_model_with_a_judge_from_outside_the_repository(
    user_task: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--model",
            str(user_task / "base"),
            "--eval",
            str(user_task / "eval.jsonl"),
            "--judge",
            "reverse_task:ReverseJudge",
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["metrics"]["eval/total"] == 2 and "accuracy" in result.output
    # the extra JSONL field reached the judge as `reference`
    for row, word in zip(report["results"], ("india", "juliet"), strict=True):
        assert row["judgment"] == "Perfect." or row["judgment"].startswith(
            f"The reversed word is {word[::-1]},"
        )
    eval_file = str(user_task / "eval.jsonl")
    bad = CliRunner().invoke(
        app, ["eval", "--model", str(user_task / "base"), "--eval", eval_file, "--judge", "reverse_task:Nope"]
    )
    assert bad.exit_code == 2 and "Nope" in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_run_drives_a_users_task_and_judge_through_the_services_on_the_running_platform(
    user_task: Path, tmp_path: Path, platform_env: LocalPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--prompts",
            str(user_task / "prompts.jsonl"),
            "--eval",
            str(user_task / "eval.jsonl"),
            "--judge",
            "reverse_task:ReverseJudge",
            "--base-model",
            str(user_task / "base"),
            "--iterations",
            "1",
            "--out",
            str(out),
            "--steps",
            "2",
            "--micro-batch-size",
            "4",
            "--lora-r",
            "4",
            "--max-new-tokens",
            "8",
            "--arm",
            "cut",
            "--baseline",
            "--threads",
            "1",
            "--no-probe",  # a random model answers nothing right: the probe would stop the run (its own test)
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    judged, baseline = report["runs"]
    iteration = judged["records"][1]
    assert iteration["promoted"] and iteration["positives"] + iteration["negatives"] == 8
    assert judged["arm"] == "cut" and report["config"]["judge"] == "reverse_task:ReverseJudge"
    assert baseline["arm"] == "sft" and [r["iteration"] for r in baseline["records"]] == [0, 1]
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "online iterations" in result.output and "pos/neg" in result.output
    # the evaluation inside the pipeline used the user's judge, with the JSONL's extra fields as reference
    run_store = ArtifactStore(platform_env.s3.model_copy(update={"bucket": judged["bucket"]}))
    evaluated = json.loads(run_store.get_bytes(eval_key(1)))["results"]
    assert [r["judgment"].split(",")[0] for r in evaluated if r["judgment"] != "Perfect."] == [
        f"The reversed word is {w[::-1]}"
        for w, r in zip(("india", "juliet"), evaluated, strict=True)
        if r["judgment"] != "Perfect."
    ]
    assert all(info["running"] for info in platform_env.status().values()), (
        "a reused platform is left running"
    )
