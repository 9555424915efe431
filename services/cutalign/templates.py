"""Prompt templates shared by generation, judging and training (method page §2).

Generation and training must format prompts identically, or the policy is trained on contexts it never sees
at inference; so there is exactly one definition, here. ``plain`` is the paper's Alpaca template (verbatim);
``short`` is a compact variant for tiny from-scratch models, whose context windows and capacity are small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TemplateName = Literal["plain", "short"]


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


def join_input(instruction: str, input: str = "") -> str:
    """Alpaca-style: an extra ``input`` is appended to the instruction after a newline."""
    return f"{instruction}\n{input}" if input else instruction


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError as e:
        raise ValueError(f"unknown template {name!r}; choose one of {sorted(TEMPLATES)}") from e
