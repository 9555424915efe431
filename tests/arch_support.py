"""Tiny models of six architectures with locally trained byte-level BPE tokenizers (two with chat templates),
for the chat-template and architecture tests (tests/test_chat_templates.py, tests/test_architectures.py)."""

from __future__ import annotations

from pathlib import Path

from cutalign.modelinit import ModelShape, init_model
from cutalign.templates import CHAT_JUDGED_USER, TEMPLATES

SHAPE = ModelShape(layers=2, hidden_size=32, heads=2, intermediate_size=64, max_positions=256)
# architecture -> tokenizer: Qwen2 with ChatML, Llama with a Llama-3 style template (as their instruct models)
TOKENIZER_OF = {
    "llama": "llama3",
    "qwen2": "chatml",
    "mistral": "bpe",
    "gemma2": "bpe",
    "phi3": "bpe",
    "gpt2": "bpe",
}


def corpus() -> str:
    """Prompts under every template, arithmetic answers, accented text (no CJK: "日" stays 3 byte tokens)."""
    lines = []
    for i in range(12):
        instruction, answer = f"add {i} and {i + 3}", f"{i}+{i + 3}={2 * i + 3}"
        for template in TEMPLATES.values():
            lines.append(template.format_plain(instruction) + answer)
            lines.append(template.format_judged(instruction, f"wrong: it is not {2 * i + 4}") + answer)
        lines.append(
            CHAT_JUDGED_USER.format(instruction=instruction, judgment="wrong") + " user assistant system"
        )
    lines.append("café naïve déjà vu — the response is correct. The answer is right.")
    return "\n".join(lines) + "\n"


def tiny_arch_model(directory: Path, architecture: str, seed: int = 0) -> Path:
    init_model(
        corpus(), directory, SHAPE, seed, architecture=architecture, tokenizer=TOKENIZER_OF[architecture]
    )
    return directory
