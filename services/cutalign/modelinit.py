"""``cutalign init-model``: a small random-init Llama with a character-level tokenizer, as an HF directory.

No weights can be downloaded here, so the demo and the tests build their base model: a Llama-architecture
causal LM (the same code paths as a real Llama checkpoint: ``AutoModelForCausalLM`` loads it, the LoRA targets
``gate_proj``/``up_proj``/``down_proj`` exist) with a tokenizer trained on the given text.

Why character-level: CUT compares each response token's probability after the plain prompt and after the
judgment prompt, so the response must tokenize to the *same ids* in both contexts (method page §2). With one
token per character no merge can cross the prompt/response boundary, so that holds by construction; and
digits as single tokens suit the counting task (a BPE vocabulary learned on a small corpus would merge
arbitrary digit pairs). The vocabulary is the corpus's character set, in code-point order (so it does not
depend on frequency ties), after the special tokens ``[UNK]``, ``<s>``, ``</s>``, ``<pad>``. Like Llama's
tokenizer, it adds ``<s>`` in front of every encoded text unless ``add_special_tokens=False``.

Everything is a function of the corpus and the seed: the same inputs give byte-identical files.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

UNK, BOS, EOS, PAD = "[UNK]", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)


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


def build_model(tokenizer: PreTrainedTokenizerFast, shape: ModelShape, seed: int) -> LlamaForCausalLM:
    """A random-init Llama sized by ``shape``; the global torch RNG is left as it was."""
    import torch  # deferred: keeps `cutalign --help` fast
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


@dataclass(frozen=True)
class InitResult:
    """What ``init_model`` wrote: the directory, the model's parameter count, the tokenizer's size."""

    path: Path
    parameters: int
    vocab_size: int


def init_model(
    corpus: str, out_dir: str | Path, shape: ModelShape = ModelShape(), seed: int = 0
) -> InitResult:
    """Build tokenizer and model from ``corpus`` text and save both to ``out_dir`` (must be empty or new)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new directory or empty it first")
    tokenizer = build_char_tokenizer(corpus, max_length=shape.max_positions)
    model = build_model(tokenizer, shape, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    result = InitResult(out, model.num_parameters(), len(tokenizer))
    log.info(
        "saved a %d-parameter Llama (%s, vocabulary %d) to %s",
        result.parameters,
        shape,
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
) -> None:
    """Create a small random-init Llama with a character-level tokenizer trained on CORPUS, saved to OUT.

    AutoModelForCausalLM / AutoTokenizer.from_pretrained load OUT: a base model for the demo and tests.
    """
    try:
        shape = ModelShape(layers, hidden_size, heads, intermediate_size, max_positions)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    try:
        result = init_model(corpus.read_text(encoding="utf-8"), out, shape, seed)
    except (FileExistsError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e
    typer.echo(
        f"wrote {result.path}: Llama with {result.parameters:,} parameters, vocabulary {result.vocab_size}"
    )


def register(app: typer.Typer) -> None:
    """Add ``init-model`` to the ``cutalign`` CLI."""
    app.command("init-model")(init_model_command)
