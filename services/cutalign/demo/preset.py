"""The demo's sizes: what ``cutalign demo`` runs unless a flag says otherwise (measured in docs/results.md).

Kept apart from ``cutalign.demo.app`` so the CLI can show them in ``--help`` without importing the run.
"""

from __future__ import annotations

from typing import Any

JUDGMENT_ARM = "span"  # the judgment-based objective the demo runs: the best regime docs/results.md found

ONLINE: dict[str, Any] = {
    "iterations": 3,
    "prompts_per_iteration": 200,
    "steps": 30,
    "arm": JUDGMENT_ARM,
    "baseline": True,
}
TRAINER: dict[str, Any] = {
    "learning_rate": 1e-3,  # a from-scratch million-parameter model learns faster than the paper's 13B
    "lora": True,
    "lora_r": 16,
    "lora_alpha": 16,
    "micro_batch_size": 8,
    "cutoff": 512,
}
