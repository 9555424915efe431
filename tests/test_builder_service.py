"""The target builder service against the real broker and S3: bad input, restarts, the seal endpoint."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer

from builder_support import (
    builder_settings,
    dead_letters,
    judgment,
    running_builder,
    seal_http,
    wait_committed,
)
from cutalign.builder import Accepted, process, read_sealed_examples
from cutalign.builder.shards import write_shard
from cutalign.builder.wire import LenientJudgment
from cutalign.bus import TypedConsumer, TypedProducer, provision_topics
from cutalign.bus.config import client_config
from cutalign.config import KafkaSettings, S3Settings
from cutalign.store import ArtifactStore, layout
from cutalign.v1 import training_pb2


def _sealed_ids(store: ArtifactStore, iteration: int) -> list[str]:
    """Every sample id of a sealed iteration, downsampled positives included, read back from its shards."""
    manifest = store.get_manifest(layout.iteration_manifest_key(iteration), training_pb2.IterationManifest)
    return [e.sample_id for e in read_sealed_examples(store, manifest)] + list(manifest.excluded_sample_ids)


def test_bad_input_is_dead_lettered_with_distinct_reasons_while_the_builder_keeps_running(
    kafka_settings: KafkaSettings, s3_settings: S3Settings, store: ArtifactStore, unique_name: str
) -> None:
    provision_topics(kafka_settings)
    topic = kafka_settings.topic_judgments
    settings = builder_settings(unique_name, align_p_ratio=1.0)
    with running_builder(kafka_settings, s3_settings, settings, store) as builder:
        with TypedProducer(kafka_settings, service="test") as producer:
            for i in range(10):
                producer.send(topic, judgment(i, positive=i % 2 == 0), key=f"p{i}#0")
            good = judgment(99, positive=False).SerializeToString()
            producer.send_raw(topic, good[:-7], "truncated", "cutalign.v1.Judgment")
            huge = judgment(98, positive=False)
            huge.text = "x" * (5 * 1024 * 1024)
            producer.send(topic, huge, key="huge")
            utf8 = good.replace(b"Count from", b"Count \xc3\x28om")  # same length, invalid UTF-8
            producer.send_raw(topic, utf8, "bad-utf8", "cutalign.v1.Judgment")
        raw = Producer(client_config(kafka_settings, client_suffix="test-raw"))
        for key, schema, version in (
            (b"v2", b"cutalign.v1.Judgment", b"2"),
            (b"prompt", b"cutalign.v1.Prompt", b"1"),
        ):
            raw.produce(topic, good, key=key, headers=[("schema", schema), ("schema-version", version)])
        raw.flush(10)
        with TypedProducer(kafka_settings, service="test") as producer:  # after the bad ones: still built
            for i in range(10, 20):
                producer.send(topic, judgment(i, positive=i % 2 == 0), key=f"p{i}#0")
            for i in range(5):  # re-sent by their producer: no second example
                producer.send(topic, judgment(i, positive=i % 2 == 0), key=f"p{i}#0")
        wait_committed(kafka_settings, unique_name, 10 + 5 + 10 + 5)
        summary = seal_http(builder, 1)
        metrics = httpx.get(f"http://127.0.0.1:{builder.http_port}/metrics").text
        stats = builder.stats

    assert summary["counts_before_downsampling"] == {"ALIGN_P": 10, "ALIGN_N_MISALIGN": 10}
    assert sorted(_sealed_ids(store, 1)) == sorted(f"p{i}#0" for i in range(20))
    assert stats.duplicates == 5 and stats.dead_lettered == 5
    letters = {d.original_key.decode(): d for d in dead_letters(kafka_settings)}
    assert {k: d.reason for k, d in letters.items()} == {
        "truncated": "decode_error",
        "huge": "oversize_text",
        "bad-utf8": "invalid_utf8",
        "v2": "unknown_schema_version",
        "prompt": "wrong_schema",
    }
    assert letters["bad-utf8"].detail == "field sample.prompt.instruction is not valid UTF-8"
    assert letters["huge"].original_value == huge.SerializeToString()  # replayable as it was
    assert 'cutalign_builder_dead_lettered_total{reason="invalid_utf8"}' in metrics
    assert 'cutalign_builder_examples_total{kind="ALIGN_P"}' in metrics


def test_a_restarted_builder_does_not_duplicate_what_a_crashed_one_published(
    kafka_settings: KafkaSettings, s3_settings: S3Settings, store: ArtifactStore, unique_name: str
) -> None:
    provision_topics(kafka_settings)
    topic = kafka_settings.topic_judgments
    with TypedProducer(kafka_settings, service="test") as producer:
        for i in range(60):
            producer.send(topic, judgment(i, positive=i % 3 == 0), key=f"p{i}#0")
    # A builder built and published the first judgments of each partition, then crashed before committing.
    published: dict[int, list[training_pb2.TrainingExample]] = {}
    with TypedConsumer(
        kafka_settings, group_id=f"{unique_name}-crashed", topics=[topic], message_type=LenientJudgment,
        service="crashed",
    ) as crashed:  # fmt: skip
        seen = 0
        while seen < 60:
            for envelope in crashed.poll_batch(100, 0.5):
                seen += 1
                outcome = process(envelope, 65536)
                assert isinstance(outcome, Accepted)
                if envelope.offset < 12:
                    published.setdefault(envelope.partition, []).append(outcome.example)
    for examples in published.values():
        write_shard(store, 1, examples)
    already = sum(len(v) for v in published.values())

    settings = builder_settings(unique_name, align_p_ratio=10.0)
    with running_builder(kafka_settings, s3_settings, settings, store) as builder:
        wait_committed(kafka_settings, unique_name, 60)
        summary = seal_http(builder, 1)
        stats = builder.stats
    assert stats.duplicates == already and stats.examples == 60 - already
    assert summary["duplicates"] == 0  # the ledger kept them out of new shards altogether
    ids = _sealed_ids(store, 1)
    assert sorted(ids) == sorted(f"p{i}#0" for i in range(60))


def test_two_builders_hand_partitions_over_without_loss_or_duplicates(
    kafka_settings: KafkaSettings, s3_settings: S3Settings, store: ArtifactStore, unique_name: str
) -> None:
    """Two builders share the group; one stops mid-stream and the other takes its partitions over."""
    provision_topics(kafka_settings)
    topic = kafka_settings.topic_judgments
    settings = builder_settings(unique_name, align_p_ratio=10.0, shard_max_examples=20, shard_max_seconds=0.1)

    def send(ids: range) -> int:
        """Judgments of ``ids``, every seventh sent twice (a producer retry); returns messages sent."""
        sent = 0
        with TypedProducer(kafka_settings, service="test") as producer:
            for i in ids:
                for _ in range(2 if i % 7 == 0 else 1):
                    producer.send(topic, judgment(i, positive=i % 3 == 0), key=f"p{i}#0")
                    sent += 1
        return sent

    with running_builder(kafka_settings, s3_settings, settings, store) as first:
        with running_builder(kafka_settings, s3_settings, settings, store) as second:
            sent = send(range(300))
            wait_committed(kafka_settings, unique_name, sent)
            assert first.stats.examples and second.stats.examples, "both builders built a share"
            sent += send(range(300, 450))
        sent += send(range(450, 600))  # the second one has left: the first builds everything now
        wait_committed(kafka_settings, unique_name, sent)
        summary = seal_http(first, 1)
    assert first.stats.examples + second.stats.examples == 600
    assert summary["counts_before_downsampling"] == {"ALIGN_P": 200, "ALIGN_N_MISALIGN": 400}
    assert sorted(_sealed_ids(store, 1)) == sorted(f"p{i}#0" for i in range(600))


def test_seal_endpoint_needs_the_admin_token_and_answers_errors_with_the_fix(
    kafka_settings: KafkaSettings,
    s3_settings: S3Settings,
    store: ArtifactStore,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provision_topics(kafka_settings)
    caplog.set_level(logging.INFO)
    with running_builder(kafka_settings, s3_settings, builder_settings(unique_name), store) as builder:
        base = f"http://127.0.0.1:{builder.http_port}"
        auth = {"Authorization": f"Bearer {builder.admin_token}"}
        anonymous = httpx.post(f"{base}/seal?iteration=1")
        wrong = httpx.post(f"{base}/seal?iteration=1", headers={"Authorization": "Bearer guess"})
        bad = [
            httpx.post(f"{base}/seal{query}", headers=auth) for query in ("", "?iteration=x", "?iteration=0")
        ]
        empty = httpx.post(f"{base}/seal?iteration=1", headers=auth, timeout=30)
        future = httpx.post(f"{base}/seal?iteration=5", headers=auth, timeout=30)
        assert httpx.get(f"{base}/readyz").status_code == 200
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert wrong.status_code == 403
    assert [r.status_code for r in bad] == [400, 400, 400]
    assert empty.status_code == 409 and "no published shards" in empty.json()["error"]
    assert future.status_code == 409 and "not open yet" in future.json()["error"]
    # no token configured: one was generated, and the log says only where it is
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert builder.admin_token not in logged
    [record] = [r for r in caplog.records if r.getMessage().startswith("admin token generated; see ")]
    token_file = Path(record.getMessage().removeprefix("admin token generated; see "))
    assert token_file.read_text().strip() == builder.admin_token
    assert token_file.stat().st_mode & 0o777 == 0o600


def test_a_builder_joining_mid_stream_takes_partitions_over_exactly_once(
    kafka_settings: KafkaSettings, s3_settings: S3Settings, store: ArtifactStore, unique_name: str
) -> None:
    """Scale-out: a second builder joins the group over four partitions while judgments stream in; the first
    one's buffers of the partitions it loses are dropped and rebuilt by the new owner."""
    kafka = kafka_settings.model_copy(update={"partitions": 4})
    provision_topics(kafka)
    settings = builder_settings(unique_name, align_p_ratio=10.0, shard_max_examples=25, shard_max_seconds=0.5)

    def send(ids: range) -> None:
        with TypedProducer(kafka, service="test") as producer:
            for i in ids:
                producer.send(kafka.topic_judgments, judgment(i, positive=i % 3 == 0), key=f"p{i}#0")

    with running_builder(kafka, s3_settings, settings, store) as first:
        send(range(200))
        while first.stats.consumed < 100:
            time.sleep(0.01)
        with running_builder(kafka, s3_settings, settings, store) as second:
            send(range(200, 500))
            wait_committed(kafka, unique_name, 500, timeout_s=90)
            assert second.stats.examples, "the joining builder built a share"
        summary = seal_http(first, 1)
    assert first.stats.examples + second.stats.examples == 500, "each judgment built once"
    assert sorted(_sealed_ids(store, 1)) == sorted(f"p{i}#0" for i in range(500))
    assert sum(summary["counts_before_downsampling"].values()) == 500


def test_a_sample_sealed_in_an_earlier_iteration_is_not_trained_on_again(
    kafka_settings: KafkaSettings, s3_settings: S3Settings, store: ArtifactStore, unique_name: str
) -> None:
    """A prompt its producer re-sent after iteration 1 was sealed comes back, through a restarted generator
    that no longer remembers it, as the same sample id in iteration 2: a duplicate, as within an iteration —
    for the ``dedupe_iterations`` sealed iterations before the open one."""
    provision_topics(kafka_settings)
    topic = kafka_settings.topic_judgments
    settings = builder_settings(unique_name, align_p_ratio=10.0)
    with TypedProducer(kafka_settings, service="test") as producer:
        for i in range(10):
            producer.send(topic, judgment(i, positive=i % 2 == 0), key=f"p{i}#0")
    with running_builder(kafka_settings, s3_settings, settings, store) as builder:
        wait_committed(kafka_settings, unique_name, 10)
        seal_http(builder, 1)
        with TypedProducer(kafka_settings, service="test") as producer:
            for i in range(5, 15):  # p5..p9 again (now for iteration 2), p10..p14 new
                producer.send(topic, judgment(i, positive=i % 2 == 0, iteration=2), key=f"p{i}#0")
        wait_committed(kafka_settings, unique_name, 20)
        seal_http(builder, 2)
        stats = builder.stats
    assert sorted(_sealed_ids(store, 1)) == sorted(f"p{i}#0" for i in range(10))
    assert sorted(_sealed_ids(store, 2)) == sorted(f"p{i}#0" for i in range(10, 15))
    assert stats.duplicates == 5
