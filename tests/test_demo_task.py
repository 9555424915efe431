"""The counting demo task: split disjointness, prompts, corruptions, warm-start data and tokenizer corpus."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from cutalign.demo.task import (
    CORRUPTIONS,
    CountingTask,
    Habit,
    accuracy,
    answer,
    corrupt,
    habit_free_fraction,
    instruction,
    is_correct,
    make_habits,
    make_prompt,
    tokenizer_corpus,
    warm_start_examples,
    with_habits,
    write_jsonl,
)
from cutalign.errors import UserError
from cutalign.iteration.task import fresh_prompt_sets
from cutalign.judges.guard import GamingGuard
from cutalign.judges.programmatic import CountingJudge, describe_count_mistakes
from cutalign.templates import TEMPLATES


def test_train_and_eval_are_disjoint_cover_the_space_and_follow_the_seed() -> None:
    task = CountingTask(seed=3)
    train, eval_ = task.split()
    assert len(eval_) == task.eval_size == 150
    assert not set(train) & set(eval_)
    assert sorted(train + eval_) == sorted(task.pairs())
    assert len(set(task.pairs())) == len(task.pairs()) == 905
    assert task.split() == CountingTask(seed=3).split()
    assert task.split()[1] != CountingTask(seed=4).split()[1]
    eval_ids = {p["id"] for p in task.eval_prompts()}
    train_ids = {p["id"] for p in task.train_prompts()}
    assert len(train_ids) == 755 and not train_ids & eval_ids


def test_pairs_respect_the_bounds_and_responses_stay_short() -> None:
    task = CountingTask()
    for start, end in task.pairs():
        assert 5 <= end - start + 1 <= 14 and start >= 1 and end <= 99
        assert len(answer(start, end)) <= 60
    assert max(len(answer(s, e)) for s, e in task.pairs()) == 41
    with pytest.raises(ValueError, match="eval_size"):
        CountingTask(min_length=5, max_length=5, max_number=10, eval_size=6)


def test_train_prompts_are_fresh_per_iteration_and_run_out_loudly() -> None:
    pool = CountingTask().train_prompts()
    first, second = fresh_prompt_sets(pool, 2, 50, seed=0)
    assert len(first) == len(second) == 50
    assert not {p["id"] for p in first} & {p["id"] for p in second}
    assert fresh_prompt_sets(pool, 2, 50, seed=0) == [first, second], "a seed fixes every iteration's prompts"
    assert fresh_prompt_sets(pool, 2, 50, seed=1) != [first, second]
    assert [len(s) for s in fresh_prompt_sets(pool, 3)] == [251, 251, 251], "0 per iteration: an even split"
    with pytest.raises(UserError, match="cannot give 2 iterations"):
        fresh_prompt_sets(pool, 2, 400)


def test_prompt_rows_are_run_jsonl_with_the_reference_fields(tmp_path: Path) -> None:
    prompt = make_prompt(37, 52)
    assert prompt == {"id": "count-37-52", "instruction": "Count from 37 to 52.", "start": 37, "end": 52}
    path = tmp_path / "prompts.jsonl"
    assert write_jsonl(path, CountingTask().eval_prompts()[:3]) == 3
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        reference = {k: v for k, v in row.items() if k not in ("id", "instruction")}
        right = answer(reference["start"], reference["end"])
        assert CountingJudge().judge(row["instruction"], right, reference).positive


def test_is_correct_and_accuracy() -> None:
    prompt = make_prompt(37, 52)
    assert is_correct(prompt, answer(37, 52))
    assert is_correct(prompt, answer(37, 52) + "\n")
    assert not is_correct(prompt, answer(37, 51))
    assert accuracy([prompt, prompt], [answer(37, 52), "37 38"]) == 0.5
    with pytest.raises(ValueError):
        accuracy([prompt], [])


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_corruption_is_one_local_mistake_of_its_kind(kind: str) -> None:
    rng = random.Random(0)
    wording = {
        "skip": "but it should say",
        "repeat": "again, but it should say",
        "wrong": "instead of",
        "stop": "The count stops at",
    }
    for start, end in CountingTask().pairs()[::7]:
        response = corrupt(start, end, kind, rng)  # type: ignore[arg-type]
        expected = [str(n) for n in range(start, end + 1)]
        mistakes = describe_count_mistakes(response.split(), expected)
        assert len(mistakes) == 1, (response, mistakes)
        assert wording[kind] in mistakes[0][0] and not mistakes[0][0].startswith("It starts")
        assert not is_correct(make_prompt(start, end), response)


def test_wrong_number_is_a_one_digit_slip() -> None:
    rng = random.Random(1)
    for _ in range(50):
        got, right = corrupt(40, 49, "wrong", rng).split(), answer(40, 49).split()
        (k,) = [i for i, (a, b) in enumerate(zip(got, right, strict=True)) if a != b]
        assert sum(a != b for a, b in zip(got[k].rjust(2), right[k].rjust(2), strict=True)) == 1


def test_habits_are_seeded_consistent_and_predict_the_habit_free_share() -> None:
    task = CountingTask()
    habits = make_habits(task, 8, seed=2)
    assert habits == make_habits(task, 8, seed=2) and habits != make_habits(task, 8, seed=3)
    assert len(habits) == 8 and all(
        h.kind in CORRUPTIONS and bool(h.wrong) == (h.kind == "wrong") for h in habits.values()
    )
    rng = random.Random(0)
    prompts = task.eval_prompts()
    # at rate 1 a policy with the habits errs exactly on the prompts that pass a habit number
    always = [with_habits(p["start"], p["end"], habits, 1.0, rng) for p in prompts]
    assert accuracy(prompts, always) == habit_free_fraction(prompts, habits)
    assert 0.3 < habit_free_fraction(prompts, habits) < 0.8
    never = [with_habits(p["start"], p["end"], habits, 0.0, rng) for p in prompts]
    assert accuracy(prompts, never) == 1.0


def test_a_habit_is_always_the_same_mistake() -> None:
    habits = {20: Habit("wrong", "31"), 24: Habit("skip"), 27: Habit("repeat")}
    rng = random.Random(0)
    for _ in range(3):
        assert with_habits(18, 30, habits, 1.0, rng) == "18 19 20 31 22 23 24 26 27 27 28 29 30"
    judgment = CountingJudge().judge(instruction(18, 30), with_habits(18, 30, habits, 1.0, rng), None)
    assert judgment.text == (
        "After 20 it says 31 instead of 21. After 24 it says 26, but it should say 25. "
        "After 27 it says 27 again, but it should say 28."
    )
    # a skip of the last number would be an early stop, and nothing follows the last: no mistake there
    assert with_habits(23, 25, habits, 1.0, rng) == "23 24 25"
    assert with_habits(25, 27, habits, 1.0, rng) == "25 26 27"
    assert with_habits(30, 35, {32: Habit("stop")}, 1.0, rng) == "30 31 32"
    # a number skipped over never triggers its own habit
    assert with_habits(1, 6, {2: Habit("skip"), 3: Habit("stop")}, 1.0, rng) == "1 2 4 5 6"


def test_warm_start_mix_follows_the_knobs_and_judgments_agree_with_the_judge() -> None:
    task = CountingTask()
    examples = warm_start_examples(task, n_plain=400, n_judged=200, n_habits=8, corruption_rate=0.7, seed=5)
    plain = [e for e in examples if e.judgment is None]
    judged = [e for e in examples if e.judgment is not None]
    assert len(plain) == 400 and len(judged) == 200
    habits = make_habits(task, 8, seed=5)
    passing = [e for e in plain if habit_free_fraction([make_prompt(e.start, e.end)], habits) == 0.0]
    erring = sum(e.kind == "habit" for e in passing) / len(passing)
    assert 0.6 < erring < 0.95  # at least one of the habits passed fires, each with probability 0.7
    assert all(e.kind == "correct" for e in plain if e not in passing)
    judge = CountingJudge()
    for e in examples:
        verdict = judge.judge(e.instruction, e.response, {"start": e.start, "end": e.end})
        assert verdict.positive == (e.kind == "correct")
        if e.judgment is not None:
            assert e.judgment == verdict.text and not verdict.positive
    assert {e.kind for e in judged} == {*CORRUPTIONS, "habit"}
    # judged pairs that pass a habit show the habits' own mistakes (what the online loop will judge), the
    # others one random mistake: the judgment context never contradicts a habit
    for e in judged:
        passes = habit_free_fraction([make_prompt(e.start, e.end)], habits) == 0.0
        assert (e.kind == "habit") == passes
        if passes:
            assert e.response == with_habits(e.start, e.end, habits, 1.0, random.Random(0))
    mixed = warm_start_examples(task, n_plain=0, n_judged=300, habit_share=0.5, seed=5)
    passing_kinds = [
        e.kind for e in mixed if habit_free_fraction([make_prompt(e.start, e.end)], habits) == 0.0
    ]
    assert 0.3 < passing_kinds.count("habit") / len(passing_kinds) < 0.7
    train = set(task.split()[0])
    assert all((e.start, e.end) in train for e in examples)
    assert examples == warm_start_examples(task, n_plain=400, n_judged=200, corruption_rate=0.7, seed=5)
    assert examples != warm_start_examples(task, n_plain=400, n_judged=200, corruption_rate=0.7, seed=6)


def test_warm_start_knob_edges() -> None:
    task = CountingTask()
    for clean in (
        warm_start_examples(task, n_plain=100, n_judged=0, corruption_rate=0.0),
        warm_start_examples(task, n_plain=100, n_judged=0, n_habits=0),
    ):
        assert all(e.kind == "correct" and e.judgment is None for e in clean)
    only_skips = warm_start_examples(task, n_plain=0, n_judged=30, habit_share=0.0, kinds=["skip"])
    assert {e.kind for e in only_skips} == {"skip"}
    with pytest.raises(ValueError, match="corruption_rate"):
        warm_start_examples(task, corruption_rate=1.5)
    with pytest.raises(ValueError, match="habit_share"):
        warm_start_examples(task, habit_share=-0.1)
    with pytest.raises(ValueError, match="unknown corruption"):
        warm_start_examples(task, kinds=["swap"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="n_habits"):
        make_habits(task, 500)


def test_examples_format_under_both_templates() -> None:
    example = warm_start_examples(CountingTask(), n_plain=0, n_judged=1)[0]
    prompt, response = example.format("short")
    assert prompt == f"Q: {example.instruction}\nJ: {example.judgment}\nA: " and response == example.response
    prompt, _ = example.format("plain")
    assert f"### Judgment:\n{example.judgment}\n\n### Response:\n" in prompt


def test_tokenizer_corpus_covers_every_character_the_demo_can_produce() -> None:
    alphabet = set(tokenizer_corpus())
    task = CountingTask()
    seen = set()
    for e in warm_start_examples(task, n_plain=300, n_judged=300, corruption_rate=0.5):
        for name in TEMPLATES:
            prompt, response = e.format(name)
            seen |= set(prompt + response)
            judged_prompt = TEMPLATES[name].format_judged(e.instruction, "Perfect.")
            seen |= set(judged_prompt)
    guard = GamingGuard(CountingJudge())
    for bad in ("", ":", "### Response:"):
        seen |= set(guard.judge(instruction(3, 9), bad, None).text)
    assert seen <= alphabet, seen - alphabet
    assert "\n" in alphabet and " " in alphabet and "\r" not in alphabet
