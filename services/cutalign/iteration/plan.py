"""Step 0: decide what a pipeline run works on — iteration, prompts, starting policy — from the store.

A run may name everything explicitly (``iteration=3``, ``prompts_uri=...``, ``policy_uri=...``), or nothing,
which is what a KFP *recurring run* does: every firing has the same arguments, so the state must come from the
bucket, not from the arguments ("next" mode):

* **iteration 0** means the next one: the highest sealed iteration again if it has no evaluation yet (its
  run stopped after sealing: train and evaluate on the data already sealed), else the one after it (1 when
  nothing is sealed). An iteration that already has a release (``policy/releases/{i}.json``) is never run
  again: that would overwrite a released model.
* **prompts**: ``prompts_uri`` may contain ``{iteration}`` (``s3://b/prompts/{iteration:04d}.jsonl``);
  left empty, iteration *i* takes rows ``[(i-1)*n, i*n)`` of ``prompt_pool_uri`` (a JSONL pool; ``n`` =
  ``prompts_per_iteration``), so every iteration gets fresh prompts and a retry gets the same ones. Either
  way the set is recorded under ``iterations/{i}/prompts/`` before anything is published.
* **policy**: ``policy_uri``, else the current release (``policy/current.json``), else ``base_policy_uri``
  (the base model, before the first promotion).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from cutalign.iteration.prompts import PromptSet, load_prompt_set, record_prompt_set
from cutalign.policy.promotion import current_release
from cutalign.store import ArtifactStore
from cutalign.store.layout import eval_key, iteration_manifest_key, prompts_key, release_key

log = logging.getLogger(__name__)

ITERATIONS_PREFIX = "iterations/"


class PlanError(ValueError):
    """The run's arguments and the store's state do not determine an iteration to run."""


@dataclass(frozen=True)
class IterationPlan:
    iteration: int
    prompts_uri: str  # the recorded set: s3://bucket/iterations/{i:04d}/prompts/train.jsonl
    policy_uri: str


def iterations_present(store: ArtifactStore) -> list[int]:
    """Numbers of the ``iterations/NNNN/`` prefixes in the bucket (one listing, not recursive)."""
    numbers = []
    for obj in store.client.list_objects(store.bucket, prefix=ITERATIONS_PREFIX, recursive=False):
        name = (obj.object_name or "").removeprefix(ITERATIONS_PREFIX).rstrip("/")
        if name.isdigit():
            numbers.append(int(name))
    return sorted(numbers)


def next_iteration(store: ArtifactStore) -> int:
    """The iteration "next" mode runs (see the module docstring)."""
    sealed = [i for i in iterations_present(store) if store.exists(iteration_manifest_key(i))]
    if not sealed:
        return 1
    last = sealed[-1]
    return last if not store.exists(eval_key(last)) and not store.exists(release_key(last)) else last + 1


def pool_slice(pool: PromptSet, iteration: int, per_iteration: int) -> PromptSet:
    """Iteration ``iteration``'s rows of the pool: rows ``[(i-1)*n, i*n)``, as their own prompt set."""
    start = (iteration - 1) * per_iteration
    rows = pool.rows[start : start + per_iteration]
    if len(rows) < per_iteration:
        raise PlanError(
            f"prompt pool {pool.source} has {len(pool.rows)} prompts: iteration {iteration} needs rows "
            f"{start}..{start + per_iteration - 1}; add prompts to the pool (append only) or lower "
            "prompts_per_iteration"
        )
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    return PromptSet(rows, data, f"{pool.source}[{start}:{start + per_iteration}]")


def resolve_prompts(
    store: ArtifactStore, iteration: int, prompts_uri: str, prompt_pool_uri: str, per_iteration: int
) -> str:
    """Record the iteration's prompt set (once) and return the recorded copy's URI."""
    if prompts_uri:
        source = prompts_uri.format(iteration=iteration)
        record_prompt_set(store, load_prompt_set(source, store), iteration, "train")
    elif prompt_pool_uri:
        if per_iteration < 1:
            raise PlanError("prompts from a pool need prompts_per_iteration >= 1")
        pool = pool_slice(load_prompt_set(prompt_pool_uri, store), iteration, per_iteration)
        record_prompt_set(store, pool, iteration, "train")
    elif not store.exists(prompts_key(iteration)):
        raise PlanError(
            f"iteration {iteration} has no prompts: set prompts_uri (may contain '{{iteration}}') or "
            "prompt_pool_uri and prompts_per_iteration"
        )
    return store.uri(prompts_key(iteration))


def starting_policy(store: ArtifactStore, policy_uri: str, base_policy_uri: str) -> str:
    """``policy_uri``, else the current release's, else ``base_policy_uri``."""
    if policy_uri:
        return policy_uri
    release = current_release(store)
    if release is not None:
        return release.version.uri
    if base_policy_uri:
        return base_policy_uri
    raise PlanError("nothing is released yet: set base_policy_uri (or policy_uri) to the base model")


def plan_iteration(
    store: ArtifactStore,
    *,
    iteration: int,
    prompts_uri: str = "",
    prompt_pool_uri: str = "",
    prompts_per_iteration: int = 0,
    policy_uri: str = "",
    base_policy_uri: str = "",
) -> IterationPlan:
    """What this run works on; records the prompt set. See the module docstring for each rule."""
    if iteration < 0:
        raise PlanError(f"iteration must be >= 1, or 0 for the next one; got {iteration}")
    number = iteration or next_iteration(store)
    if store.exists(release_key(number)):
        raise PlanError(
            f"iteration {number} is already released ({store.uri(release_key(number))}); run the next "
            "one (iteration=0) instead of replacing a released model"
        )
    plan = IterationPlan(
        number,
        resolve_prompts(store, number, prompts_uri, prompt_pool_uri, prompts_per_iteration),
        starting_policy(store, policy_uri, base_policy_uri),
    )
    log.info("planned iteration %d from %s with prompts %s", number, plan.policy_uri, plan.prompts_uri)
    return plan
