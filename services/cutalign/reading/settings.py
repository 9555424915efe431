"""Settings of the warm starts and of the judgment-reading data (light: the CLI derives flags from them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class WarmStartSettings(BaseModel):
    """Optimisation of a warm start: full fine-tuning with AdamW and a cosine schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: float = Field(6.0, gt=0, description="Passes over the warm-start examples.")
    batch_size: int = Field(32, ge=1, description="Examples per optimizer step.")
    learning_rate: float = Field(2e-3, gt=0, description="AdamW learning rate.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up.")
    template: str = Field("short", description="Prompt templates of the plain and judged examples.")
    seed: int = Field(0, description="Seed of the batch order.")
    # length-grouped batches put plain and judged examples in separate batches; measured worse (0.06 vs 0.33
    # held-out accuracy after the same 564 steps), so batches are plain random draws
    group_by_length: bool = Field(False, description="Batch similar lengths together (measured worse).")
    lora: bool = Field(False, description="Train a LoRA adapter (merged at the end) instead of every weight.")
    lora_r: int = Field(16, ge=1, description="LoRA rank (alpha = rank), with lora.")


class ReadingSettings(BaseModel):
    """Which samples become judgment-reading warm-start data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples_per_prompt: int = Field(2, ge=1, description="Responses per prompt (the greedy one first).")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of the extra responses.")
    max_prompts: int = Field(0, ge=0, description="Prompts sampled from (0: all that are given).")
    corrections: bool = Field(True, description="Add the judge's corrected responses as plain examples.")
    seed: int = Field(0, ge=0, description="Seed of the sampled responses.")
    plain_share: float = Field(
        0.6,
        ge=0,
        lt=1,
        description="Least share of plain examples: right and corrected responses repeat up to it (a small "
        "model trained on judged examples alone unlearns the task under the plain prompt).",
    )


# the judgment-reading warm start: a short LoRA pass over an already trained model (the demo's from-scratch
# warm start trains every weight, longer)
READING_TRAINING = WarmStartSettings(epochs=2.0, learning_rate=1e-3, lora=True)
