"""Pure steps of the generator: validate and format a prompt, name and seed its samples, build a Sample.

Kept free of I/O so the rules are easy to read and test: what is rejected (and with which dead-letter reason),
how over-long prompts are truncated (and recorded), and how sample ids and seeds are derived —
deterministically from the prompt id, so a prompt regenerated after a redelivery yields the same sample ids
(and, with the same policy and seed, the same sampled text), which lets downstream consumers deduplicate by
sample id.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from cutalign.bus.runner import Rejection
from cutalign.checks import has_visible_text, id_problem, oversize_field
from cutalign.config import PolicySettings
from cutalign.policy.client import Completion
from cutalign.templates import Request, join_input, request_chars
from cutalign.v1 import common_pb2, messages_pb2

Render = Callable[[str, str], Request]  # (instruction, input) -> what is sent: PolicyClient.request


@dataclass(frozen=True)
class Prepared:
    prompt: Request  # what is sent to the policy: the rendered prompt, or chat messages
    truncated: bool


def prepare_prompt(
    prompt: messages_pb2.Prompt, policy: PolicySettings, iteration: int, render: Render, max_text_bytes: int
) -> Prepared | Rejection:
    """Render ``prompt`` with ``render`` (the client's template), or say why it cannot be generated for.

    ``iteration`` is the one iteration this generator serves; 0 accepts every prompt's own iteration. The
    prompt id must make valid sample ids (printable, bounded: see ``cutalign.checks``), and its texts must fit
    ``kafka.max_text_bytes``, or the judge and builder would refuse every sample of it.
    """
    if not prompt.id:
        return Rejection(
            "missing_prompt_id", "a Prompt needs an id: sample ids and deduplication derive from it"
        )
    problem = id_problem(sample_id(prompt.id, policy.n - 1), "the sample id derived from prompt.id")
    if problem is not None:
        return Rejection("invalid_id", problem)
    if not has_visible_text(prompt.instruction):
        return Rejection("empty_prompt", f"prompt {prompt.id} has an empty instruction")
    oversize = oversize_field((("instruction", prompt.instruction), ("input", prompt.input)), max_text_bytes)
    if oversize is not None:
        return Rejection("oversize_text", f"prompt {prompt.id}: {oversize}")
    if iteration and prompt.iteration not in (0, iteration):
        return Rejection(
            "iteration_mismatch",
            f"prompt {prompt.id} is for iteration {prompt.iteration}; this generator serves {iteration} only "
            "(CUTALIGN_GENERATOR_ITERATION=0 follows each prompt's iteration)",
        )
    request = render(prompt.instruction, prompt.input)
    size = request_chars(request)
    if size <= policy.max_prompt_chars:
        return Prepared(request, truncated=False)
    if not policy.truncate_long_prompts:
        return Rejection(
            "prompt_too_long",
            f"prompt {prompt.id} formats to {size} characters, over policy.max_prompt_chars="
            f"{policy.max_prompt_chars} (set policy.truncate_long_prompts to truncate instead)",
        )
    budget = policy.max_prompt_chars - request_chars(render("", ""))
    if budget <= 0:
        return Rejection(
            "prompt_too_long", f"the {policy.template!r} template alone exceeds max_prompt_chars"
        )
    # keep the template whole (the model must still see "### Response:"); cut the user's text at its end
    return Prepared(render(join_input(prompt.instruction, prompt.input)[:budget], ""), truncated=True)


def sample_id(prompt_id: str, index: int) -> str:
    return f"{prompt_id}#{index}"


def sample_seed(base_seed: int, sid: str) -> int:
    """A 63-bit seed derived from the base seed and the sample id: stable across restarts and machines."""
    digest = hashlib.sha256(f"{base_seed}:{sid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def build_sample(
    prompt: messages_pb2.Prompt,
    index: int,
    completion: Completion,
    version: common_pb2.PolicyVersion,
    iteration: int,
    truncated: bool,
) -> messages_pb2.Sample:
    return messages_pb2.Sample(
        id=sample_id(prompt.id, index),
        prompt=prompt,
        response=completion.text,
        params=completion.params,
        policy=version,
        finish_reason=completion.finish_reason,
        generated_tokens=completion.generated_tokens,
        prompt_truncated=truncated,
        created_at_ms=int(time.time() * 1000),
        iteration=iteration or prompt.iteration,  # 0: the prompt's own iteration
    )
