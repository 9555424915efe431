"""Prometheus metrics of judging, labelled by judge id (shared by the Kafka service and the KServe model).

The positive rate is ``rate(cutalign_judge_judgments_total{polarity="positive"}) /
rate(cutalign_judge_judgments_total)``; judgments/s is the rate of the same counter.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JUDGMENTS = Counter(
    "cutalign_judge_judgments_total", "Judgments published, by judge and polarity.", ["judge", "polarity"]
)
CALL_SECONDS = Histogram(
    "cutalign_judge_call_seconds",
    "Wall time of one judge call, successful or not.",
    ["judge"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
FAILURES = Counter(
    "cutalign_judge_failures_total",
    "Failed judge calls, by judge and reason (the exception type; JudgeTimeout past the deadline).",
    ["judge", "reason"],
)
DEAD_LETTERS = Counter(
    "cutalign_judge_dead_letters_total",
    "Samples dead-lettered instead of judged, by reason.",
    ["judge", "reason"],
)


def record_call(judge_id: str, seconds: float, error: BaseException | None) -> None:
    CALL_SECONDS.labels(judge_id).observe(seconds)
    if error is not None:
        FAILURES.labels(judge_id, type(error).__name__).inc()


def polarity_label(positive: bool) -> str:
    return "positive" if positive else "negative"
