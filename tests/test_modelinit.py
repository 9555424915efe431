"""`cutalign init-model`: a tiny Llama + character tokenizer that the Auto classes load and that tokenizes a
response identically after the plain and the judgment prompt (docs/method.md §2)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from cutalign.cli.main import app
from cutalign.demo.task import CountingTask, tokenizer_corpus, warm_start_examples
from cutalign.modelinit import ModelShape, build_char_tokenizer, init_model
from cutalign.templates import TEMPLATES

torch.set_num_threads(1)

TINY = ModelShape(layers=1, hidden_size=32, heads=2, intermediate_size=64, max_positions=512)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny"
    result = init_model(tokenizer_corpus(), out, TINY, seed=0)
    assert result.path == out and result.vocab_size == len(set(tokenizer_corpus())) + 4
    return out


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_auto_classes_load_it_and_it_generates(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3
    prompt = TEMPLATES["short"].format_plain("Count from 3 to 9.")
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert ids[0, 0].item() == tokenizer.bos_token_id and ids.shape[1] == len(prompt) + 1
    out = model.generate(
        ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert out.shape == (1, ids.shape[1] + 4) and torch.equal(out[0, : ids.shape[1]], ids[0])
    assert int(out.max()) < len(tokenizer)


def test_tokenizer_round_trips_text_one_token_per_character(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer_corpus()
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text) and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    assert tokenizer("é", add_special_tokens=False).input_ids == [tokenizer.unk_token_id]


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_response_ids_are_identical_after_plain_and_judgment_prompts(model_dir: Path, template: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tpl = TEMPLATES[template]
    for example in warm_start_examples(CountingTask(), n_plain=0, n_judged=40, seed=1):
        assert example.judgment is not None
        alone = tokenizer(example.response, add_special_tokens=False).input_ids
        plain = tokenizer(tpl.format_plain(example.instruction) + example.response).input_ids
        judged = tokenizer(
            tpl.format_judged(example.instruction, example.judgment) + example.response
        ).input_ids
        assert plain[-len(alone) :] == judged[-len(alone) :] == alone


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path, model_dir: Path) -> None:
    again = init_model(tokenizer_corpus(), tmp_path / "again", TINY, seed=0).path
    assert _digest(again) == _digest(model_dir)
    other = init_model(tokenizer_corpus(), tmp_path / "other", TINY, seed=1).path
    digests = _digest(other)
    assert digests["tokenizer.json"] == _digest(model_dir)["tokenizer.json"]
    assert digests["model.safetensors"] != _digest(model_dir)["model.safetensors"]


def test_init_model_refuses_a_non_empty_directory_and_bad_shapes(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        init_model("abc", tmp_path, TINY)
    with pytest.raises(ValueError, match="multiple of heads"):
        ModelShape(hidden_size=30, heads=4)
    with pytest.raises(ValueError, match="corpus is empty"):
        build_char_tokenizer("")


def test_cli_help_and_a_real_run(tmp_path: Path) -> None:
    runner = CliRunner()
    help_text = runner.invoke(app, ["init-model", "--help"], terminal_width=200).output
    for option in (
        "--corpus",
        "--out",
        "--layers",
        "--hidden-size",
        "--heads",
        "--intermediate-size",
        "--seed",
    ):
        assert option in help_text
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tokenizer_corpus())
    out = tmp_path / "model"
    args = ["init-model", "--corpus", str(corpus), "--out", str(out), "--layers", "1", "--hidden-size", "32"]
    result = runner.invoke(
        app, [*args, "--heads", "2", "--intermediate-size", "64", "--max-positions", "256"]
    )
    assert result.exit_code == 0, result.output
    assert f"vocabulary {len(set(tokenizer_corpus())) + 4}" in result.output
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (
        model.config.num_hidden_layers,
        model.config.hidden_size,
        model.config.max_position_embeddings,
    ) == (
        1,
        32,
        256,
    )
    bad = runner.invoke(
        app, ["init-model", "--corpus", str(corpus), "--out", str(tmp_path / "m2"), "--heads", "3"]
    )
    assert bad.exit_code == 2 and "multiple of heads" in bad.output
