"""Warm starts: supervised training on plain examples and judgment-conditioned ("judged") examples.

Why (docs/method.md §8): CUT assumes a policy that does the task fairly well and *reads judgments* — a
judgment of a response must make that response's blamed tokens more likely than the plain prompt does. A model
that never saw a judgment prompt does not. A warm start teaches it: plain examples (the task under the plain
prompt) and judged examples (a judgment, then the very response it describes). The demo builds such data by
hand for counting (``cutalign.demo.task.warm_start_examples``); ``cutalign.reading.examples`` builds it for
any task from the model's own samples and the task's judge.

The loss is MLE on every response token in the example's own context — plain examples after the plain prompt,
judged examples after the judgment prompt. None of the trainer's objectives is that (``sft`` drops judged
examples, ``hindsight`` puts every example under the judgment prompt, ``cut`` adds Misalign rows), so this
small loop drives the trainer's own pieces: its tokenization (``ExampleTokenizer``: same templates, EOS and
label masking as every later iteration), its collator, its length-grouped batch order and its response
log-probabilities. Full fine-tuning with AdamW and a cosine schedule, as a from-scratch model needs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import get_cosine_schedule_with_warmup

from cutalign.config import TrainerSettings
from cutalign.cut import sampling
from cutalign.cut.collator import CutCollator, ExampleTokenizer, RowPlan
from cutalign.cut.examples import CutExample
from cutalign.cut.loss import response_logprobs
from cutalign.cut.modeling import load_model, load_tokenizer, merged_model, trainable_parameters
from cutalign.reading.settings import WarmStartSettings

log = logging.getLogger(__name__)

# "positives" (plain examples) under the plain prompt, "negatives" (judged examples) under the judgment
# prompt: a judged example is a CutExample with positive=False and its judgment, whatever its correctness
WARM_START_PLAN = RowPlan(positive_mle="plain", negative_mle="judged", negative_misalign=False)


def _adapter(settings: WarmStartSettings) -> TrainerSettings:
    """The trainer's model settings for a warm start: LoRA or full, float32, no dropout."""
    r = settings.lora_r
    return TrainerSettings(lora=settings.lora, lora_r=r, lora_alpha=r, lora_dropout=0.0, dtype="float32")


def plain(sample_id: str, instruction: str, response: str, input: str = "") -> CutExample:
    """A plain example: the response after the plain prompt."""
    return CutExample(sample_id, instruction, input, response, "", True)


def judged(sample_id: str, instruction: str, response: str, judgment: str, input: str = "") -> CutExample:
    """A judged example: the response after the judgment prompt holding ``judgment``."""
    return CutExample(sample_id, instruction, input, response, judgment, False)


def warm_start(
    model_dir: Path,
    examples: Sequence[CutExample],
    settings: WarmStartSettings,
    out_dir: Path,
    *,
    threads: int | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> float:
    """Train the model in ``model_dir`` on ``examples``, save it with its tokenizer to ``out_dir``.

    ``on_step(step, total, loss)`` reports progress. Returns the mean loss of the last 10% of the steps.
    """
    if threads:
        torch.set_num_threads(threads)
    tokenizer = load_tokenizer(model_dir)
    tokenize = ExampleTokenizer(tokenizer, settings.template, cutoff=tokenizer.model_max_length)
    dataset = [tokenize(ex) for ex in examples]
    collator = CutCollator(WARM_START_PLAN, pad_id=tokenizer.pad_token_id)
    lengths = [len(ex.judged_ids if not ex.positive else ex.plain_ids) for ex in dataset]
    per_epoch = sampling.steps_per_epoch(len(dataset), settings.batch_size)
    total = max(1, math.ceil(settings.epochs * per_epoch))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = load_model(model_dir, _adapter(settings), torch.device("cpu"))
        model.train()
        params = list(trainable_parameters(model).values())
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
        scheduler = get_cosine_schedule_with_warmup(
            optimizer, math.ceil(settings.warmup_ratio * total), total
        )
        started, losses = time.perf_counter(), []
        batches: list[list[int]] = []
        for step in range(total):
            epoch, index = divmod(step, per_epoch)
            if index == 0:
                batches = sampling.epoch_batches(
                    lengths, settings.seed, epoch, settings.batch_size, settings.group_by_length
                )
            batch = collator([dataset[i] for i in batches[index]])
            assert batch.mle is not None  # every warm-start example has an MLE row
            logits = model(
                input_ids=batch.mle.input_ids, attention_mask=batch.mle.attention_mask, use_cache=False
            ).logits
            logp, _ = response_logprobs(logits, batch.mle.labels)
            loss = -logp.mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if on_step is not None:
                on_step(step + 1, total, losses[-1])
    tail = losses[-max(1, total // 10) :]
    log.info(
        "warm start: %d steps of %d examples in %.0f s, final loss %.3f",
        total,
        settings.batch_size,
        time.perf_counter() - started,
        sum(tail) / len(tail),
    )
    model = merged_model(model).eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return sum(tail) / len(tail)
