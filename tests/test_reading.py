"""Judgment reading: the probe's measures and verdicts, and the warm start that teaches a model to read.

The behavioural test uses the counting task (its judge names the error and its span): a random model does not
read judgments (contrast ≈ 0), and after the judgment-reading warm start on its own sampled responses it does
(the contrast rises well above the probe's threshold) — measured by the probe on prompts the warm start never
saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cutalign.demo.task import CountingTask
from cutalign.iteration.respond import respond
from cutalign.iteration.task import Decoding
from cutalign.judges.programmatic import CountingJudge
from cutalign.policy.loading import load_policy
from cutalign.reading.examples import reading_examples
from cutalign.reading.probe import MIN_CONTRAST, ProbeReport, probe, verdict
from cutalign.reading.settings import ReadingSettings, WarmStartSettings
from cutalign.reading.warmstart import reading_warm_start
from cutalign.tasks import get_task
from policy_support import tiny_policy

torch.set_num_threads(1)
DECODING = Decoding("short", 24)


def report(**changes: object) -> ProbeReport:
    base = dict(
        responses=100,
        positives=40,
        negatives_measured=60,
        spans_reported=1.0,
        flagged_fraction=0.05,
        contrast=0.4,
        log_ratio=0.1,
        threshold=1.1,
        detection={"detection/precision": 0.8},
    )
    return ProbeReport(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "ok", "says"),
    [
        ({}, True, "contrast 0.400"),
        ({"positives": 0}, False, "none of 100"),
        ({"positives": 100}, False, "all 100"),
        ({"contrast": 0.01}, False, "does not read judgments"),
        ({"flagged_fraction": 0.001}, False, "CUT would be MLE"),
        ({"flagged_fraction": 0.8}, False, "most of every response"),
        ({"detection": {"detection/precision": 0.2}}, False, "not the blamed ones"),
        ({"contrast": None, "flagged_fraction": None}, False, "fewer than 2"),
    ],
)
def test_the_verdict_names_what_stops_cut_and_what_to_change(changes: dict, ok: bool, says: str) -> None:
    result = verdict(report(**changes))
    assert result.ok is ok and says in result.finding
    assert bool(result.advice) is not ok, "a refusal always says what to change"


def test_family_judges_report_spans_or_not_and_give_the_correction() -> None:
    for name in ("arithmetic", "shift", "extract"):
        with_spans, without = get_task(name), get_task(name, spans=False)
        row = with_spans.eval_prompts()[0]
        right = with_spans.family.answer(row)
        wrong = right[:-1] + ("x" if right[-1] != "x" else "y")
        reference = {k: v for k, v in row.items() if k not in ("id", "instruction")}
        from cutalign.judges.loader import load_judge

        a = load_judge(with_spans.judge, with_spans.judge_options).judge(row["instruction"], wrong, reference)
        b = load_judge(without.judge, without.judge_options).judge(row["instruction"], wrong, reference)
        assert not a.positive and a.error_spans and a.correction == right, name
        assert (b.text, b.positive, b.error_spans, b.correction) == (a.text, False, [], right), name
        assert load_judge(with_spans.judge, {}).judge(row["instruction"], right, reference).positive
    assert not {p["id"] for p in get_task("shift").eval_prompts()} & {
        p["id"] for p in get_task("shift").train_prompts()
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("reading") / "base", seed=3)


def test_reading_examples_put_each_response_under_its_judgment_and_keep_the_task(base: Path) -> None:
    prompts = CountingTask().train_prompts()[:6]
    data = reading_examples(load_policy(str(base)), prompts, CountingJudge(), DECODING, ReadingSettings())
    judged = [e for e in data.examples if not e.positive]
    plain = [e for e in data.examples if e.positive]
    assert len(judged) == data.responses > len(prompts), "the greedy response and distinct samples"
    assert all(e.judgment for e in judged)
    assert len(plain) == data.positives + data.corrections
    assert data.corrections == 0, "the counting judge gives no corrections"


@pytest.mark.slow
def test_the_warm_start_makes_a_model_read_judgments_on_prompts_it_never_saw(
    base: Path, tmp_path: Path
) -> None:
    task = CountingTask()
    pool = task.train_prompts()
    probe_on, train_on = pool[:48], pool[48:348]
    decoded = Decoding("short", 24)

    def contrast(model: Path) -> float:
        policy = load_policy(str(model))
        judged = respond(policy, probe_on, CountingJudge(), decoded)
        measured = probe(policy, judged, template="short", threshold=1.1)
        assert measured.negatives_measured >= 10 and measured.contrast is not None
        return measured.contrast

    before = contrast(base)

    class Counting:
        name, judge, judge_options, decoding = "counting", "counting", {}, decoded

    reading = ReadingSettings(samples_per_prompt=3, temperature=1.0)  # diverse samples of a random model
    training = WarmStartSettings(epochs=6, learning_rate=3e-3)
    data = reading_warm_start(
        base, Counting(), train_on, tmp_path / "read", reading=reading, training=training
    )
    after = contrast(tmp_path / "read")
    print(f"contrast before {before:.3f}, after {after:.3f} nats/token ({len(data.examples)} examples)")
    assert abs(before) < MIN_CONTRAST, "a random model does not read judgments"
    assert after > MIN_CONTRAST and after > before + MIN_CONTRAST
