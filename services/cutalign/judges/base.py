"""The judge plug-in contract: what any judge, ours or a user's, must provide.

A judge is **any class** with a method

    judge(self, instruction: str, response: str, reference: dict | None) -> Judgment | tuple[str, bool]

* ``instruction`` is the prompt's instruction (an Alpaca ``input``, if any, already appended after a newline);
* ``response`` is the policy's response, exactly as generated;
* ``reference`` is the prompt's extra fields (every JSONL key other than ``id``/``instruction``/``input``,
  or the ``reference_json`` of a ``Prompt`` message), or ``None`` when the prompt has none.

It returns either a :class:`Judgment` or a ``(text, positive)`` tuple. ``positive`` means the response needs
no change (docs/method.md §1); a negative judgment must say in words what is wrong, because CUT conditions the
response on that text (Align-N) and then blames the tokens whose probability the text raises. Judges may
raise on a failed call (a network error, an unusable reference): the caller retries and dead-letters, and a
failure never becomes a training example (the reference data's ``$ERROR$`` judgments are the defect this
avoids).

A judge may set ``id`` (a class attribute or property) to name itself on every judgment; the default is the
class's import path. Its constructor takes keyword options only (``JudgeSettings.options_json``). The judge
service calls ``judge`` from several threads at once (``JudgeSettings.concurrency``), so it must be
thread-safe; a deterministic judge is easiest to test and to trust. Nothing else is required: a user's
judge needs no import from this package and is found by dotted path ``package.module:Class`` or by a
``cutalign.judges`` entry point in the user's own package metadata (see :mod:`cutalign.judges.loader`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from cutalign.checks import has_visible_text, span_problem

PERFECT = "Perfect."
"""A positive judgment's text: what the reference judge was told to answer for a flawless response."""


@dataclass(frozen=True)
class Judgment:
    """One judgment of one response (the in-process result; the wire format is ``cutalign.v1.Judgment``).

    ``error_spans`` are spans ``[start, end)`` of the response, in Unicode code points, that the judge blames,
    so detection can be measured against known error positions (docs/method.md §8). A zero-width span at
    ``len(response)`` blames the end of the response itself, i.e. the model stopped where it should have gone
    on (the end-of-sequence token is the wrong one, and it has no characters); anywhere else a span is
    non-empty. The rule is :func:`cutalign.checks.span_problem`, shared with the target builder.
    ``correction`` is a corrected response where the judge knows one (a verifier does): the judgment-reading
    warm start (``cutalign.reading``) trains on it. It stays in-process; a judgment on the bus carries text,
    polarity and spans.
    """

    text: str
    positive: bool
    error_spans: list[tuple[int, int]] = field(default_factory=list)
    judge_id: str = ""
    correction: str | None = None  # a corrected response, where the judge knows one (a verifier does)


@runtime_checkable
class Judge(Protocol):
    """Structural type of a judge; implementations need not inherit from it."""

    def judge(
        self, instruction: str, response: str, reference: dict[str, Any] | None
    ) -> Judgment | tuple[str, bool]: ...


class InvalidJudgment(ValueError):
    """A judge returned something that cannot become a training example."""


def judge_id_of(judge: object) -> str:
    """The judge's own ``id`` if it sets one, else its class's import path (``module:QualName``)."""
    own = getattr(judge, "id", None)
    if own:
        return str(own)
    cls = type(judge)
    return f"{cls.__module__}:{cls.__qualname__}"


def normalize(
    result: Judgment | tuple[str, bool], *, judge_id: str = "", response: str | None = None
) -> Judgment:
    """Turn a judge's return value into a checked :class:`Judgment`.

    ``judge_id`` fills in a missing id. With ``response`` given, spans are checked against it by the rule the
    target builder applies (:func:`cutalign.checks.span_problem`), so a judgment the judge publishes is never
    refused downstream. Raises :class:`InvalidJudgment` for anything that would poison training: a non-bool
    polarity (``"no"`` is truthy), a non-string text, a negative judgment with no visible text (Align-N would
    condition on nothing), a span that is not a pair of ints (a float is refused, not truncated), reversed,
    empty in the middle or outside the response.
    """
    if isinstance(result, Judgment):
        judgment = result
    elif isinstance(result, tuple) and len(result) == 2:
        text, positive = result
        judgment = Judgment(text=text, positive=positive)
    else:
        raise InvalidJudgment(
            "a judge must return a Judgment or a (text, positive) tuple, "
            f"got {type(result).__name__}: {result!r}"
        )
    if not isinstance(judgment.text, str):
        raise InvalidJudgment(f"judgment text must be a str, got {type(judgment.text).__name__}")
    if not isinstance(judgment.positive, bool):
        raise InvalidJudgment(
            f"judgment polarity must be a bool, got {type(judgment.positive).__name__} {judgment.positive!r}"
        )
    if not judgment.positive and not has_visible_text(judgment.text):
        raise InvalidJudgment("a negative judgment needs text that says what is wrong; it was empty")
    spans = [_pair(span) for span in judgment.error_spans]
    problem = span_problem(spans, response) if response is not None else None
    if problem is not None:
        raise InvalidJudgment(problem)
    if judgment.correction is not None and not isinstance(judgment.correction, str):
        raise InvalidJudgment(f"a correction must be a str, got {type(judgment.correction).__name__}")
    return Judgment(
        text=judgment.text,
        positive=judgment.positive,
        error_spans=spans,
        judge_id=judgment.judge_id or judge_id,
        correction=judgment.correction or None,
    )


def run_judge(judge: Judge, instruction: str, response: str, reference: dict[str, Any] | None) -> Judgment:
    """Call ``judge`` and return its checked, id-stamped judgment (what services should call)."""
    result = judge.judge(instruction, response, reference)
    return normalize(result, judge_id=judge_id_of(judge), response=response)


def _pair(span: object) -> tuple[int, int]:
    """A span as a ``(start, end)`` tuple of ints, exactly: ``1.0`` or ``True`` is refused, not converted."""
    if isinstance(span, list | tuple) and len(span) == 2 and all(type(v) is int for v in span):
        return (span[0], span[1])
    raise InvalidJudgment(f"an error span must be a pair of ints (start, end) in code points, got {span!r}")
