"""An LLM as the judge: the paper's judging prompt, against any TGI / OpenAI-compatible endpoint.

The default prompt is the one the paper gave GPT-4 (method page §6), verbatim: the system part

    Below is an instruction that describes a task and a potential response. Evaluate the response and provide
    valuable judgments to the response. If the response is perfect, please only reply with 'perfect'.
    Otherwise, please indicate precisely what mistakes it has.

then the user part ``### Instruction: {instruction}\\n\\n### Response: {response}``. A judgment is
positive iff it begins with "perfect", case-insensitively (leading spaces, quotes and markdown emphasis
ignored) — the rule the paper's data was labelled with. Both prompt parts and the rule (a regex) are options;
the user template may also use ``{reference}`` (the prompt's reference fields as JSON).

Transport is ``cutalign.policy.client.PolicyClient``: retries on 429/5xx/timeouts with jittered backoff, a
bound on requests in flight, greedy decoding. That client sends one prompt — one ``user`` message on the
OpenAI route, the raw text on TGI's — so the two parts travel as ``{system}\\n\\n{user}`` in that one prompt.
The endpoint is configured like the policy's, under ``CUTALIGN_JUDGE_LLM_*`` (``URL``, ``BACKEND``,
``MODEL_NAME``, ``API_TOKEN`` from a Secret, ``TIMEOUT_S``, ``MAX_RETRIES``, ``MAX_IN_FLIGHT``); non-secret
ones may also be given as options (``judge.options_json``), which win.

When a negative judgment quotes the response ("The response says \\"17\\" but..."), the quoted text is located
in the response and reported as an error span, so detection can be checked against what the judge blamed. A
quote found at several places is not guessed at; one not found is ignored (judges also quote the instruction).

Deployed through ``judge_from_settings`` (the judge service, the KServe judge), the judge is wrapped in the
gaming guard unless ``judge.guard`` is off: an LLM judge is exactly what null-model attacks fool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import string
from typing import Any

from cutalign.config import PolicySettings
from cutalign.judges.base import InvalidJudgment, Judgment
from cutalign.policy.client import PolicyClient

log = logging.getLogger(__name__)

PAPER_SYSTEM_PROMPT = (
    "Below is an instruction that describes a task and a potential response. Evaluate the response and "
    "provide valuable judgments to the response. If the response is perfect, please only reply with "
    "'perfect'. Otherwise, please indicate precisely what mistakes it has."
)
PAPER_USER_TEMPLATE = "### Instruction: {instruction}\n\n### Response: {response}"
PERFECT_PATTERN = r"^[\s\"'*_`]*perfect"
ENV_PREFIX = "CUTALIGN_JUDGE_LLM_"
TEMPLATE_FIELDS = {"instruction", "response", "reference"}

# A quoted passage: "...", “...”, `...`, ‘...’, or '...' not inside a word (so "it's" is no quote).
_QUOTED = re.compile(r"\"([^\"\n]+)\"|“([^”\n]+)”|`([^`\n]+)`|‘([^’\n]+)’|(?<!\w)'([^'\n]+)'(?!\w)")
_EDGE_PUNCTUATION = " .,;:!?"


def quoted_spans(judgment: str, response: str) -> list[tuple[int, int]]:
    """Spans of ``response`` that ``judgment`` quotes, where the quote occurs exactly once in the response.

    A quote is matched as whole words, as written, then case-insensitively, then without edge punctuation
    ("5." for "5").
    """
    spans: set[tuple[int, int]] = set()
    for match in _QUOTED.finditer(judgment):
        quote = next(group for group in match.groups() if group is not None)
        for candidate in dict.fromkeys((quote, quote.strip(_EDGE_PUNCTUATION))):
            found = _unique_occurrence(candidate, response)
            if found is not None:
                spans.add(found)
                break
    return sorted(spans)


def _unique_occurrence(text: str, response: str) -> tuple[int, int] | None:
    """The one place ``text`` occurs in ``response`` as whole words ("Paris" is not in "Pariss")."""
    if not text.strip():
        return None
    start = r"(?<!\w)" if re.match(r"\w", text) else ""
    end = r"(?!\w)" if re.search(r"\w$", text) else ""
    pattern = start + re.escape(text) + end
    for flags in (0, re.IGNORECASE):
        hits = [m.span() for m in re.finditer(pattern, response, flags)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            return None  # ambiguous: do not guess which one the judge meant
    return None


def check_template(template: str) -> None:
    """The user template must use {instruction} and {response}, and nothing but the known fields."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = fields - TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"user_template uses unknown fields {sorted(unknown)}; it may use {sorted(TEMPLATE_FIELDS)} "
            "(double other braces: '{{' and '}}')"
        )
    missing = {"instruction", "response"} - fields
    if missing:
        raise ValueError(f"user_template must contain {sorted(missing)}: the judge cannot judge without them")


class LLMJudge:
    """Judges with an LLM endpoint; the module docstring has the prompt, the rule and the configuration."""

    def __init__(
        self,
        *,
        url: str | None = None,
        backend: str | None = None,
        model_name: str | None = None,
        timeout_s: float | None = None,
        max_retries: int | None = None,
        max_in_flight: int | None = None,
        max_new_tokens: int = 256,
        system_prompt: str = PAPER_SYSTEM_PROMPT,
        user_template: str = PAPER_USER_TEMPLATE,
        positive_pattern: str = PERFECT_PATTERN,
    ) -> None:
        check_template(user_template)
        try:
            self.positive_rule = re.compile(positive_pattern, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"positive_pattern {positive_pattern!r} is not a valid regex: {e}") from e
        given: dict[str, Any] = {
            "url": url,
            "backend": backend,
            "model_name": model_name,
            "timeout_s": timeout_s,
            "max_retries": max_retries,
            "max_in_flight": max_in_flight,
        }
        self.settings = PolicySettings(
            _env_prefix=ENV_PREFIX,
            **{k: v for k, v in given.items() if v is not None},
            max_new_tokens=max_new_tokens,
            do_sample=False,
            n=1,
            stop=[],
        )
        self.system_prompt = system_prompt
        self.user_template = user_template
        digest = hashlib.sha256(
            json.dumps([system_prompt, user_template, positive_pattern]).encode()
        ).hexdigest()
        self.id = f"llm:{self.settings.model_name}:{digest[:8]}"
        self.client = PolicyClient(self.settings)

    def prompt(self, instruction: str, response: str, reference: dict[str, Any] | None) -> str:
        """The exact text sent to the endpoint: system part, a blank line, the user part."""
        ref = json.dumps(reference, ensure_ascii=False, sort_keys=True) if reference is not None else ""
        user = self.user_template.format(instruction=instruction, response=response, reference=ref)
        return f"{self.system_prompt}\n\n{user}" if self.system_prompt else user

    def is_positive(self, judgment: str) -> bool:
        return self.positive_rule.search(judgment) is not None

    def judge(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Judgment:
        completion = self.client.complete(self.prompt(instruction, response, reference))
        text = completion.text.strip()
        if not text:
            raise InvalidJudgment(
                f"the LLM judge {self.id} answered with an empty judgment "
                f"(finish reason {completion.finish_reason})"
            )
        if completion.finish_reason == "length":
            log.warning("judgment by %s cut at max_new_tokens=%d", self.id, self.settings.max_new_tokens)
        positive = self.is_positive(text)
        return Judgment(text, positive, [] if positive else quoted_spans(text, response), self.id)

    def close(self) -> None:
        self.client.close()
