"""Deterministic judges for verifiable tasks: they name the wrong part, what was expected, and where it is.

CUT on a small model only works when the judgment pins the error down (docs/method.md §8): the
judgment-conditioned model must find the blamed token far more likely than the plain model does, and no other
token. So a judgment names the position, what the response says there and what it should say; each distinct
kind of mistake has its own wording, so the judgment also tells how the response goes on after it; and the
blamed characters are reported as error spans, to measure detection against.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from cutalign.judges.base import PERFECT, Judgment

_TOKEN = re.compile(r"\S+")
_COUNT_INSTRUCTION = re.compile(r"Count from (-?\d+) to (-?\d+)")
_NUMBER = r"-?\d+"
_EXPRESSION = re.compile(rf"({_NUMBER})((?:\s*[-+*]\s*{_NUMBER})+)")
_TERM = re.compile(rf"\s*([-+*])\s*({_NUMBER})")
_STEP = re.compile(rf"({_NUMBER})\s*([-+*])\s*({_NUMBER})\s*=\s*({_NUMBER})")

Op = Literal["match", "sub", "extra", "missing"]
_INDEL, _SUB = 2, 3  # alignment costs of a missing/extra token and of a wrong one (see _align)


class CountingJudge:
    """Judges "Count from S to E." responses: the numbers S..E separated by whitespace.

    ``reference`` holds ``start`` and ``end`` (ints); without it they are read from the instruction. At most
    ``max_errors`` mistakes are described, the rest counted ("It makes 2 more mistakes."); all are blamed.

    ==================  =====================================================  ==========================
    mistake             judgment                                               blamed span
    ==================  =====================================================  ==========================
    skipped number(s)   After 15 it says 17, but it should say 16.             the 17
    repeated number     After 15 it says 15 again, but it should say 16.       the second 15
    wrong number        After 15 it says 30 instead of 16.                     the 30
    extra number        After 15 it adds 30, but it should say 16.             the 30
    wrong first number  It starts at 36, but it should start at 37.            the 36
    early stop          The count stops at 49, but it should continue to 52.   zero-width, at the end
    too many numbers    The count goes on past 52 to 54, but it should stop    the 53 54
                        at 52.
    correct             Perfect.  (positive)                                   none
    ==================  =====================================================  ==========================

    Mistakes come from a minimum edit alignment of the response's tokens to the expected ones in which ties
    blame the latest token: "15 15 16" blames the second 15 (the repeat), not the first.
    """

    id = "counting-v1"

    def __init__(self, max_errors: int = 3) -> None:
        if max_errors < 1:
            raise ValueError(f"max_errors must be at least 1, got {max_errors}")
        self.max_errors = max_errors

    def judge(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Judgment:
        start, end = counting_bounds(instruction, reference)
        expected = [str(n) for n in range(start, end + 1)]
        tokens = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(response)]
        mistakes = []
        for text, (first, last) in describe_count_mistakes([t for t, _, _ in tokens], expected):
            if first == len(tokens):  # the response ended too early: blame its end
                mistakes.append((text, (len(response), len(response))))
            else:
                mistakes.append((text, (tokens[first][1], tokens[last - 1][2])))
        return compose(mistakes, self.max_errors, self.id)


def compose(mistakes: list[tuple[str, tuple[int, int]]], max_errors: int, judge_id: str) -> Judgment:
    """One judgment from (sentence, blamed span) mistakes: "Perfect." if none, else the first ``max_errors``
    sentences and a count of the rest; every mistake's span is reported."""
    if not mistakes:
        return Judgment(PERFECT, True, [], judge_id)
    texts = [text for text, _ in mistakes[:max_errors]]
    if len(mistakes) > max_errors:
        more = len(mistakes) - max_errors
        texts.append(f"It makes {more} more mistake{'s' if more > 1 else ''}.")
    return Judgment(" ".join(texts), False, [span for _, span in mistakes], judge_id)


def counting_bounds(instruction: str, reference: dict[str, Any] | None) -> tuple[int, int]:
    """(start, end) from the reference, else from the instruction; raises if neither gives a valid range."""
    if reference and "start" in reference and "end" in reference:
        start, end = reference["start"], reference["end"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            raise ValueError(f"counting reference needs int start/end, got {start!r}, {end!r}")
    else:
        match = _COUNT_INSTRUCTION.search(instruction)
        if match is None:
            raise ValueError(
                f"cannot judge {instruction!r}: give reference fields 'start' and 'end' or an instruction "
                "'Count from S to E.'"
            )
        start, end = int(match.group(1)), int(match.group(2))
    if start > end:
        raise ValueError(f"counting goes upwards: start {start} is after end {end}")
    return start, end


def describe_count_mistakes(got: list[str], expected: list[str]) -> list[tuple[str, tuple[int, int]]]:
    """Each mistake as (sentence, blamed token range [first, last) of ``got``); empty if ``got`` is right.

    A range starting at ``len(got)`` blames the end of the response (it stopped too early).
    """
    if not got:
        return [(f"The response is empty, but it should count from {expected[0]} to {expected[-1]}.", (0, 1))]
    ops = _align(got, expected)
    mistakes = []
    k = 0
    while k < len(ops):
        kind, i, j = ops[k]
        if kind == "match":
            k += 1
            continue
        run_end = k
        while run_end < len(ops) and ops[run_end][0] == kind:
            run_end += 1
        run = ops[k:run_end]
        n_got = sum(1 for op in run if op[0] != "missing")
        mistakes.append((_sentence(kind, got, expected, i, j, n_got), (i, i + max(n_got, 1))))
        k = run_end
    return mistakes


def _sentence(kind: Op, got: list[str], expected: list[str], i: int, j: int, n_got: int) -> str:
    """Words for one run of same-kind edits starting at got[i] / expected[j]."""
    if kind == "missing" and i == len(got):
        return f"The count stops at {_show(got[-1])}, but it should continue to {expected[-1]}."
    if i == 0:
        return f"It starts at {_show(got[0])}, but it should start at {expected[0]}."
    prev = _show(got[i - 1])
    if kind == "extra":
        if all(tok == got[i - 1] for tok in got[i : i + n_got]):
            tail = (
                f"it should say {expected[j]}" if j < len(expected) else f"it should stop at {expected[-1]}"
            )
            return f"After {prev} it says {prev} again, but {tail}."
        if j == len(expected):
            last = _show(got[i + n_got - 1])
            return f"The count goes on past {expected[-1]} to {last}, but it should stop at {expected[-1]}."
        return f"After {prev} it adds {_show(got[i])}, but it should say {expected[j]}."
    if kind == "sub":
        wrong = " ".join(_show(tok) for tok in got[i : i + n_got])
        return f"After {prev} it says {wrong} instead of {' '.join(expected[j : j + n_got])}."
    return f"After {prev} it says {_show(got[i])}, but it should say {expected[j]}."


def _show(token: str) -> str:
    return token if re.fullmatch(r"-?\d+", token) else repr(token)


def _align(got: list[str], expected: list[str]) -> list[tuple[Op, int, int]]:
    """Minimum-cost alignment as (op, index in got, index in expected) steps, matches preferred early.

    ``cost[i][j]`` is the cost of aligning the suffixes got[i:] and expected[j:]; walking forward and taking a
    match whenever it is optimal pushes every edit as late as possible, which is where the mistake is made. A
    substitution costs more than one insertion or deletion but less than two, so "15 30 17" is one wrong
    number while "15 17 17 18" reads as a skip then a repeat, not as two wrong numbers.
    """
    n, m = len(got), len(expected)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n, -1, -1):
        for j in range(m, -1, -1):
            if i == n or j == m:
                cost[i][j] = _INDEL * ((n - i) + (m - j))
                continue
            diagonal = cost[i + 1][j + 1] + (0 if got[i] == expected[j] else _SUB)
            cost[i][j] = min(diagonal, cost[i + 1][j] + _INDEL, cost[i][j + 1] + _INDEL)
    ops: list[tuple[Op, int, int]] = []
    i = j = 0
    while i < n or j < m:
        if i < n and j < m and got[i] == expected[j] and cost[i][j] == cost[i + 1][j + 1]:
            ops.append(("match", i, j))
            i, j = i + 1, j + 1
        elif i < n and j < m and cost[i][j] == cost[i + 1][j + 1] + _SUB:
            ops.append(("sub", i, j))
            i, j = i + 1, j + 1
        elif j < m and cost[i][j] == cost[i][j + 1] + _INDEL:
            ops.append(("missing", i, j))
            j += 1
        else:
            ops.append(("extra", i, j))
            i += 1
    return ops


class ArithmeticJudge:
    """Judges left-to-right arithmetic with the steps written out, one ``a op b = c`` per step.

    "Compute 12 + 7 - 5 from left to right." expects "12 + 7 = 19, 19 - 5 = 14" (any separators).
    ``reference`` may hold ``expression`` ("12 + 7 - 5"); without it the expression is read from the
    instruction. Each step is checked against the response's own previous result, so one slip is one mistake,
    not a cascade. Text outside the steps is a mistake too: a wrong "so the answer is 15" must not slip
    through.
    """

    id = "arithmetic-v1"

    def __init__(self, max_errors: int = 3) -> None:
        if max_errors < 1:
            raise ValueError(f"max_errors must be at least 1, got {max_errors}")
        self.max_errors = max_errors

    def judge(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Judgment:
        first, terms = arithmetic_terms(instruction, reference)
        steps = list(_STEP.finditer(response))
        end = (len(response), len(response))
        if not steps:
            op, b = terms[0]
            first_step = f"{first} {op} {b} = {_apply(first, op, b)}"
            text = f"The response shows no steps; it should begin with {first_step}."
            return Judgment(text, False, [(0, len(response))] if response.strip() else [end], self.id)
        mistakes = []
        value = first
        for k, (op, b) in enumerate(terms):
            if k == len(steps):
                mistakes.append((f"It stops after step {k}, but {value} {op} {b} is still to compute.", end))
                break
            a_s, op_s, b_s, c_s = steps[k].groups()
            step = steps[k]
            if (int(a_s), op_s, int(b_s)) != (value, op, b):
                text = f"Step {k + 1} should compute {value} {op} {b}, but it computes {a_s} {op_s} {b_s}."
                mistakes.append((text, (step.start(1), step.end(3))))
            elif int(c_s) != _apply(value, op, b):
                text = f"In step {k + 1}, {value} {op} {b} is {_apply(value, op, b)}, not {c_s}."
                mistakes.append((text, step.span(4)))
            value = int(c_s)
        if len(steps) > len(terms):
            extra = steps[len(terms)]
            text = f"It goes on with {extra.group()}, but it should stop at {value}."
            mistakes.append((text, (extra.start(), steps[-1].end())))
        for start, stop in _outside_steps(response, steps):
            text = (
                f"It has text outside the steps ({response[start:stop]!r}); it should contain only the steps."
            )
            mistakes.append((text, (start, stop)))
        return compose(sorted(mistakes, key=lambda mistake: mistake[1]), self.max_errors, self.id)


def arithmetic_terms(instruction: str, reference: dict[str, Any] | None) -> tuple[int, list[tuple[str, int]]]:
    """First operand and (operator, operand) terms, from ``reference["expression"]`` or the instruction."""
    source = reference.get("expression") if reference else None
    if source is not None and not isinstance(source, str):
        raise ValueError(f"arithmetic reference 'expression' must be a string, got {source!r}")
    match = _EXPRESSION.search(source if source is not None else instruction)
    if match is None:
        raise ValueError(
            f"cannot judge {instruction!r}: give a reference field 'expression' like '12 + 7 - 5' or put the "
            "expression in the instruction"
        )
    terms = [(op, int(b)) for op, b in _TERM.findall(match.group(2))]
    return int(match.group(1)), terms


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _outside_steps(response: str, steps: list[re.Match[str]]) -> list[tuple[int, int]]:
    """Spans between the steps holding more than separators (whitespace, commas, semicolons, full stops)."""
    bounds = [0, *(x for step in steps for x in step.span()), len(response)]
    spans = []
    for start, stop in zip(bounds[::2], bounds[1::2], strict=True):
        gap = response[start:stop]
        if gap.strip(" \t\n,;."):
            lead = len(gap) - len(gap.lstrip(" \t\n,;."))
            trail = len(gap) - len(gap.rstrip(" \t\n,;."))
            spans.append((start + lead, stop - trail))
    return spans
