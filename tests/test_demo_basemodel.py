"""The demo's base model: a warm start that trains each example in its own context, named by a hash of its
spec, built once and then fetched from the S3 cache (a real SeaweedFS)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cutalign.cut.collator import ExampleTokenizer
from cutalign.cut.loss import response_logprobs
from cutalign.demo.basemodel import (
    SPEC_FILE,
    BaseModelSpec,
    WarmStartData,
    as_cut_example,
    build_base_model,
    cached_base_model,
    fetch_base_model,
)
from cutalign.demo.task import CountingTask, tokenizer_corpus, warm_start_examples
from cutalign.modelinit import ModelShape, init_model
from cutalign.reading.settings import WarmStartSettings
from cutalign.reading.training import WARM_START_PLAN, warm_start
from cutalign.store import ArtifactStore

torch.set_num_threads(1)

TINY = ModelShape(layers=1, hidden_size=32, heads=2, intermediate_size=64, max_positions=256)
TINY_SPEC = BaseModelSpec(
    shape=TINY,
    data=WarmStartData(n_plain=24, n_judged=8),
    training=WarmStartSettings(epochs=1, batch_size=16),
)


def _response_loss(model_dir: Path, examples: list) -> float:
    """Mean response-token NLL of ``examples``, each in the context the warm start trains it in."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenize = ExampleTokenizer(tokenizer, "short", 256)
    losses = []
    with torch.no_grad():
        for i, ex in enumerate(examples):
            tokenized = tokenize(as_cut_example(i, ex))
            context = WARM_START_PLAN.positive_mle if tokenized.positive else WARM_START_PLAN.negative_mle
            ids = torch.tensor([tokenized.ids(context)])  # type: ignore[arg-type]
            labels = ids.clone()
            labels[0, : ids.shape[1] - tokenized.response_len] = -100
            logp, _ = response_logprobs(model(input_ids=ids).logits, labels)
            losses.append(-logp.mean().item())
    return sum(losses) / len(losses)


def test_warm_start_trains_plain_examples_plainly_and_judged_ones_under_their_judgment(
    tmp_path: Path,
) -> None:
    task = CountingTask()
    init_model(tokenizer_corpus(task), tmp_path / "init", TINY, seed=0)
    examples = warm_start_examples(task, n_plain=32, n_judged=32, seed=0)
    assert {ex.judgment is None for ex in examples} == {True, False}
    held_out = warm_start_examples(task, n_plain=8, n_judged=8, seed=1)
    before = _response_loss(tmp_path / "init", held_out)
    steps: list[tuple[int, int]] = []
    warm_start(
        tmp_path / "init",
        [as_cut_example(i, ex) for i, ex in enumerate(examples)],
        WarmStartSettings(epochs=6, batch_size=16, learning_rate=3e-3),
        tmp_path / "warm",
        on_step=lambda step, total, loss: steps.append((step, total)),
    )
    assert steps[-1] == (24, 24) and len(steps) == 24  # 6 epochs x ceil(64 / 16)
    after = _response_loss(tmp_path / "warm", held_out)
    assert after < before - 0.5, f"the warm start should fit the data: {before:.2f} -> {after:.2f}"
    assert (tmp_path / "warm" / "tokenizer.json").is_file()
    plain = as_cut_example(0, next(ex for ex in examples if ex.judgment is None))
    judged = as_cut_example(1, next(ex for ex in examples if ex.judgment is not None))
    assert plain.positive and not judged.positive and judged.judgment


def test_fingerprint_covers_every_setting_and_the_recipe() -> None:
    spec = BaseModelSpec()
    assert spec.fingerprint == BaseModelSpec().fingerprint and len(spec.fingerprint) == 12
    variants = [
        dataclasses.replace(spec, seed=1),
        dataclasses.replace(spec, task=CountingTask(seed=1)),
        dataclasses.replace(spec, shape=TINY),
        dataclasses.replace(spec, data=WarmStartData(corruption_rate=0.6)),
        dataclasses.replace(spec, training=WarmStartSettings(epochs=2)),
    ]
    assert len({v.fingerprint for v in variants} | {spec.fingerprint}) == len(variants) + 1
    assert spec.key_prefix == f"models/counting-{spec.fingerprint}/"


def test_the_base_model_is_built_once_then_fetched_from_the_s3_cache(
    store: ArtifactStore, tmp_path: Path
) -> None:
    uri, cached = cached_base_model(TINY_SPEC, store, tmp_path / "first")
    assert not cached and uri == store.uri(TINY_SPEC.key_prefix).rstrip("/")
    keys = store.list(TINY_SPEC.key_prefix)
    assert TINY_SPEC.key_prefix + SPEC_FILE in keys and TINY_SPEC.key_prefix + "model.safetensors" in keys
    again, cached = cached_base_model(TINY_SPEC, store, tmp_path / "second")
    assert (again, cached) == (uri, True) and not (tmp_path / "second").exists(), "no rebuild"
    local = fetch_base_model(uri, store, tmp_path / "fetched")
    assert json.loads((local / SPEC_FILE).read_text())["data"]["n_plain"] == 24
    built = build_base_model(TINY_SPEC, tmp_path / "rebuilt")
    assert (built / "model.safetensors").read_bytes() == (local / "model.safetensors").read_bytes(), (
        "the same spec builds the same weights"
    )
    with pytest.raises(Exception, match="holds no base model"):
        fetch_base_model(store.uri("models/none-000000000000"), store, tmp_path / "missing")
