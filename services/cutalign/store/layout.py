"""The bucket layout: every artifact's key is derived here, so services never disagree on paths.

```
iterations/{i:04d}/prompts/{split}.jsonl                   prompt set published for iteration i
iterations/{i:04d}/shards/{topic}-{p}-{first}-{last}.jsonl  training shards (TrainingExample JSON lines)
iterations/{i:04d}/shards/{...}.manifest.json              ShardManifest, written after its shard
iterations/{i:04d}/manifest.json                           sealed IterationManifest (written once)
iterations/{i:04d}/checkpoints/{run}/...                   trainer checkpoints (resumable state)
iterations/{i:04d}/model/                                  merged model exported by the trainer
iterations/{i:04d}/metrics/{run}.jsonl                     per-step training metrics
iterations/{i:04d}/eval.json                               held-out evaluation of the candidate policy
policy/releases/{i:04d}.json                               PolicyRelease of every promoted policy
policy/current.json                                        the release the policy server should serve
policy/served/{pod}.json                                   the release a vLLM pod has loaded (its model sync)
models/{name}/                                             base models (cached, e.g. the demo's)
```
Shard names derive from the Kafka topic-partition and offset range they were built from, so rewriting a shard
after a crash produces the same key and the same bytes (idempotent).
"""

from __future__ import annotations

ITERATIONS_PREFIX = "iterations/"  # every iteration's outputs, trained candidates (releases) included


def iteration_prefix(iteration: int) -> str:
    return f"{ITERATIONS_PREFIX}{iteration:04d}/"


def prompts_key(iteration: int, split: str = "train") -> str:
    return f"{iteration_prefix(iteration)}prompts/{split}.jsonl"


def shard_key(iteration: int, topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    return (
        f"{iteration_prefix(iteration)}shards/"
        f"{topic}-{partition:03d}-{first_offset:012d}-{last_offset:012d}.jsonl"
    )


def shard_manifest_key(shard: str) -> str:
    return shard.removesuffix(".jsonl") + ".manifest.json"


def shards_prefix(iteration: int) -> str:
    return f"{iteration_prefix(iteration)}shards/"


def iteration_manifest_key(iteration: int) -> str:
    return f"{iteration_prefix(iteration)}manifest.json"


def checkpoint_prefix(iteration: int, run: str) -> str:
    return f"{iteration_prefix(iteration)}checkpoints/{run}/"


def model_prefix(iteration: int) -> str:
    return f"{iteration_prefix(iteration)}model/"


def metrics_key(iteration: int, run: str) -> str:
    return f"{iteration_prefix(iteration)}metrics/{run}.jsonl"


def eval_key(iteration: int) -> str:
    return f"{iteration_prefix(iteration)}eval.json"


RELEASES_PREFIX = "policy/releases/"


def release_key(iteration: int) -> str:
    return f"{RELEASES_PREFIX}{iteration:04d}.json"


CURRENT_POLICY_KEY = "policy/current.json"
SERVED_PREFIX = "policy/served/"


def served_key(pod: str) -> str:
    return f"{SERVED_PREFIX}{pod}.json"


def base_model_prefix(name: str) -> str:
    return f"models/{name}/"
