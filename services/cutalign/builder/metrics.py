"""The target builder's Prometheus metrics (default registry, served on ``/metrics``).

Module-level so they are registered once per process, however many builders a test or the demo runs in it.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONSUMED = Counter("cutalign_builder_consumed_total", "Judgment messages decoded and processed.")
EXAMPLES = Counter("cutalign_builder_examples_total", "Training examples published in shards.", ["kind"])
DUPLICATES = Counter("cutalign_builder_duplicates_total", "Judgments whose sample id already had an example.")
DEAD_LETTERED = Counter(
    "cutalign_builder_dead_lettered_total",
    "Judgments sent to the dead-letter topic, by reason ('malformed': rejected by the bus before decoding).",
    ["reason"],
)
LATE_MOVED = Counter("cutalign_builder_late_moved_total", "Late judgments moved to the open iteration.")
SHARDS = Counter("cutalign_builder_shards_total", "Shards published (with their manifests).")
SEALS = Counter("cutalign_builder_seals_total", "Iterations sealed by this builder, by trigger.", ["trigger"])
FLUSH_SECONDS = Histogram("cutalign_builder_flush_seconds", "Time to publish all buffered shards.")
LAG = Gauge("cutalign_builder_lag", "Messages between the group's position and the end of its partitions.")
BUFFERED = Gauge("cutalign_builder_buffered", "Examples buffered, not yet durable.")
OPEN_ITERATION = Gauge("cutalign_builder_open_iteration", "The iteration judgments are built into.")
