"""The content rules every producer and consumer of the wire format applies — defined once, here.

A rule that two services apply differently loses data: the judge once accepted a zero-width span in the middle
of a response that the builder then refused, so the judgment was produced, then dead-lettered. So the judge,
the generator, the feedback API and the target builder all call these functions:

* **ids** (prompt, sample, event ids) are printable (no control, format or separator characters, which would
  make log lines, S3 keys and dead-letter records lie about what they hold) and at most ``MAX_ID_CHARS``
  characters;
* **text** counts as present only if it has a *visible* character: whitespace and invisible format
  characters (zero-width space U+200B, joiners, BOM, ...) alone are empty;
* **spans** ``[start, end)`` index the response in **Unicode code points** (Python ``str`` indices, not UTF-8
  bytes or tokens); each is a non-empty range inside it, or the empty span at its very end (how a judge blames
  the end of the response: the token at fault is end-of-sequence). Bounds must be ints: a float is refused,
  never truncated;
* **sizes**: each text field of a message is at most ``KafkaSettings.max_text_bytes`` UTF-8 bytes, one limit
  for every producer (feedback, generator, judge) and for the builder that checks it again.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

MAX_ID_CHARS = 256
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Zs", "Zl", "Zp"}


def id_problem(value: str, what: str = "id") -> str | None:
    """Why ``value`` cannot be an id (empty, too long, not printable), or None."""
    if not value:
        return f"{what} is empty"
    if len(value) > MAX_ID_CHARS:
        return f"{what} is {len(value)} characters long; the limit is {MAX_ID_CHARS}"
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        return f"{what} holds the non-printable character U+{ord(bad):04X} ({unicodedata.name(bad, '?')})"
    return None


def has_visible_text(text: str) -> bool:
    """True if ``text`` holds a character that is neither whitespace nor invisible (e.g. U+200B)."""
    if text.isascii() and text.isprintable():  # the common case, in C: only spaces are invisible there
        return not text.isspace() and bool(text)
    return any(not c.isspace() and unicodedata.category(c) not in _INVISIBLE_CATEGORIES for c in text)


def span_problem(spans: Iterable[Sequence[object]], response: str) -> str | None:
    """Why ``spans`` cannot blame ``response`` (see the module docstring for the rule), or None."""
    n = len(response)
    for span in spans:
        if len(span) != 2 or not all(type(v) is int for v in span):
            return f"an error span must be a pair of ints [start, end) in code points, got {list(span)!r}"
        start, end = span
        assert isinstance(start, int) and isinstance(end, int)
        if start == end != n:
            return f"error span [{start}, {end}) is empty; an empty span may only blame the end, [{n}, {n})"
        if not (0 <= start < end <= n or start == end == n):
            return f"error span [{start}, {end}) is outside the response ({n} code points)"
    return None


def oversize_field(fields: Iterable[tuple[str, str]], max_text_bytes: int) -> str | None:
    """The first ``(name, text)`` field over ``max_text_bytes`` UTF-8 bytes, described, or None."""
    for name, text in fields:
        if len(text) * 4 <= max_text_bytes:  # cannot be over: skip the encoding (the common case)
            continue
        size = len(text.encode("utf-8"))
        if size > max_text_bytes:
            return f"{name} is {size} bytes, over kafka.max_text_bytes={max_text_bytes}"
    return None
