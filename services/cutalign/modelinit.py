"""``cutalign init-model``: a small random-init causal LM and a tokenizer trained on a corpus, as an HF dir.

No weights can be downloaded here, so the demo and the tests build their base models: a causal LM of one of
the common architectures (``ARCHITECTURES``: Llama, Qwen2, Mistral, Gemma2, Phi3, GPT-2 — the same code paths
as a real checkpoint of that family: ``AutoModelForCausalLM`` loads it, its own module names, its own
position limits) with a tokenizer trained on the given text.

Tokenizers (``TOKENIZERS``):

* ``char`` (the default, the demo's) — one token per character. CUT compares each response token's
  probability after the plain prompt and after the judgment prompt, and with one token per character digits
  are single tokens, which suits the counting task (a BPE vocabulary learned on a small corpus would merge
  arbitrary digit pairs). The vocabulary is the corpus's character set, in code-point order (so it does not
  depend on frequency ties), after the special tokens ``[UNK]``, ``<s>``, ``</s>``, ``<pad>``. Like Llama's
  tokenizer, it adds ``<s>`` in front of every encoded text unless ``add_special_tokens=False``;
* ``bpe`` — byte-level BPE as GPT-2's (``<|endoftext|>`` is BOS, EOS and padding; nothing added on encoding);
* ``chatml`` — byte-level BPE with a ChatML chat template as Qwen2-Instruct's (``<|im_start|>`` and
  ``<|im_end|>``, EOS ``<|im_end|>``, no BOS);
* ``llama3`` — byte-level BPE with a Llama-3-Instruct style chat template (``<|begin_of_text|>`` added as
  BOS, ``<|start_header_id|>``/``<|end_header_id|>`` headers, turns closed by ``<|eot_id|>``, the EOS).

Everything is a function of the corpus and the seed: the same inputs give byte-identical files.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

UNK, BOS, EOS, PAD = "[UNK]", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)
ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma2", "phi3", "gpt2")
TOKENIZERS = ("char", "bpe", "chatml", "llama3")
BPE_VOCAB = 512

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>"
    "\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@dataclass(frozen=True)
class BpeStyle:
    """The special tokens and chat template of one byte-level BPE tokenizer family."""

    specials: tuple[str, ...]  # in vocabulary order, first ids
    bos: str | None
    eos: str
    pad: str
    add_bos: bool  # the post-processor puts BOS in front of every encoded text
    chat_template: str | None


BPE_STYLES = {
    "bpe": BpeStyle(("<|endoftext|>",), "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", False, None),
    "chatml": BpeStyle(
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        None,
        "<|im_end|>",
        "<|endoftext|>",
        False,
        CHATML_TEMPLATE,
    ),
    "llama3": BpeStyle(
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        True,
        LLAMA3_TEMPLATE,
    ),
}


@dataclass(frozen=True)
class ModelShape:
    """Size of the Llama model; the defaults (~1.1 M parameters) learn the demo task on two CPU cores."""

    layers: int = 4
    hidden_size: int = 128
    heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 512

    def __post_init__(self) -> None:
        if min(asdict(self).values()) < 1:
            raise ValueError(f"every model dimension must be positive, got {self}")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of heads {self.heads}")


def build_char_tokenizer(corpus: str, max_length: int = 512) -> PreTrainedTokenizerFast:
    """A character-level tokenizer whose vocabulary is the special tokens plus the corpus's characters."""
    from transformers import PreTrainedTokenizerFast  # deferred: keeps `cutalign --help` fast

    chars = sorted(set(corpus) - set(SPECIAL_TOKENS))
    if not chars:
        raise ValueError("the tokenizer corpus is empty; give a file with the text the model will see")
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *chars])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one per character
    tokenizer.decoder = decoders.Fuse()  # join characters back without spaces
    bos_id = vocab[BOS]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


def build_bpe_tokenizer(
    corpus: str, style: str = "bpe", vocab_size: int = BPE_VOCAB, max_length: int = 512
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus``, with the special tokens of ``BPE_STYLES[style]``."""
    from transformers import PreTrainedTokenizerFast  # deferred: keeps `cutalign --help` fast

    if not corpus:
        raise ValueError("the tokenizer corpus is empty; give a file with the text the model will see")
    spec = BPE_STYLES[style]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(spec.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = corpus.splitlines(keepends=True)  # chunks of lines: blank lines (\n\n) stay inside a chunk
    tokenizer.train_from_iterator(("".join(lines[i : i + 64]) for i in range(0, len(lines), 64)), trainer)
    if spec.add_bos and spec.bos is not None:
        bos_id = tokenizer.token_to_id(spec.bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B", special_tokens=[(spec.bos, bos_id)]
        )
    named = {spec.eos, spec.pad, *([spec.bos] if spec.bos else [])}
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        extra_special_tokens=[t for t in spec.specials if t not in named],
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )
    if spec.chat_template is not None:
        wrapped.chat_template = spec.chat_template
    return wrapped


def build_tokenizer(corpus: str, kind: str = "char", max_length: int = 512) -> PreTrainedTokenizerFast:
    """The tokenizer ``kind`` (``TOKENIZERS``) trained on ``corpus``."""
    if kind == "char":
        return build_char_tokenizer(corpus, max_length)
    if kind not in BPE_STYLES:
        raise ValueError(f"unknown tokenizer {kind!r}; choose one of {TOKENIZERS}")
    return build_bpe_tokenizer(corpus, kind, max_length=max_length)


def build_config(
    architecture: str, tokenizer: PreTrainedTokenizerFast, shape: ModelShape
) -> PretrainedConfig:
    """A ``shape``-sized configuration of ``architecture`` (``ARCHITECTURES``) for ``tokenizer``."""
    from transformers import AutoConfig  # deferred: keeps `cutalign --help` fast

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": True,
        "vocab_size": len(tokenizer),
    }
    if architecture == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            n_embd=shape.hidden_size,
            n_layer=shape.layers,
            n_head=shape.heads,
            n_inner=shape.intermediate_size,
            n_positions=shape.max_positions,
            **ids,
        )
    extra: dict[str, object] = {}
    if architecture == "gemma2":
        head_dim = shape.hidden_size // shape.heads
        extra = {
            "head_dim": head_dim,
            "query_pre_attn_scalar": head_dim,
            "sliding_window": shape.max_positions,
        }
    if architecture == "mistral":
        extra = {"sliding_window": None}
    return AutoConfig.for_model(
        architecture,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.max_positions,
        **ids,
        **extra,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast, shape: ModelShape, seed: int, architecture: str = "llama"
) -> PreTrainedModel:
    """A random-init ``architecture`` model sized by ``shape``; the global torch RNG is left as it was."""
    import torch  # deferred: keeps `cutalign --help` fast
    from transformers import AutoModelForCausalLM

    config = build_config(architecture, tokenizer, shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


@dataclass(frozen=True)
class InitResult:
    """What ``init_model`` wrote: the directory, the model's parameter count, the tokenizer's size."""

    path: Path
    parameters: int
    vocab_size: int


def init_model(
    corpus: str,
    out_dir: str | Path,
    shape: ModelShape = ModelShape(),
    seed: int = 0,
    *,
    architecture: str = "llama",
    tokenizer: str = "char",
) -> InitResult:
    """Build tokenizer and model from ``corpus`` text and save both to ``out_dir`` (must be empty or new)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new directory or empty it first")
    built = build_tokenizer(corpus, tokenizer, max_length=shape.max_positions)
    model = build_model(built, shape, seed, architecture)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    built.save_pretrained(out)
    result = InitResult(out, model.num_parameters(), len(built))
    log.info(
        "saved a %d-parameter %s (%s, %s tokenizer, vocabulary %d) to %s",
        result.parameters,
        architecture,
        shape,
        tokenizer,
        result.vocab_size,
        out,
    )
    return result


def init_model_command(
    corpus: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="Text file; its characters are the vocabulary.")
    ],
    out: Annotated[Path, typer.Option(file_okay=False, help="New or empty directory for the HF model.")],
    layers: Annotated[int, typer.Option(min=1, help="Transformer layers.")] = ModelShape.layers,
    hidden_size: Annotated[int, typer.Option(min=1, help="Model width d.")] = ModelShape.hidden_size,
    heads: Annotated[
        int, typer.Option(min=1, help="Attention heads (must divide hidden size).")
    ] = ModelShape.heads,
    intermediate_size: Annotated[
        int, typer.Option(min=1, help="MLP width (gate/up/down projections).")
    ] = ModelShape.intermediate_size,
    max_positions: Annotated[
        int, typer.Option(min=1, help="Longest sequence in tokens (= characters) incl. prompt.")
    ] = ModelShape.max_positions,
    seed: Annotated[int, typer.Option(help="Seed of the random initialisation.")] = 0,
    architecture: Annotated[str, typer.Option(help=f"Model family: {', '.join(ARCHITECTURES)}.")] = "llama",
    tokenizer: Annotated[
        str, typer.Option(help=f"Tokenizer: {', '.join(TOKENIZERS)} (chatml and llama3 have chat templates).")
    ] = "char",
) -> None:
    """Create a small random-init causal LM with a tokenizer trained on CORPUS, saved to OUT.

    AutoModelForCausalLM / AutoTokenizer.from_pretrained load OUT: a base model for the demo and tests.
    """
    try:
        shape = ModelShape(layers, hidden_size, heads, intermediate_size, max_positions)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    try:
        result = init_model(
            corpus.read_text(encoding="utf-8"),
            out,
            shape,
            seed,
            architecture=architecture,
            tokenizer=tokenizer,
        )
    except (FileExistsError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e
    typer.echo(
        f"wrote {result.path}: {architecture} with {result.parameters:,} parameters, vocabulary "
        f"{result.vocab_size}"
    )


def register(app: typer.Typer) -> None:
    """Add ``init-model`` to the ``cutalign`` CLI."""
    app.command("init-model")(init_model_command)
