"""The target builder: judgments from Kafka become versioned, checksummed CUT training shards in S3.

Public API: ``run`` (the service loop, in-process), ``seal_iteration`` (write the immutable iteration
manifest), ``read_sealed_examples`` (what a sealed manifest stands for), ``process`` (validate one judgment)
and ``route`` (which iteration it goes to).
"""

from cutalign.builder.seal import EmptyIteration, read_sealed_examples, seal_iteration
from cutalign.builder.service import RunStats, TargetBuilder, run
from cutalign.builder.shards import ShardConflict
from cutalign.builder.validate import Accepted, Routed, Rules, process, route
from cutalign.bus.runner import Rejection

__all__ = [
    "Accepted",
    "EmptyIteration",
    "Rejection",
    "Routed",
    "Rules",
    "RunStats",
    "ShardConflict",
    "TargetBuilder",
    "process",
    "read_sealed_examples",
    "route",
    "run",
    "seal_iteration",
]
