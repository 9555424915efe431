"""The online loop in one process: the pipeline's steps without the broker and the services.

Per iteration, exactly what the pipeline does, with the same step functions and the same bucket layout:

1. record the iteration's fresh prompts (``prompts.record_prompt_set``);
2. generate and judge them with the current policy (``respond``) — the generator and judge services' work;
3. turn the judgments into training examples through the target builder's own validation
   (``builder.validate.process``) and write them as a shard (``builder.shards.write_shard``);
4. seal the iteration with the builder's Align-P downsampling (``seal``);
5. train the candidate on the sealed manifest (``train.train_local``);
6. evaluate and gate it (``assess.assess_candidate``), and promote it (``promote.promote_candidate``).

The record of each iteration is then read back from the bucket (``record.read_record``), as the pipeline
driver does. So the trainer has one data path (a sealed manifest, one reader, one downsampler) whichever
driver ran, and an arm of an experiment differs from another only in its objective.

An iteration with nothing the objective can train on (SFT when every response was wrong; every judgment
rejected) keeps its policy, is not promoted, and its record says 0 steps.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cutalign.builder.seal import EmptyIteration
from cutalign.builder.shards import write_shard
from cutalign.builder.validate import Accepted, process
from cutalign.bus import Envelope
from cutalign.config import BuilderSettings, IterationSettings, KafkaSettings, TrainerSettings
from cutalign.cut.examples import DataError
from cutalign.generator.process import sample_id
from cutalign.iteration.assess import assess_candidate
from cutalign.iteration.promote import promote_candidate
from cutalign.iteration.prompts import PromptSet, prompt_message, record_prompt_set
from cutalign.iteration.record import IterationRecord, read_record
from cutalign.iteration.respond import Judged, respond
from cutalign.iteration.seal import seal
from cutalign.iteration.task import Prompt, Task
from cutalign.iteration.train import run_name, train_local
from cutalign.judges.base import Judge, Judgment
from cutalign.judges.loader import load_judge
from cutalign.judging.service import judgment_message
from cutalign.policy.loading import load_policy
from cutalign.policy.promotion import current_release
from cutalign.store import ArtifactStore
from cutalign.store.layout import eval_key
from cutalign.v1 import common_pb2, messages_pb2, training_pb2

log = logging.getLogger(__name__)

TOPIC = "in-process"  # the shard name's "topic": these judgments never crossed a broker


@dataclass(frozen=True)
class Loop:
    """One run's fixed settings: the trainer (objective included), the builder's Align-P ratio, the gate."""

    trainer: TrainerSettings
    align_p_ratio: float | None  # None keeps every positive
    gate_tolerance: float = 1.0  # the method promotes every iteration (docs/method.md §6)
    model_id: str = "cutalign-policy"


def run_inprocess(
    store: ArtifactStore,
    task: Task,
    prompt_sets: Sequence[Sequence[Prompt]],
    loop: Loop,
    *,
    on_record: Callable[[IterationRecord], None] | None = None,
) -> list[IterationRecord]:
    """Run one iteration per prompt set from the store's current release; returns iterations 1..N."""
    judge = load_judge(task.judge, task.judge_options)
    records = []
    for iteration, prompts in enumerate(prompt_sets, start=1):
        record = run_iteration(store, task, judge, iteration, prompts, loop)
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


def run_iteration(
    store: ArtifactStore, task: Task, judge: Judge, iteration: int, prompts: Sequence[Prompt], loop: Loop
) -> IterationRecord:
    """Steps 1-6 of the module doc for ``iteration``."""
    release = current_release(store)
    if release is None:
        raise RuntimeError(f"{store.uri('')} has no release: record the starting policy first (start_run)")
    policy_uri = release.version.uri
    started = time.perf_counter()
    data = "".join(json.dumps(dict(p)) + "\n" for p in prompts).encode()
    record_prompt_set(store, PromptSet([dict(p) for p in prompts], data, "in-process"), iteration, "train")
    policy = load_policy(policy_uri, s3=store.settings)
    judged = respond(policy, prompts, judge, task.decoding)
    examples = training_examples(judged, iteration, policy.version)
    generated = time.perf_counter()
    seconds = {"generate+judge": generated - started}
    try:
        if not examples:
            raise EmptyIteration(f"iteration {iteration}: every judgment was rejected")
        write_shard(store, iteration, examples)
        builder = BuilderSettings(align_p_ratio=loop.align_p_ratio, seed=loop.trainer.seed)
        sealed = seal(store, iteration, builder=builder)
        trained = train_local(loop.trainer, sealed.manifest_uri, policy_uri, iteration, store=store)
    except (EmptyIteration, DataError) as e:  # nothing to train on: the policy stays as it is
        log.warning("iteration %d: nothing to train on (%s); keeping the policy", iteration, e)
        _keep(store, iteration, release.version.iteration)
        return _timed(read_record(store, iteration, run_name(loop.trainer)), seconds)
    seconds["train"] = time.perf_counter() - generated
    evaluated = time.perf_counter()
    assessment = assess_candidate(
        store,
        iteration=iteration,
        candidate_uri=trained.model_uri,
        starting_policy_uri=policy_uri,
        eval_prompts=task.eval_prompts(),
        judge=judge,
        settings=_eval_settings(task, loop),
        training_metrics_uri=trained.metrics_uri,
    )
    if assessment.decision.passed:
        promote_candidate(
            store,
            iteration=iteration,
            model_uri=trained.model_uri,
            eval_metrics=assessment.metrics(),
            manifest_key=sealed.manifest_key,
            model_id=loop.model_id,
            s3=store.settings,
        )
    record = read_record(store, iteration, run_name(loop.trainer))
    seconds["evaluate"] = time.perf_counter() - evaluated
    record.seconds = seconds
    return record


def training_examples(
    judged: Sequence[Judged], iteration: int, version: common_pb2.PolicyVersion
) -> list[training_pb2.TrainingExample]:
    """The judged responses as the builder turns judgment messages into examples (same validation)."""
    limit = KafkaSettings().max_text_bytes  # the one size limit producers and the builder share
    now = int(time.time() * 1000)
    examples = []
    for offset, j in enumerate(judged):
        prompt = prompt_message(
            {"id": j.prompt_id, "instruction": j.instruction, "input": j.input}, iteration, "train", now
        )
        sample = messages_pb2.Sample(
            id=sample_id(j.prompt_id, 0),
            prompt=prompt,
            response=j.response,
            policy=version,
            finish_reason=j.finish_reason,
            iteration=iteration,
            created_at_ms=now,
        )
        message = judgment_message(sample, _as_judgment(j), j.judge_id, now)
        envelope = Envelope(message, sample.id, TOPIC, 0, offset, value=message.SerializeToString())
        outcome = process(envelope, limit)
        if isinstance(outcome, Accepted):
            examples.append(outcome.example)
        else:
            log.warning(
                "iteration %d: %s rejected: %s (%s)", iteration, sample.id, outcome.reason, outcome.detail
            )
    return examples


def _as_judgment(judged: Judged) -> Judgment:
    return Judgment(judged.judgment, judged.positive, list(judged.error_spans), judged.judge_id)


def _eval_settings(task: Task, loop: Loop) -> IterationSettings:
    decoding = task.decoding
    return IterationSettings(
        gate_tolerance=loop.gate_tolerance,
        eval_template=decoding.template,  # type: ignore[arg-type]
        eval_max_new_tokens=decoding.max_new_tokens,
        eval_batch_size=decoding.batch_size,
        model_id=loop.model_id,
    )


def _keep(store: ArtifactStore, iteration: int, release_iteration: int) -> None:
    """An iteration that trained nothing serves the same policy: its evaluation is the release's."""
    store.put_bytes(
        eval_key(iteration), store.get_bytes(eval_key(release_iteration)), content_type="application/json"
    )


def _timed(record: IterationRecord, seconds: dict[str, float]) -> IterationRecord:
    record.seconds = seconds
    return record
