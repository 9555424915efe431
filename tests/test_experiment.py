"""`cutalign experiment`: arms on identical prompts, base model, judge and steps; mean ± spread reporting.

The harness runs for real on a tiny random model (the in-process driver: generation, the judge plug-in, the
builder's validation and sealing, the trainer, evaluation and promotion, each run in a bucket of the session's
SeaweedFS). A random model never counts right, so the judge here is a deterministic stand-in that makes about
half the responses positive and blames one character of the others: every arm then has data to train on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from cutalign.cli.main import app
from cutalign.config import OnlineSettings, S3Settings, TrainerSettings
from cutalign.cut.loss import cut_loss
from cutalign.demo.task import CountingTask
from cutalign.experiment.compare import ExperimentPlan, RunResult, run_experiment
from cutalign.experiment.report import Stat, markdown_table, summarize
from cutalign.iteration.arms import PRESETS, ArmError, parse_arm, parse_arms
from cutalign.iteration.record import IterationRecord
from cutalign.iteration.task import Decoding
from cutalign.judges.base import Judgment
from cutalign.platform import LocalPlatform
from cutalign.store import ArtifactStore, sha256_bytes
from cutalign.store.layout import prompts_key
from policy_support import tiny_policy

torch.set_num_threads(1)


class ParityJudge:
    """Positive iff the prompt's first number is even (whatever the response); else blames the response's
    first character. A random model's responses all look alike, so polarity must come from the prompt."""

    id = "parity-test"

    def judge(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Judgment:
        if int(instruction.split()[2]) % 2 == 0:  # "Count from S to E.": even S
            return Judgment("Perfect.", True)
        blamed = [(0, min(1, len(response)))]
        return Judgment(f"The first character {response[:1]!r} is wrong.", False, blamed)


@dataclass(frozen=True)
class ParityTask:
    """The counting prompts judged by :class:`ParityJudge`: a small pool and held-out set."""

    name = "parity"
    judge = "test_experiment:ParityJudge"
    judge_options = {}  # noqa: RUF012 - read only
    decoding = Decoding("short", 8)

    def train_prompts(self) -> list[dict[str, Any]]:
        return CountingTask().train_prompts()[:40]

    def eval_prompts(self) -> list[dict[str, Any]]:
        return CountingTask().eval_prompts()[:8]


def test_span_modes_accept_a_micro_batch_without_negatives() -> None:
    """Keeping every positive makes all-positive micro-batches common: no Misalign rows, nothing to select."""
    logits = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.tensor([[-100, 1, 2, 3], [-100, -100, 4, 1]])
    empty = logits.new_zeros((0, 1, 5))
    for mode in ("span", "union", "intersection"):
        no_negatives = torch.tensor([False, False])
        out = cut_loss(logits, labels, empty, labels.new_zeros((0, 1)), no_negatives, span_mode=mode)
        assert out.flagged_tokens == 0 and out.loss.item() == pytest.approx(out.mle_loss.item())


def test_presets_and_custom_arms_are_checked_trainer_settings() -> None:
    assert parse_arm("sft") == ("sft", {"objective": "sft", "align_p_ratio": None})
    name, arm = parse_arm("low:objective=cut,span_mode=span,unlikelihood_weight=0.5,align_p_ratio=none")
    expected = {"objective": "cut", "span_mode": "span", "unlikelihood_weight": 0.5, "align_p_ratio": None}
    assert (name, arm) == ("low", expected)
    for bad in ("nope", "x:objective=dpo", "x:lr=1", "x:threshold=0.5", "x:objective"):
        with pytest.raises(ArmError):
            parse_arm(bad)
    with pytest.raises(ArmError, match="twice"):
        parse_arms(["sft", "sft"])


def _result(arm: str, seed: int, accuracies: list[float], flagged: float | None = None) -> RunResult:
    records = [IterationRecord(i, a) for i, a in enumerate(accuracies)]
    if flagged is not None:
        for r in records[1:]:
            r.metrics = {"tokens/flagged_fraction": flagged}
    return RunResult(arm, seed, records)


def test_summary_is_mean_and_sample_std_with_paired_differences_to_the_reference() -> None:
    results = [
        _result("sft", 0, [0.5, 0.6]),
        _result("sft", 1, [0.5, 0.7]),
        _result("cut", 0, [0.5, 0.9], flagged=0.2),
        _result("cut", 1, [0.5, 0.9], flagged=0.4),
        _result("ul", 0, [0.5, 0.7]),
        _result("ul", 1, [0.5, 0.6]),
    ]
    arms = {"sft": PRESETS["sft"], "cut": PRESETS["cut"], "ul": PRESETS["unlikelihood"]}
    by_arm = {s.arm: s for s in summarize(arms, results, "sft")}
    sft, cut, ul = by_arm["sft"], by_arm["cut"], by_arm["ul"]
    assert sft.accuracy[1].mean == pytest.approx(0.65) and sft.accuracy[1].std == pytest.approx(0.0707107)
    assert sft.vs_reference is None
    assert cut.vs_reference is not None and cut.beats_reference is not None
    assert cut.vs_reference[1].mean == pytest.approx(0.25)
    assert cut.vs_reference[1].std == pytest.approx(0.0707107)
    assert cut.beats_reference == [False, True]  # 0.90 - 0.65 > 0 + 0.0707
    assert ul.beats_reference == [False, False] and ul.vs_reference is not None
    assert ul.vs_reference[1].mean == pytest.approx(0.0)
    assert cut.train_metrics["tokens/flagged_fraction"].mean == pytest.approx(0.3)
    table = markdown_table(list(by_arm.values()), "sft")
    assert "| `cut` | 0.500 ± 0.000 | 0.900 ± 0.000 | +0.250 ± 0.071 (beats) |" in table
    assert str(Stat.of([1.0])) == "1.000", "one seed has no spread to show"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("experiment") / "base")


def test_arms_see_identical_prompts_and_first_iteration_data_and_take_the_same_steps(
    base: Path, s3_settings: S3Settings, unique_name: str
) -> None:
    plan = ExperimentPlan(
        task=ParityTask(),
        base_model=str(base),
        arms={name: PRESETS[name] for name in ("sft", "cut", "span-noalignn")},
        seeds=[0, 1],
        online=OnlineSettings(iterations=2, prompts_per_iteration=12, steps=2, threads=1),
        trainer=TrainerSettings(micro_batch_size=4, lora_r=4),
        s3=s3_settings,
        run_id=unique_name[-8:],
    )
    base_eval, results = run_experiment(plan)

    assert [(r.arm, r.seed) for r in results] == [(a, s) for a in plan.arms for s in (0, 1)]
    stores = {
        (r.arm, r.seed): ArtifactStore(s3_settings.model_copy(update={"bucket": r.bucket})) for r in results
    }
    for seed in (0, 1):
        runs = [r for r in results if r.seed == seed]
        for i in (1, 2):
            recorded = {sha256_bytes(stores[r.arm, seed].get_bytes(prompts_key(i))) for r in runs}
            assert len(recorded) == 1, "same prompts in every arm"
        # same base, greedy decoding: iteration 1 trains every arm on the very same judged responses
        assert len({r.records[1].data_sha256 for r in runs}) == 1
        assert len({(r.records[1].positives, r.records[1].negatives) for r in runs}) == 1
        assert all(r.records[0].accuracy == base_eval.accuracy for r in runs)
        assert all(rec.steps == 2 for r in runs for rec in r.records[1:]), "every arm takes the same steps"
    first = stores["sft", 0].get_bytes(prompts_key(1)).decode()
    second = stores["sft", 0].get_bytes(prompts_key(2)).decode()
    ids = [{json.loads(line)["id"] for line in text.splitlines()} for text in (first, second)]
    assert not ids[0] & ids[1], "fresh prompts every iteration"
    assert plan.prompt_sets(0) != plan.prompt_sets(1)
    cut = next(r for r in results if r.arm == "cut")
    assert "detection/recall" in cut.records[1].metrics, "spans known: detection is measured"
    sft = next(r for r in results if r.arm == "sft")
    assert "tokens/flagged_fraction" not in sft.records[1].metrics
    for arm, kept in (
        ("sft", lambda p, n: p),
        ("cut", lambda p, n: min(p, round(0.25 * n))),
        ("span-noalignn", lambda p, n: p),
    ):
        rec = next(r for r in results if r.arm == arm).records[1]
        assert rec.trained_positives == kept(rec.positives, rec.negatives), f"{arm}'s data balance"
    assert all(rec.promoted for r in results for rec in r.records), "the method promotes every iteration"


def _bucket(s3: S3Settings, bucket: str) -> ArtifactStore:
    return ArtifactStore(s3.model_copy(update={"bucket": bucket}))


def test_experiment_cli_runs_end_to_end_and_writes_its_report(
    base: Path, tmp_path: Path, platform_env: LocalPlatform
) -> None:
    arms = ["--arm", "cut", "--arm", "unlikelihood", "--seeds", "1", "--workers", "2"]  # a process each
    sizes = ["--iterations", "1", "--prompts-per-iteration", "6", "--eval-size", "4", "--steps", "1"]
    trainer = ["--micro-batch-size", "2", "--threads", "1", "--lora-r", "2"]
    args = ["experiment", "--base-model", str(base), *arms, *sizes, *trainer, "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    body = json.loads((tmp_path / "report.json").read_text())
    assert body["config"]["trainer"]["lora_r"] == 2
    assert set(body["config"]["arms"]) == {"cut", "unlikelihood"}
    assert (tmp_path / "report.md").is_file() and (tmp_path / "accuracy.png").is_file()
    bad = CliRunner().invoke(app, ["experiment", "--base-model", str(base), "--arm", "x:objective=dpo"])
    assert bad.exit_code == 2 and "objective" in bad.output and "Traceback" not in bad.output
