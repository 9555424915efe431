"""The target builder: judgments from Kafka become versioned, checksummed CUT training shards in S3.

Public API: ``run`` (the service loop, in-process), ``seal_iteration`` (write the immutable iteration
manifest), ``read_sealed_examples`` (what a sealed manifest stands for), ``process`` (validate one judgment).
"""

from cutalign.builder.seal import EmptyIteration, read_sealed_examples, seal_iteration
from cutalign.builder.service import RunStats, TargetBuilder, run
from cutalign.builder.shards import ShardConflict
from cutalign.builder.validate import Accepted, Rejection, Rules, process

__all__ = [
    "Accepted",
    "EmptyIteration",
    "Rejection",
    "Rules",
    "RunStats",
    "ShardConflict",
    "TargetBuilder",
    "process",
    "read_sealed_examples",
    "run",
    "seal_iteration",
]
