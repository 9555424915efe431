"""The demo's base model: ``init-model`` + the warm start, named by a hash of everything that made it.

Building it is the slowest step of a first ``make demo`` (minutes on two cores), so it is cached in the
artifact store under ``models/<name>-<hash>/`` (``cutalign.store.layout.base_model_prefix``). The hash covers
the model shape, the task, the warm-start data knobs and the optimisation settings, plus a recipe version that
is bumped whenever the code that builds the model changes meaning: a cached model is reused only if it was
built by the same recipe, and changing any setting builds (and caches) a new one beside the old.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cutalign.cut.examples import CutExample
from cutalign.cut.location import as_prefix, resolve
from cutalign.demo.task import CountingTask, WarmStartExample, tokenizer_corpus, warm_start_examples
from cutalign.errors import UserError
from cutalign.modelinit import ModelShape, init_model
from cutalign.reading.settings import WarmStartSettings
from cutalign.reading.training import judged, plain, warm_start
from cutalign.store import ArtifactStore, ObjectMissing
from cutalign.store.layout import base_model_prefix

log = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump when the build below changes what a given spec produces
SPEC_FILE = "cutalign-base-spec.json"  # written next to the weights: what the model was built from


@dataclass(frozen=True)
class WarmStartData:
    """Knobs of :func:`cutalign.demo.task.warm_start_examples` (see its docstring; same defaults)."""

    n_plain: int = 2000
    n_judged: int = 1000
    n_habits: int = 8
    corruption_rate: float = 0.7
    habit_share: float = 1.0


@dataclass(frozen=True)
class BaseModelSpec:
    """Everything the demo's base model is a function of."""

    name: str = "counting"
    task: CountingTask = field(default_factory=CountingTask)
    shape: ModelShape = field(default_factory=ModelShape)
    data: WarmStartData = field(default_factory=WarmStartData)
    training: WarmStartSettings = field(default_factory=WarmStartSettings)
    seed: int = 0

    def as_dict(self) -> dict[str, object]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        plain_fields = {k: v.model_dump() if k == "training" else v for k, v in fields.items()}
        return {"recipe": RECIPE_VERSION, **json.loads(json.dumps(plain_fields, default=asdict))}

    @property
    def fingerprint(self) -> str:
        """12 hex digits of sha256 over the canonical JSON of the spec and the recipe version."""
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def key_prefix(self) -> str:
        return base_model_prefix(f"{self.name}-{self.fingerprint}")


def as_cut_example(index: int, example: WarmStartExample) -> CutExample:
    """A counting warm-start example as a plain or judged example of the warm start."""
    if example.judgment is None:
        return plain(f"warm-{index}", example.instruction, example.response)
    return judged(f"warm-{index}", example.instruction, example.response, example.judgment)


def build_base_model(
    spec: BaseModelSpec,
    out_dir: Path,
    *,
    threads: int | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Random-init the model and warm-start it; ``out_dir`` (new or empty) receives the HF directory."""
    with tempfile.TemporaryDirectory(prefix="cutalign-init-") as tmp:
        initial = Path(tmp) / "init"
        init_model(tokenizer_corpus(spec.task), initial, spec.shape, seed=spec.seed)
        examples = warm_start_examples(
            spec.task,
            n_plain=spec.data.n_plain,
            n_judged=spec.data.n_judged,
            n_habits=spec.data.n_habits,
            corruption_rate=spec.data.corruption_rate,
            habit_share=spec.data.habit_share,
            seed=spec.seed,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        warm_start(
            initial,
            [as_cut_example(i, e) for i, e in enumerate(examples)],
            spec.training,
            out_dir,
            threads=threads,
            on_step=on_step,
        )
    (out_dir / SPEC_FILE).write_text(json.dumps(spec.as_dict(), indent=2, sort_keys=True))
    return out_dir


def cached_base_model(
    spec: BaseModelSpec,
    store: ArtifactStore,
    work_dir: Path,
    *,
    threads: int | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[str, bool]:
    """(``s3://`` URI of the base model, whether it came from the cache): fetched if cached, else built and
    uploaded. The spec file is written last, so a build interrupted mid-upload is rebuilt next time."""
    prefix = spec.key_prefix
    uri = store.uri(prefix).rstrip("/")
    store.ensure_bucket()
    if store.exists(prefix + SPEC_FILE):
        log.info("base model %s found in the cache", uri)
        return uri, True
    local = build_base_model(
        spec, work_dir / f"{spec.name}-{spec.fingerprint}", threads=threads, on_step=on_step
    )
    for path in sorted(p for p in local.iterdir() if p.is_file() and p.name != SPEC_FILE):
        store.put_file(prefix + path.name, path)
    store.put_file(prefix + SPEC_FILE, local / SPEC_FILE)
    log.info("base model built and cached at %s", uri)
    return uri, False


def fetch_base_model(uri: str, store: ArtifactStore, directory: Path) -> Path:
    """Download a cached base model (every object checksum-verified) into ``directory``; ``store`` gives the
    endpoint and credentials, the URI the bucket."""
    bound, key = resolve(uri, store)
    try:
        return bound.download_dir(as_prefix(key), directory)
    except ObjectMissing as e:
        raise ObjectMissing(f"{uri} holds no base model; build it with `cutalign demo`") from e


def spec_with(options: list[str]) -> BaseModelSpec:
    """The default spec with ``key=value`` warm-start knobs (of ``WarmStartData`` or ``WarmStartSettings``)
    changed, e.g. ``habit_share=0.5`` or ``epochs=8``: the ablations of docs/results.md."""
    spec = BaseModelSpec()
    for option in options:
        key, eq, value = option.partition("=")
        if eq and key in {f.name for f in dataclasses.fields(spec.data)}:
            kind = type(getattr(spec.data, key))
            spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, **{key: kind(value)}))
        elif eq and key in WarmStartSettings.model_fields:
            spec = dataclasses.replace(
                spec, training=WarmStartSettings(**{**spec.training.model_dump(), key: value})
            )
        else:
            raise UserError(
                f"warm-start option {option!r} is not key=value with a field of WarmStartData or "
                "WarmStartSettings",
                "e.g. --base-option habit_share=0.5",
            )
    return spec
