"""A guard against judge gaming: degenerate responses can never be judged positive.

LLM judges can be fooled into a positive verdict by replies with no content at all (a lone ":" or a
template marker fooled GPT-4-class judges in published "null model" attacks), and an online loop trains on
whatever the judge accepts, so a policy that stumbles on such a reply would be rewarded for it. The guard
wraps any judge: when the judge says positive but the response is empty, only whitespace/punctuation,
shorter than the configured minimum, or echoes the prompt template or the instruction, the guard turns the
judgment negative with a text that says which. Negative judgments pass through untouched: the judge's own
text names the mistake better.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from cutalign.judges.base import Judge, Judgment, judge_id_of, normalize
from cutalign.templates import TEMPLATES

log = logging.getLogger(__name__)

_FIELD = re.compile(r"\{[a-z_]+\}")
_WORD = re.compile(r"\w")


def template_markers(templates: Iterable[str] | None = None) -> list[str]:
    """The fixed lines of the prompt templates ("### Response:", "Q:", "A:", the Alpaca preamble...).

    Derived from :mod:`cutalign.templates` so a template added there is guarded without further change.
    """
    texts = (
        templates
        if templates is not None
        else [t for tpl in TEMPLATES.values() for t in (tpl.plain, tpl.judged)]
    )
    markers: set[str] = set()
    for text in texts:
        for piece in _FIELD.split(text):
            markers.update(line.strip() for line in piece.splitlines() if line.strip())
    return sorted(markers)


def degenerate_reason(
    instruction: str, response: str, *, min_chars: int = 1, min_tokens: int = 1, markers: Iterable[str] = ()
) -> tuple[str, list[tuple[int, int]]] | None:
    """Why ``response`` can never be a positive, with the blamed spans; ``None`` if it is not degenerate."""
    visible = "".join(response.split())
    whole = [(0, len(response))] if response else []
    if not visible:
        return "The response is empty; it should answer the instruction.", [(0, len(response))]
    if not _WORD.search(visible):
        return "The response is only punctuation; it should answer the instruction.", whole
    if len(visible) < min_chars:
        return (
            f"The response is too short ({len(visible)} characters); it should answer the instruction.",
            whole,
        )
    tokens = [tok for tok in response.split() if _WORD.search(tok)]
    if len(tokens) < min_tokens:
        return f"The response is too short ({len(tokens)} words); it should answer the instruction.", whole
    for marker in markers:
        spans = _marker_lines(response, marker)
        if spans:
            return f"The response repeats the prompt template ({marker!r}); it should only answer.", spans
    if _squash(response) == _squash(instruction):
        return "The response only repeats the instruction; it should answer it.", whole
    return None


class GamingGuard:
    """Wraps a judge; vetoes its positive verdicts on degenerate responses (see the module docstring)."""

    def __init__(
        self,
        judge: Judge,
        *,
        min_chars: int = 1,
        min_tokens: int = 1,
        markers: Iterable[str] | None = None,
    ) -> None:
        self.inner = judge
        self.min_chars = min_chars
        self.min_tokens = min_tokens
        self.markers = list(markers) if markers is not None else template_markers()

    @property
    def id(self) -> str:
        """The wrapped judge's id: the guard only vetoes, it does not write judgments of its own kind."""
        return judge_id_of(self.inner)

    def judge(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Judgment:
        judgment = normalize(
            self.inner.judge(instruction, response, reference), judge_id=self.id, response=response
        )
        if not judgment.positive:
            return judgment
        reason = degenerate_reason(
            instruction, response, min_chars=self.min_chars, min_tokens=self.min_tokens, markers=self.markers
        )
        if reason is None:
            return judgment
        text, spans = reason
        log.info("guard vetoed a positive judgment by %s: %s", judgment.judge_id, text)
        return Judgment(text=text, positive=False, error_spans=spans, judge_id=judgment.judge_id)


def _marker_lines(response: str, marker: str) -> list[tuple[int, int]]:
    """Spans of the lines of ``response`` that begin with ``marker``."""
    spans = []
    for line in re.finditer(r"[^\n]+", response):
        stripped = line.group().lstrip()
        if stripped.startswith(marker):
            start = line.end() - len(stripped)
            spans.append((start, start + len(marker)))
    return spans


def _squash(text: str) -> str:
    """Case-, space- and punctuation-free form, to see a response that just restates the instruction."""
    return "".join(ch for ch in text.casefold() if ch.isalnum())
