"""Prompt templates and their rendering: the one place a prompt becomes text, chat messages and token ids.

Training, the policy server, the policy client and evaluation must present a prompt identically, or the
policy is trained on contexts it never sees at inference (docs/method.md §2): every one of them renders
here.

Templates (``TemplateName``):

* ``plain`` — the paper's Alpaca template, verbatim; ``short`` — a compact variant for tiny from-scratch
  models;
* ``chat`` — the tokenizer's own chat template: the instruction is one ``user`` message (the judgment prompt's
  user message frames instruction and judgment as the paper's judgment template does), rendered with
  ``apply_chat_template(..., add_generation_prompt=True)``; the response is the assistant turn and ends with
  the template's end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ...) instead of the tokenizer's EOS;
* ``auto`` — ``chat`` when the tokenizer has a chat template, else ``plain``.

What a policy server is sent (``PromptFormat.request``): the rendered text for the text templates — to a
completion route (TGI ``/generate``, OpenAI ``/v1/completions``), so no server wraps an Alpaca prompt in a
chat template — and the messages for ``chat``, which an OpenAI-compatible chat route renders with the served
tokenizer's template exactly as ``render_chat`` does (TGI's native route gets ``render_chat``'s text).

Token boundaries (``encode_prompt`` / ``encode_response``): the prompt is tokenized alone, exactly as a server
tokenizes the prompt it continues, and the response alone, so no merge can cross the prompt/response boundary
(a template's trailing space or newline stays a prompt token whatever the response starts with) and training
sees the prompt ids inference sees. Special-token text inside a response (a literal ``<|im_end|>``) is
tokenized as text: only the token appended after the response ends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TemplateName = Literal["auto", "plain", "short", "chat"]
Message = dict[str, str]  # {"role": "user" | "system" | "assistant", "content": ...}
Request = str | list[Message]  # what a policy server is sent: completion text, or chat messages


@dataclass(frozen=True)
class Template:
    """A pair of prompt formats: without the judgment (Align-P, Misalign, inference) and with it (Align-N)."""

    plain: str
    judged: str

    def format_plain(self, instruction: str, input: str = "") -> str:
        return self.plain.format(instruction=join_input(instruction, input))

    def format_judged(self, instruction: str, judgment: str, input: str = "") -> str:
        return self.judged.format(instruction=join_input(instruction, input), judgment=judgment)


TEMPLATES: dict[str, Template] = {
    "plain": Template(
        plain=(
            "Below is an instruction that describes a task. Write a response that appropriately completes "
            "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        ),
        judged=(
            "Below is an instruction that describes a task. Write a response to the instruction and the "
            "response should match the corresponding judgment.\n\n### Instruction:\n{instruction}\n\n"
            "### Judgment:\n{judgment}\n\n### Response:\n"
        ),
    ),
    "short": Template(
        plain="Q: {instruction}\nA: ",
        judged="Q: {instruction}\nJ: {judgment}\nA: ",
    ),
}
CHAT_JUDGED_USER = (
    "Write a response to the instruction and the response should match the corresponding judgment.\n\n"
    "### Instruction:\n{instruction}\n\n### Judgment:\n{judgment}"
)
"""The ``chat`` template's Align-N user message (the plain prompt's user message is the instruction)."""


def join_input(instruction: str, input: str = "") -> str:
    """Alpaca-style: an extra ``input`` is appended to the instruction after a newline."""
    return f"{instruction}\n{input}" if input else instruction


def get_template(name: str) -> Template:
    """A text template by name (``plain``, ``short``)."""
    try:
        return TEMPLATES[name]
    except KeyError as e:
        raise ValueError(f"unknown text template {name!r}; choose one of {sorted(TEMPLATES)}") from e


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve(name: str, tokenizer: PreTrainedTokenizerBase | None) -> str:
    """The template ``name`` stands for with this tokenizer: ``auto`` becomes ``chat`` or ``plain``."""
    if name == "auto":
        if tokenizer is None:
            raise ValueError(
                "template 'auto' needs the model's tokenizer to tell whether it has a chat template"
            )
        return "chat" if has_chat_template(tokenizer) else "plain"
    if name == "chat" and tokenizer is not None and not has_chat_template(tokenizer):
        raise ValueError(
            f"template 'chat' needs a tokenizer with a chat template; {type(tokenizer).__name__} has none "
            "(use 'auto', 'plain' or 'short')"
        )
    if name != "chat":
        get_template(name)
    return name


def chat_messages(instruction: str, input: str = "", judgment: str | None = None) -> list[Message]:
    """The conversation of a prompt under the ``chat`` template (with ``judgment``: the Align-N prompt)."""
    text = join_input(instruction, input)
    if judgment is not None:
        text = CHAT_JUDGED_USER.format(instruction=text, judgment=judgment)
    return [{"role": "user", "content": text}]


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether encoding with special tokens puts BOS in front (so rendered text must not carry it too)."""
    bos = tokenizer.bos_token_id
    return bos is not None and list(tokenizer("a", add_special_tokens=True)["input_ids"][:1]) == [bos]


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    """The text a chat model continues: the chat template with the generation prompt, minus a BOS that
    encoding adds again (so ``encode_prompt`` of the result has one BOS, as the template means)."""
    text = str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and adds_bos(tokenizer):
        text = text[len(bos) :]
    return text


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template closes an assistant turn with (None: no chat template, or the
    template closes turns with plain text).

    Found by rendering a conversation with an assistant turn and reading the first token after its content.
    """
    if not has_chat_template(tokenizer):
        return None
    marker = "\x00cutalign\x00"
    user = [{"role": "user", "content": "x"}]
    full = str(
        tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": marker}], tokenize=False, add_generation_prompt=False
        )
    )
    after = full.partition(marker)[2].lstrip()
    if not after:
        return None
    first = tokenizer(after, add_special_tokens=False)["input_ids"][:1]
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special} | set(
        tokenizer.all_special_ids
    )
    return int(first[0]) if first and first[0] in special else None


def stop_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Token ids that end a response: EOS and, for a chat model, its end-of-turn token."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    turn = end_of_turn_id(tokenizer)
    return ids | ({turn} if turn is not None else set())


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a rendered prompt as a server tokenizes it: special tokens parsed, BOS added if the
    tokenizer adds one, no EOS (a tokenizer configured to append one would end the prompt)."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and ids and ids[-1] == eos and not text.endswith(str(tokenizer.eos_token)):
        ids.pop()
    return ids


def encode_response(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of a response on its own and each token's [start, end) code-point span in ``text``.

    Special-token text is split into ordinary tokens (``split_special_tokens``): a response quoting
    ``<|im_end|>`` keeps it as text rather than ending there.
    """
    encoded = tokenizer(
        text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
    )
    return list(encoded["input_ids"]), [(int(a), int(b)) for a, b in encoded["offset_mapping"]]


@dataclass(frozen=True)
class PromptFormat:
    """How one model's prompts are rendered: a text template, or the tokenizer's chat template.

    ``tokenizer`` may be None for a text template, and for ``chat`` where only ``request`` is needed (the
    server renders); rendering chat text needs it.
    """

    name: str  # plain | short | chat (resolved), or "custom" for a Template given directly
    template: Template | None
    tokenizer: PreTrainedTokenizerBase | None = None

    @classmethod
    def of(cls, template: str | Template, tokenizer: PreTrainedTokenizerBase | None = None) -> PromptFormat:
        if isinstance(template, Template):
            return cls("custom", template, tokenizer)
        name = resolve(template, tokenizer)
        return cls(name, None if name == "chat" else get_template(name), tokenizer)

    @property
    def is_chat(self) -> bool:
        return self.template is None

    def plain(self, instruction: str, input: str = "") -> str:
        """The rendered prompt without the judgment (Align-P, Misalign, generation, evaluation)."""
        if self.template is not None:
            return self.template.format_plain(instruction, input)
        return render_chat(self._chat_tokenizer(), chat_messages(instruction, input))

    def judged(self, instruction: str, judgment: str, input: str = "") -> str:
        """The rendered judgment prompt (Align-N)."""
        if self.template is not None:
            return self.template.format_judged(instruction, judgment, input)
        return render_chat(self._chat_tokenizer(), chat_messages(instruction, input, judgment))

    def request(self, instruction: str, input: str = "") -> Request:
        """What a policy server is sent for the plain prompt: text for a completion route, or messages."""
        if self.template is not None:
            return self.template.format_plain(instruction, input)
        return chat_messages(instruction, input)

    @cached_property
    def response_end_id(self) -> int:
        """The token trained after every response: the end-of-turn token for ``chat``, else EOS."""
        tokenizer = self._chat_tokenizer() if self.is_chat else self.tokenizer
        if tokenizer is None:
            raise ValueError("the response end token needs the tokenizer")
        turn = end_of_turn_id(tokenizer) if self.is_chat else None
        if turn is not None:
            return turn
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token before training")
        return int(tokenizer.eos_token_id)

    def _chat_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise ValueError("rendering the 'chat' template needs the model's tokenizer")
        return self.tokenizer


def request_chars(request: Request) -> int:
    """Size of a request in characters (a chat request: its messages' contents)."""
    return len(request) if isinstance(request, str) else sum(len(m["content"]) for m in request)
