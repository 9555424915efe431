"""An LLM as the judge: the paper's judging prompt, against any TGI / OpenAI-compatible endpoint.

The default prompt is the one the paper gave GPT-4 (docs/method.md §6), verbatim: the system part

    Below is an instruction that describes a task and a potential response. Evaluate the response and provide
    valuable judgments to the response. If the response is perfect, please only reply with 'perfect'.
    Otherwise, please indicate precisely what mistakes it has.

then the user part ``### Instruction: {instruction}\\n\\n### Response: {response}``. A judgment is
positive iff it begins with "perfect", case-insensitively (leading spaces, quotes and markdown emphasis
ignored) — the rule the paper's data was labelled with. Both prompt parts and the rule (a regex) are options;
the user template may also use ``{reference}`` (the prompt's reference fields as JSON).

Transport is ``cutalign.policy.client.PolicyClient``: retries on 429/5xx/timeouts with jittered backoff, a
bound on requests in flight, greedy decoding. With the ``chat`` template (the default: judges are chat
models) the two parts are a ``system`` and a ``user`` message — on the OpenAI chat route as messages, on TGI's
route rendered by the judge model's chat template (``TOKENIZER``); with a text template (``plain``, or
``auto`` resolving to it for a model without a chat template) they travel as ``{system}\\n\\n{user}`` in one
completion prompt. The endpoint is configured like the policy's, under ``CUTALIGN_JUDGE_LLM_*`` (``URL``,
``BACKEND``, ``MODEL_NAME``, ``TEMPLATE``, ``TOKENIZER``, ``API_TOKEN`` from a Secret, ``TIMEOUT_S``,
``MAX_RETRIES``, ``MAX_IN_FLIGHT``); non-secret ones may also be given as options (``judge.options_json``),
which win.

Replies that are not a judgment are refused with ``InvalidJudgment`` (the judge service retries, then
dead-letters the sample as ``judge_failed``; nothing is trained on them). A reply is unusable when it is

* empty, or only punctuation;
* a refusal or deflection: it opens with "I'm sorry", "I cannot", "I can't", "I am unable", "As an AI", ...;
* an echo of the judging prompt: it contains a line of the prompt's template (``### Instruction:``, ...);
* a negative that refers to nothing judged: it shares no word with the instruction or the response and uses
  no word of critique or reference ("wrong", "incorrect", "error", "missing", "should", "not", "no",
  "response", "it", ...) — nonsense such as "purple banana skyline".

A positive (the "perfect" rule) is always usable.

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
from cutalign.templates import Message, Request, render_chat

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

REFUSALS = re.compile(
    r"^[\s\"'*_`“‘]*(i['’]?m sorry|i am sorry|sorry\b|i apologi[sz]e|i can['’]?t\b|i cannot\b|i can not\b|"
    r"i won['’]?t\b|i will not\b|i['’]?m unable|i am unable|i['’]?m not able|i am not able|as an ai\b|"
    r"as a language model)",
    re.IGNORECASE,
)
CRITIQUE_WORDS = frozenset(
    [
        "wrong",
        "incorrect",
        "incorrectly",
        "error",
        "errors",
        "mistake",
        "mistakes",
        "missing",
        "miss",
        "misses",
        "lacks",
        "lacking",
        "should",
        "instead",
        "not",
        "no",
        "bad",
        "fails",
        "failed",
        "inaccurate",
        "incomplete",
        "invalid",
        "false",
        "typo",
        "repeats",
        "repeated",
        "skips",
        "skipped",
        "extra",
        "response",
        "answer",
        "output",
        "reply",
        "result",
        "it",
        "its",
        "this",
    ]
)
_WORDS = re.compile(r"\w+")


def unusable_reason(reply: str, instruction: str, response: str, prompt_lines: list[str]) -> str | None:
    """Why ``reply`` cannot be used as a negative judgment (the rules of the module docstring), or None."""
    text = reply.strip()
    if not _WORDS.search(text):
        return "it is empty or only punctuation"
    if REFUSALS.match(text):
        return "it is a refusal, not a judgment"
    echoed = next((line for line in prompt_lines if line in text), None)
    if echoed is not None:
        return f"it repeats the judging prompt ({echoed!r})"
    words = {w.lower() for w in _WORDS.findall(text)}
    judged = {w.lower() for w in _WORDS.findall(f"{instruction} {response}")}
    if not words & (judged | CRITIQUE_WORDS):
        return "it refers to neither the instruction nor the response"
    return None


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
        template: str | None = None,
        tokenizer: str | None = None,
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
            "template": template,
            "tokenizer": tokenizer,
        }
        env = PolicySettings(_env_prefix=ENV_PREFIX)  # a judge is a chat model unless configured otherwise
        default_template = env.template if "template" in env.model_fields_set else "chat"
        self.settings = PolicySettings(
            _env_prefix=ENV_PREFIX,
            **{"template": default_template, **{k: v for k, v in given.items() if v is not None}},
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

    def messages(self, instruction: str, response: str, reference: dict[str, Any] | None) -> list[Message]:
        """The judging conversation: the system part (if any), then the user part."""
        ref = json.dumps(reference, ensure_ascii=False, sort_keys=True) if reference is not None else ""
        user = self.user_template.format(instruction=instruction, response=response, reference=ref)
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": user}]

    def prompt(self, instruction: str, response: str, reference: dict[str, Any] | None) -> Request:
        """What is sent to the endpoint: the messages (``chat``; on TGI's route rendered by the judge model's
        chat template), or one text — the system part, a blank line, the user part."""
        messages = self.messages(instruction, response, reference)
        fmt = self.client.prompt_format()
        if not fmt.is_chat:
            return "\n\n".join(m["content"] for m in messages)
        if self.settings.backend == "tgi":
            assert fmt.tokenizer is not None  # prompt_format refuses chat on tgi without one
            return render_chat(fmt.tokenizer, messages)
        return messages

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
        problem = None if positive else unusable_reason(text, instruction, response, self.prompt_lines)
        if problem is not None:
            raise InvalidJudgment(
                f"the LLM judge {self.id} gave no usable judgment: {problem}: {text[:120]!r}"
            )
        return Judgment(text, positive, [] if positive else quoted_spans(text, response), self.id)

    @property
    def prompt_lines(self) -> list[str]:
        """The fixed lines of the judging prompt's user template (a reply containing one echoes it)."""
        pieces = [literal for literal, _, _, _ in string.Formatter().parse(self.user_template)]
        return sorted(
            {line.strip() for piece in pieces for line in piece.splitlines() if len(line.strip()) > 3}
        )

    def close(self) -> None:
        self.client.close()
