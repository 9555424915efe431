"""The demo task: "Count from 37 to 52." -> "37 38 39 ... 52", judged by :class:`CountingJudge`.

Why counting (docs/method.md §8): a tiny model's responses to it are *mostly right with local errors* (a
skipped, repeated or wrong number, an early stop), so a judgment can name the one wrong token and CUT's
detection can be checked against its known position. Responses stay short (5-14 numbers below 100, at most
41 characters), which a character-level model of about a million parameters learns on two CPU cores.

Prompts are dicts ``{"id", "instruction", "start", "end"}``: the JSONL that ``cutalign run --prompts FILE``
takes, whose extra fields (``start``/``end``) reach the judge as ``reference``. The held-out eval set is
disjoint from the training prompts by (start, end) pair, and everything is a function of the seed.

Warm start: a from-scratch model must first learn the task *and* to read judgments, or CUT's detection
fails (docs/method.md §8). Greedy decoding follows the most likely token, so errors sprinkled at random places
in the training data do not make a trained model err (measured: 30% of examples corrupted at random places,
99% eval accuracy). The policy's mistakes must be *habits*: :func:`make_habits` picks ``n_habits`` numbers
(seeded), each with a fixed mistake ("after 47, say 49"), and :func:`warm_start_examples` mixes

* ``n_plain`` plain-template examples (instruction -> response) in which every habit number the count passes
  triggers its mistake with probability ``corruption_rate``. Above 0.5 the warm-started policy makes the
  mistake under greedy decoding, so its accuracy is the share of prompts that pass no habit number
  (:func:`habit_free_fraction`; 8 habits: 0.59 of the eval set). Keep the rate well below 1 (default 0.7):
  detection flags a token when the judgment *raises* its probability, and the ratio is at most 1 / p_plain;
* ``n_judged`` judgment-template examples with the judgment :class:`CountingJudge` writes for the response:
  the habits' own mistakes where the count passes a habit number, one mistake at a random place elsewhere.
  The judgment context must never contradict a habit, or the judgment *lowers* the habit token's
  probability and CUT's detection cannot see it.

Measured (4-layer d=128 init-model Llama, short template, 2000 plain + 1000 judged examples, 6 epochs of
AdamW at 2e-3, greedy decoding): eval accuracy 0.60 against 0.59 predicted; on the policy's own wrong eval
responses, at the first character that differs from the right answer, p_plain 0.70 -> p_judged 0.94 (median)
and 51 of 60 such tokens pass λ = 1.1, while 1 of 650 correct tokens before the error does. With the habits'
mistakes in only half of the judged examples that pass a habit (and 3000 plain), 8 of 61 pass (p_judged 0.57);
with none, 0 of 60 (p_judged 0.10).

CUT's job on this demo is then to unlearn the habits from the judgments of the policy's own responses.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from cutalign.cut.examples import CutExample
from cutalign.iteration.task import Decoding
from cutalign.judges.programmatic import CountingJudge
from cutalign.templates import TEMPLATES, get_template

Corruption = Literal["skip", "repeat", "wrong", "stop"]
CORRUPTIONS: tuple[Corruption, ...] = ("skip", "repeat", "wrong", "stop")

_JUDGE = CountingJudge()


def instruction(start: int, end: int) -> str:
    return f"Count from {start} to {end}."


def answer(start: int, end: int) -> str:
    """The one correct response."""
    return " ".join(str(n) for n in range(start, end + 1))


def make_prompt(start: int, end: int) -> dict[str, Any]:
    """A prompt row; its id is unique per (start, end), the unit that train and eval never share."""
    return {"id": f"count-{start}-{end}", "instruction": instruction(start, end), "start": start, "end": end}


def is_correct(prompt: Mapping[str, Any], response: str) -> bool:
    """Whether the counting judge accepts ``response``: one definition of correct, shared with judging."""
    return _JUDGE.judge(
        prompt["instruction"], response, {"start": prompt["start"], "end": prompt["end"]}
    ).positive


def accuracy(prompts: Sequence[Mapping[str, Any]], responses: Sequence[str]) -> float:
    """Fraction of responses that are correct for their prompts."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need equally many prompts and responses, got {len(prompts)} and {len(responses)}")
    return sum(is_correct(p, r) for p, r in zip(prompts, responses, strict=True)) / len(prompts)


@dataclass(frozen=True)
class CountingTask:
    """The space of counting prompts and its seeded train/eval split.

    Every (start, end) with ``min_length`` <= end - start + 1 <= ``max_length`` and ``min_number`` <= start,
    end <= ``max_number`` is a prompt; a seeded shuffle puts ``eval_size`` of them in the eval split and the
    rest in train. With the defaults: 905 pairs, 150 eval, 755 train.
    """

    seed: int = 0
    min_length: int = 5
    max_length: int = 14
    min_number: int = 1
    max_number: int = 99
    eval_size: int = 150

    def __post_init__(self) -> None:
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {self.min_length}, {self.max_length}")
        if self.eval_size >= len(self.pairs()):
            raise ValueError(
                f"eval_size {self.eval_size} leaves no training pairs out of {len(self.pairs())}; "
                "lower it or widen the number range"
            )

    def pairs(self) -> list[tuple[int, int]]:
        """All (start, end) pairs, in a fixed order."""
        return [
            (start, start + length - 1)
            for length in range(self.min_length, self.max_length + 1)
            for start in range(self.min_number, self.max_number - length + 2)
        ]

    def split(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(train pairs, eval pairs): disjoint, each in a seeded order."""
        pairs = self.pairs()
        random.Random(self.seed).shuffle(pairs)
        return pairs[self.eval_size :], pairs[: self.eval_size]

    def eval_prompts(self) -> list[dict[str, Any]]:
        """The held-out prompts, the same for every iteration."""
        return [make_prompt(s, e) for s, e in self.split()[1]]

    def train_prompts(self) -> list[dict[str, Any]]:
        """Every training prompt, in the split's seeded order: the pool of fresh per-iteration prompts."""
        return [make_prompt(s, e) for s, e in self.split()[0]]

    # the online loop's view of the task (cutalign.iteration.task.Task); properties, so that the base model's
    # fingerprint (a hash of this dataclass's fields) does not depend on how the task is decoded or judged
    @property
    def name(self) -> str:
        return "counting"

    @property
    def judge(self) -> str:
        return "counting"

    @property
    def judge_options(self) -> dict[str, Any]:
        return {}

    @property
    def decoding(self) -> Decoding:
        """The compact template and a length limit above the longest answer (41 characters)."""
        return Decoding(template="short", max_new_tokens=48)

    def synthetic_negatives(self, prompts: Sequence[Mapping[str, Any]], seed: int = 0) -> list[CutExample]:
        """One random local error per prompt, judged: the warm start's kind of judged example, held out."""
        rng = random.Random(seed)
        examples = []
        for p in prompts:
            response = corrupt(p["start"], p["end"], rng.choice(CORRUPTIONS), rng)
            verdict = _JUDGE.judge(p["instruction"], response, {"start": p["start"], "end": p["end"]})
            examples.append(
                CutExample(
                    str(p["id"]),
                    p["instruction"],
                    "",
                    response,
                    verdict.text,
                    False,
                    tuple(verdict.error_spans),
                )
            )
        return examples


def corrupt(start: int, end: int, kind: Corruption, rng: random.Random) -> str:
    """The correct response with one local error of ``kind`` at a random place.

    The place is chosen so that the counting judge reports exactly one mistake of that kind: skips and
    wrong numbers never touch the first number ("It starts at" is a different mistake), skips never the
    last (that would be an early stop), early stops keep at least one number.
    """
    seq = [str(n) for n in range(start, end + 1)]
    if len(seq) < 3:
        raise ValueError(f"corruptions need at least 3 numbers, got {start}..{end}")
    last = len(seq) - 3 if kind == "skip" else len(seq) - 2
    return " ".join(_corrupt_after(seq, rng.randint(0, last), kind, rng))


class Habit(NamedTuple):
    """A mistake the warm-started policy makes after a given number; always the same one, or greedy decoding
    would not repeat it ("wrong" says the same wrong number every time)."""

    kind: Corruption
    wrong: str = ""  # for kind "wrong": the number said instead of the next one


def make_habits(
    task: CountingTask, n_habits: int, kinds: Sequence[Corruption] = CORRUPTIONS, seed: int = 0
) -> dict[int, Habit]:
    """``n_habits`` numbers after which the warm-started policy errs, each with its habit (seeded)."""
    _check_kinds(kinds)
    numbers = range(task.min_number, task.max_number)
    if not 0 <= n_habits <= len(numbers):
        raise ValueError(f"n_habits must be within [0, {len(numbers)}], got {n_habits}")
    rng = random.Random(seed)
    habits = {}
    for n in sorted(rng.sample(numbers, n_habits)):
        kind = rng.choice(list(kinds))
        wrong = _digit_slip(str(n + 1), {str(n), str(n + 2)}, rng) if kind == "wrong" else ""
        habits[n] = Habit(kind, wrong)
    return habits


def with_habits(start: int, end: int, habits: Mapping[int, Habit], rate: float, rng: random.Random) -> str:
    """The response of a policy with ``habits``: counting on from what it said, after each habit number it
    says makes that habit's mistake with probability ``rate``.

    A habit applies only where its mistake reads as that kind: a skip needs a number after the skipped one
    (skipping the last one is an early stop), and nothing comes after the last number.
    """
    said = []
    n = start
    while n <= end:
        said.append(str(n))
        habit = habits.get(n)
        if n == end or habit is None or (habit.kind == "skip" and n + 2 > end) or rng.random() >= rate:
            n += 1
        elif habit.kind == "stop":
            break
        elif habit.kind == "repeat":
            said.append(str(n))
            n += 1
        elif habit.kind == "skip":
            n += 2
        else:  # wrong: the habit's wrong number instead of the next, then on as if it had been right
            said.append(habit.wrong)
            n += 2
    return " ".join(said)


def habit_free_fraction(prompts: Sequence[Mapping[str, Any]], habits: Mapping[int, Habit]) -> float:
    """Share of prompts whose count passes no habit number: the expected accuracy of a policy that has the
    habits (corruption_rate > 0.5, trained to convergence) and no other fault."""
    free = [
        p
        for p in prompts
        if not any(
            n in habits and not (habits[n].kind == "skip" and n > p["end"] - 2)
            for n in range(p["start"], p["end"])
        )
    ]
    return len(free) / len(prompts)


def _corrupt_after(seq: list[str], i: int, kind: Corruption, rng: random.Random) -> list[str]:
    """``seq`` with a mistake right after its ``i``-th number."""
    if kind == "skip":
        return seq[: i + 1] + seq[i + 2 :]
    if kind == "repeat":
        return seq[: i + 1] + [seq[i]] + seq[i + 1 :]
    if kind == "wrong":
        return seq[: i + 1] + [_digit_slip(seq[i + 1], set(seq[i : i + 3]), rng)] + seq[i + 2 :]
    if kind == "stop":
        return seq[: i + 1]
    raise ValueError(f"unknown corruption {kind!r}; choose from {CORRUPTIONS}")


def _check_kinds(kinds: Sequence[str]) -> None:
    if not kinds:
        raise ValueError(f"need at least one corruption kind from {CORRUPTIONS}")
    if unknown := set(kinds) - set(CORRUPTIONS):
        raise ValueError(f"unknown corruption kinds {sorted(unknown)}; choose from {CORRUPTIONS}")


def _digit_slip(number: str, forbidden: set[str], rng: random.Random) -> str:
    """``number`` with one digit changed (the typical slip of a character-level model), avoiding its
    neighbours, which would read as a skip or a repeat rather than a wrong number."""
    options = [
        number[:k] + d + number[k + 1 :]
        for k in range(len(number))
        for d in string.digits
        if not (k == 0 and d == "0" and len(number) > 1)
    ]
    return rng.choice(sorted(set(options) - forbidden - {number}))


@dataclass(frozen=True)
class WarmStartExample:
    """One supervised example: judgment ``None`` means the plain template, else the judgment template."""

    instruction: str
    response: str
    judgment: str | None
    kind: str  # "correct", "habit" (plain, with habit mistakes) or the Corruption of a judged example
    start: int
    end: int

    def format(self, template: str = "plain") -> tuple[str, str]:
        """(prompt, response) under the named template of :mod:`cutalign.templates`."""
        tpl = get_template(template)
        if self.judgment is None:
            return tpl.format_plain(self.instruction), self.response
        return tpl.format_judged(self.instruction, self.judgment), self.response


def warm_start_examples(
    task: CountingTask,
    *,
    n_plain: int = 2000,
    n_judged: int = 1000,
    n_habits: int = 8,
    corruption_rate: float = 0.7,
    habit_share: float = 1.0,
    kinds: Sequence[Corruption] = CORRUPTIONS,
    seed: int = 0,
) -> list[WarmStartExample]:
    """Seeded, shuffled warm-start data from the task's *training* pairs (never eval); see the module doc.

    ``n_plain`` plain-template examples carrying the mistakes of ``make_habits(task, n_habits, kinds, seed)``,
    each with probability ``corruption_rate`` (0 habits or rate 0: a clean SFT set); ``n_judged``
    judgment-template examples with the counting judge's judgment: where the count passes a habit number, with
    probability ``habit_share`` the habits' mistakes, else (and elsewhere) one mistake of a kind from
    ``kinds`` at a random place. Keep ``habit_share`` at 1: below it the judgment context contradicts the
    habits, the judgment *lowers* the habit token's probability, and CUT's detection cannot see it.
    """
    for name, value in (("corruption_rate", corruption_rate), ("habit_share", habit_share)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {value}")
    habits = make_habits(task, n_habits, kinds, seed)
    rng = random.Random(seed)
    train = task.split()[0]
    examples = []
    for k in range(n_plain + n_judged):
        start, end = rng.choice(train)
        judged = k >= n_plain
        kind = "correct"
        if not judged:
            response = with_habits(start, end, habits, corruption_rate, rng)
        elif habit_free_fraction([make_prompt(start, end)], habits) == 0.0 and rng.random() < habit_share:
            response = with_habits(start, end, habits, 1.0, rng)
        else:
            corruption = rng.choice(list(kinds))
            kind, response = corruption, corrupt(start, end, corruption, rng)
        verdict = _JUDGE.judge(instruction(start, end), response, {"start": start, "end": end})
        if kind == "correct" and not verdict.positive:
            kind = "habit"
        judgment = verdict.text if judged else None
        examples.append(WarmStartExample(instruction(start, end), response, judgment, kind, start, end))
    rng.shuffle(examples)
    return examples


def tokenizer_corpus(task: CountingTask | None = None) -> str:
    """Text whose characters are every character the demo can put in a prompt, judgment or response.

    A character-level tokenizer's vocabulary is exactly this text's character set: both templates of
    :mod:`cutalign.templates` (plain and judged) with each kind of counting judgment, and all printable ASCII,
    so that no prompt, judgment (the gaming guard's included) or user text of plain ASCII becomes ``[UNK]``.
    """
    task = task or CountingTask()
    start, end = task.split()[0][0]
    rng = random.Random(0)
    responses = [answer(start, end)] + [corrupt(start, end, kind, rng) for kind in CORRUPTIONS]
    lines = []
    for response in responses:
        judgment = _JUDGE.judge(instruction(start, end), response, {"start": start, "end": end}).text
        for tpl in TEMPLATES.values():
            lines.append(tpl.format_plain(instruction(start, end)) + response)
            lines.append(tpl.format_judged(instruction(start, end), judgment) + response)
    printable = "".join(ch for ch in string.printable if ch not in "\r\x0b\x0c")
    return "\n".join([*lines, printable]) + "\n"


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any] | WarmStartExample]) -> int:
    """Write rows (dicts or warm-start examples) as JSON lines; returns how many."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(asdict(row) if isinstance(row, WarmStartExample) else dict(row)) + "\n")
            count += 1
    return count
