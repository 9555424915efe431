"""A task family's base model: a random-init Llama SFT-warm-started on correct examples to a middle accuracy.

This is the user's situation (issue: a base from ``cutalign init-model`` and an SFT warm start): the model
does the task partly and has never seen a judgment prompt. Built once per spec into a local cache directory
named by the spec's hash, like the demo's base model.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cutalign.modelinit import ModelShape, init_model
from cutalign.reading.settings import WarmStartSettings
from cutalign.reading.training import plain, warm_start
from cutalign.tasks.family import GeneratedTask

RECIPE_VERSION = 1  # bump when the build below changes what a given spec produces
SPEC_FILE = "cutalign-task-base.json"


@dataclass(frozen=True)
class TaskBaseSpec:
    """Everything a family's base model is a function of."""

    family: str
    examples: int  # correct training examples the SFT warm start sees
    shape: ModelShape = field(default_factory=ModelShape)
    training: WarmStartSettings = field(default_factory=WarmStartSettings)
    seed: int = 0

    @classmethod
    def of(cls, task: GeneratedTask) -> TaskBaseSpec:
        """The family's recipe: its example count, the default model shape, 6 epochs."""
        return cls(task.family.name, task.family.base_examples)

    def as_dict(self) -> dict[str, object]:
        fields = {"family": self.family, "examples": self.examples, "seed": self.seed}
        return {
            "recipe": RECIPE_VERSION,
            **fields,
            "shape": asdict(self.shape),
            "training": self.training.model_dump(),
        }

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def task_base(task: GeneratedTask, spec: TaskBaseSpec, cache: Path, *, threads: int | None = None) -> Path:
    """The base model of ``spec`` for ``task`` under ``cache`` (built if missing)."""
    out = cache / f"{spec.family}-{spec.fingerprint}"
    if (out / SPEC_FILE).is_file():
        return out
    rng = random.Random(spec.seed)
    pool = task.train_prompts()
    rows = [rng.choice(pool) for _ in range(spec.examples)]
    examples = [plain(f"sft-{i}", r["instruction"], task.family.answer(r)) for i, r in enumerate(rows)]
    with tempfile.TemporaryDirectory(prefix="cutalign-task-base-") as tmp:
        init_model(task.corpus(), Path(tmp) / "init", spec.shape, seed=spec.seed)
        out.mkdir(parents=True, exist_ok=True)
        warm_start(Path(tmp) / "init", examples, spec.training, out, threads=threads)
    (out / SPEC_FILE).write_text(json.dumps(spec.as_dict(), indent=2, sort_keys=True))
    return out
