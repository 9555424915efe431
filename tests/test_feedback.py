"""Production feedback ingestion on a real uvicorn server on 127.0.0.1, over the real broker and store."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from cutalign.bus import TypedConsumer, provision_topics
from cutalign.config import FeedbackSettings, KafkaSettings
from cutalign.feedback.app import create_app
from cutalign.feedback.versions import KnownVersions
from cutalign.policy.launcher import free_port
from cutalign.policy.promotion import promote, rollback
from cutalign.store import ArtifactStore
from cutalign.v1 import common_pb2, messages_pb2, training_pb2

TOKEN = "test-feedback-token"
OTHER_TOKEN = "test-feedback-token-of-another-app"
SALT = "test-salt-0123456789"
RAW_USER = "alice@example.com"
SHA_1 = hashlib.sha256(b"policy one").hexdigest()
SHA_2 = hashlib.sha256(b"policy two").hexdigest()
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _promote(store: ArtifactStore, sha: str, iteration: int) -> None:
    version = common_pb2.PolicyVersion(
        model_id="tiny",
        checkpoint_sha256=sha,
        iteration=iteration,
        uri=f"s3://b/iterations/{iteration:04d}/model/",
    )
    promote(store, training_pb2.PolicyRelease(version=version))


def _event(**fields: object) -> dict[str, object]:
    event: dict[str, object] = {
        "instruction": "Count from 3 to 6.",
        "response": "3 4 6",
        "feedback": "It skips 5.",
        "positive": False,
        "source": "chat-web",
        "timestamp": "2026-01-31T12:00:00Z",
        "policy_version": SHA_1,
        "user_id": RAW_USER,
    }
    event.update(fields)
    return {k: v for k, v in event.items() if v is not None}


@dataclass
class Server:
    url: str
    kafka: KafkaSettings


def _serve(settings: FeedbackSettings, kafka: KafkaSettings, store: ArtifactStore | None) -> Iterator[Server]:
    app = create_app(settings, kafka, versions=KnownVersions(settings, store))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield Server(f"http://127.0.0.1:{port}", kafka)
    server.should_exit = True
    thread.join(20)


@pytest.fixture
def server(kafka_settings: KafkaSettings, store: ArtifactStore) -> Iterator[Server]:
    provision_topics(kafka_settings)
    _promote(store, SHA_1, 1)
    settings = FeedbackSettings(
        token=TOKEN,
        client_tokens={"other-app": OTHER_TOKEN},
        user_hash_salt=SALT,
        rate_limit_per_s=0.5,
        rate_limit_burst=40,
        max_body_bytes=4096,
        policy_refresh_s=0.2,
    )
    yield from _serve(settings, kafka_settings, store)


def _judgments(kafka: KafkaSettings, want: int, timeout_s: float = 20.0) -> list:
    got: list = []
    with TypedConsumer(
        kafka,
        group_id=f"reader-{uuid.uuid4().hex[:8]}",
        topics=[kafka.topic_judgments],
        message_type=messages_pb2.Judgment,
        service="test",
    ) as consumer:
        deadline = time.monotonic() + timeout_s
        while len(got) < want and time.monotonic() < deadline:
            got.extend(consumer.poll_batch(500, 0.3))
    return got


def test_accepted_events_are_on_the_judgments_topic_with_polarity_hash_and_policy(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    events = {
        "flag-negative": _event(event_id="e1"),
        "flag-positive": _event(event_id="e2", positive=True, feedback="", response="3 4 5 6"),
        "rating-low": _event(event_id="e3", positive=None, rating=2, feedback="Wrong order."),
        "rating-high": _event(event_id="e4", positive=None, rating=4.5, feedback="Nice."),
        "unflagged": _event(event_id="e5", positive=None, feedback="Great, thanks!", user_id=None),
    }
    answers = {}
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        for name, event in events.items():
            r = client.post("/v1/feedback", json=event, headers={"X-Trace-Id": f"trace-{name}"})
            assert r.status_code == 202, r.text
            answers[name] = r.json()
        retried = client.post("/v1/feedback", json=events["flag-negative"]).json()
    assert retried["sample_id"] == answers["flag-negative"]["sample_id"], (
        "a retry with the event id is the same key"
    )
    assert {n: a["polarity"] for n, a in answers.items()} == {
        "flag-negative": "negative",
        "flag-positive": "positive",
        "rating-low": "negative",
        "rating-high": "positive",
        "unflagged": "unspecified",
    }

    got = _judgments(server.kafka, 6)
    assert len(got) == 6
    by_trace = {e.trace_id: e for e in got}
    user_hash = hmac.new(SALT.encode(), RAW_USER.encode(), hashlib.sha256).hexdigest()
    for name, event in events.items():
        envelope = by_trace[f"trace-{name}"]
        judgment = envelope.message
        assert envelope.key == judgment.sample.id == answers[name]["sample_id"]
        assert judgment.source == messages_pb2.PRODUCTION_FEEDBACK
        assert judgment.feedback_source == "chat-web"
        assert judgment.judge_id == "feedback:chat-web"
        assert judgment.text == event["feedback"]
        assert judgment.sample.prompt.instruction == event["instruction"]
        assert judgment.sample.response == event["response"]
        assert judgment.sample.policy.checkpoint_sha256 == SHA_1
        assert judgment.sample.policy.model_id == "tiny", "the promoted release's full version is recorded"
        assert judgment.sample.iteration == 0, "unassigned: the builder puts it in the open iteration"
        assert judgment.sample.created_at_ms == 1769860800000
        assert judgment.user_hash == ("" if "user_id" not in event else user_hash)
        assert RAW_USER.encode() not in envelope.value, "the raw user id must never be published"
        assert judgment.HasField("rating") == ("rating" in event)
    assert by_trace["trace-rating-low"].message.rating == 2.0
    assert by_trace["trace-unflagged"].message.polarity == messages_pb2.POLARITY_UNSPECIFIED
    assert not any(RAW_USER in r.getMessage() or RAW_USER in str(r.__dict__) for r in caplog.records)


def test_each_bad_request_is_rejected_with_its_status_and_reason(server: Server) -> None:
    good = _event()
    cases = [
        ("no token", {}, json.dumps(good).encode(), 401, "unauthorized"),
        ("bad token", {"Authorization": "Bearer nope"}, json.dumps(good).encode(), 403, "forbidden"),
        ("oversize", AUTH, json.dumps(_event(response="x" * 5000)).encode(), 413, "body_too_large"),
        ("not json", AUTH, b'{"instruction": ', 400, "malformed_body"),
        ("not utf-8", AUTH, json.dumps(good).encode().replace(b"Count", b"C\xffunt"), 400, "malformed_body"),
        ("not an object", AUTH, b"[1, 2]", 400, "malformed_body"),
        ("missing field", AUTH, json.dumps(_event(instruction=None)).encode(), 422, "invalid_event"),
        ("unknown field", AUTH, json.dumps(_event(colour="red")).encode(), 422, "invalid_event"),
        ("wrong type", AUTH, json.dumps(_event(user_id=12345)).encode(), 422, "invalid_event"),
        ("bad source", AUTH, json.dumps(_event(source="a b")).encode(), 422, "invalid_event"),
        ("blank response", AUTH, json.dumps(_event(response=" \n")).encode(), 422, "invalid_event"),
        ("negative, no text", AUTH, json.dumps(_event(feedback="  ")).encode(), 422, "invalid_event"),
        ("contradiction", AUTH, json.dumps(_event(positive=True, rating=1)).encode(), 422, "invalid_event"),
        (
            "unknown policy",
            AUTH,
            json.dumps(_event(policy_version=SHA_2)).encode(),
            422,
            "unknown_policy_version",
        ),
    ]
    with httpx.Client(base_url=server.url) as client:
        for name, headers, body, status, code in cases:
            r = client.post(
                "/v1/feedback", content=body, headers={**headers, "Content-Type": "application/json"}
            )
            assert (r.status_code, r.json()["error"]) == (status, code), f"{name}: {r.text}"
            assert r.json()["detail"], name
            if name == "no token":
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            if name == "missing field":
                assert "instruction" in r.json()["detail"]
            if name == "wrong type":
                assert "12345" not in r.text, "a rejected user id must not be echoed"
            if name == "unknown policy":
                assert SHA_1 in r.json()["detail"], "the reason names the accepted version"

        chunked = client.post(
            "/v1/feedback",
            content=iter([b"{" + b" " * 3000, b" " * 3000 + b"}"]),
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert (chunked.status_code, chunked.json()["error"]) == (413, "body_too_large")

        # rotating the body's source does not get a fresh bucket: the limit is per authenticated client, and
        # each request with the token took from it (the 12 refused above and the chunked one): 27 are left
        statuses = [
            client.post("/v1/feedback", json=_event(source=f"flood-{i}"), headers=AUTH) for i in range(45)
        ]
        limited = [r for r in statuses if r.status_code == 429]
        assert [r.status_code for r in statuses[:27]] == [202] * 27, "the rest of the burst is admitted"
        assert limited and all(r.json()["error"] == "rate_limited" for r in limited)
        assert int(limited[0].headers["Retry-After"]) >= 1
        other = client.post("/v1/feedback", json=_event(), headers={"Authorization": f"Bearer {OTHER_TOKEN}"})
        assert other.status_code == 202, "another client's token has its own bucket"

        metrics = client.get("/metrics").text
        assert 'cutalign_feedback_requests_total{outcome="unknown_policy_version"}' in metrics
        assert 'cutalign_feedback_accepted_total{client="other-app",polarity="negative"}' in metrics
        assert "flood-" not in metrics, "no label takes a value the client chooses"
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
    assert len(_judgments(server.kafka, 29, timeout_s=4)) == 28, "no rejected request reached the topic"


def test_newly_promoted_policy_is_accepted_after_refresh_and_concurrent_posts_all_land(
    server: Server, store: ArtifactStore
) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        assert client.post("/v1/feedback", json=_event(policy_version=SHA_2)).status_code == 422
        _promote(store, SHA_2, 2)
        time.sleep(0.3)
        assert (
            client.post("/v1/feedback", json=_event(policy_version=SHA_2, event_id="new")).status_code == 202
        )

    def post(i: int) -> int:
        return httpx.post(
            f"{server.url}/v1/feedback", json=_event(policy_version=SHA_2, event_id=f"c{i}"), headers=AUTH
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, range(30))) == [202] * 30
    got = _judgments(server.kafka, 31)
    assert len({e.key for e in got}) == 31
    assert {e.message.sample.policy.iteration for e in got} == {2}


def test_insecure_configuration_refuses_to_start(kafka_settings: KafkaSettings) -> None:
    versions = KnownVersions(FeedbackSettings(known_policy_versions=[SHA_1]), None)
    with pytest.raises(ValueError, match="CUTALIGN_FEEDBACK_TOKEN"):
        create_app(FeedbackSettings(user_hash_salt=SALT), kafka_settings, versions=versions)
    with pytest.raises(ValueError, match="CUTALIGN_FEEDBACK_USER_HASH_SALT"):
        create_app(FeedbackSettings(token=TOKEN), kafka_settings, versions=versions)


def test_module_entry_point_serves_from_environment_and_stops_on_sigterm(
    kafka_settings: KafkaSettings, env_for: dict[str, str], store: ArtifactStore
) -> None:
    provision_topics(kafka_settings)
    port = free_port()
    env = {
        **env_for,
        "CUTALIGN_FEEDBACK_TOKEN": TOKEN,
        "CUTALIGN_FEEDBACK_USER_HASH_SALT": SALT,
        "CUTALIGN_FEEDBACK_KNOWN_POLICY_VERSIONS": json.dumps([SHA_1]),
        "CUTALIGN_FEEDBACK_HOST": "127.0.0.1",
        "CUTALIGN_FEEDBACK_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cutalign.feedback.app"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/feedback", json=_event(), headers=AUTH)
        assert r.status_code == 202, r.text
        bad = httpx.post(
            f"http://127.0.0.1:{port}/v1/feedback", json=_event(positive=True, rating=1), headers=AUTH
        )
        assert bad.status_code == 422
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), stderr[
        -2000:
    ]  # uvicorn re-raises the signal once drained
    assert "Application shutdown complete" in stderr, "SIGTERM must shut down gracefully (producer flushed)"
    assert RAW_USER not in stderr, "the raw user id must never be logged"
    assert '"reason": "invalid_event"' in stderr, "rejections are logged as JSON with their reason"
    assert len(_judgments(kafka_settings, 1)) == 1


# -- faults found by trying the endpoint harder (issue: reliability under faults, item 5) --------------------


def test_a_retry_without_an_event_id_is_the_same_judgment(server: Server) -> None:
    """Before: a retry without ``event_id`` got a new sample id (from the time of receipt): a duplicate."""
    event = _event(timestamp=None)  # no event id, no client timestamp: the content is the identity
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        first = client.post("/v1/feedback", json=event).json()["sample_id"]
        time.sleep(0.05)
        retried = client.post("/v1/feedback", json=event).json()["sample_id"]
        keyed = [
            client.post("/v1/feedback", json=_event(feedback=text), headers={"Idempotency-Key": "k-1"}).json()
            for text in ("It skips 5.", "It skips 5 (sent again, edited).")
        ]
        bad_key = client.post("/v1/feedback", json=event, headers={"Idempotency-Key": "k" * 300})
    assert first == retried
    assert keyed[0]["sample_id"] == keyed[1]["sample_id"] != first, "the Idempotency-Key is the identity"
    assert (bad_key.status_code, bad_key.json()["error"]) == (400, "invalid_idempotency_key")


def test_content_type_invisible_text_and_tokens_in_the_url_are_handled(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: Content-Type was not checked, a response of zero-width spaces was accepted, and a token sent
    as ``?token=`` was written to the access log."""
    caplog.set_level(logging.INFO)
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        plain = client.post(
            "/v1/feedback", content=json.dumps(_event()), headers={"Content-Type": "text/plain"}
        )
        invisible = client.post("/v1/feedback", json=_event(response="\u200b\u200b\ufeff"))
        invisible_feedback = client.post("/v1/feedback", json=_event(feedback="\u200b \u2060"))
        surrogate = client.post(
            "/v1/feedback",
            content=json.dumps(_event()).replace("3 4 6", "3 \\ud800 6"),
            headers={"Content-Type": "application/json"},
        )
        in_url = client.post("/v1/feedback?token=leaked-secret-123&x=1", json=_event(event_id="url"))
    assert (plain.status_code, plain.json()["error"]) == (415, "unsupported_media_type")
    assert (invisible.status_code, invisible.json()["error"]) == (422, "invalid_event")
    assert "visible text" in invisible.json()["detail"]
    assert (invisible_feedback.status_code, invisible_feedback.json()["error"]) == (422, "invalid_event")
    assert (surrogate.status_code, surrogate.json()["error"]) == (400, "malformed_body"), "not text"
    assert in_url.status_code == 202
    access = [r for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/v1/feedback?[query redacted]" in r.getMessage() for r in access), "the line is logged"
    served = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]  # not the client's
    assert not any("leaked-secret-123" in r.getMessage() + str(r.__dict__) for r in served)


def test_wrong_tokens_are_throttled_per_client_address_and_oversize_text_is_refused(
    kafka_settings: KafkaSettings, store: ArtifactStore
) -> None:
    """Before: wrong-token guesses were never throttled (700 at ~1,000/s)."""
    provision_topics(kafka_settings)
    _promote(store, SHA_1, 1)
    settings = FeedbackSettings(
        token=TOKEN, user_hash_salt=SALT, auth_failure_burst=5, auth_failure_per_s=0.01, max_body_bytes=10**6
    )
    kafka = kafka_settings.model_copy(update={"max_text_bytes": 1000})
    for running in _serve(settings, kafka, store):
        with httpx.Client(base_url=running.url) as client:
            guesses = [
                client.post("/v1/feedback", json=_event(), headers={"Authorization": f"Bearer guess-{i}"})
                for i in range(8)
            ]
            blocked = client.post("/v1/feedback", json=_event(), headers=AUTH)
            metrics = client.get("/metrics").text
    assert [r.status_code for r in guesses] == [403] * 5 + [429] * 3
    assert (
        guesses[-1].json()["error"] == "too_many_auth_failures"
        and int(guesses[-1].headers["Retry-After"]) > 1
    )
    assert blocked.status_code == 429, "while an address is blocked, even the right token is not checked"
    assert 'cutalign_feedback_requests_total{outcome="too_many_auth_failures"}' in metrics

    settings = FeedbackSettings(token=TOKEN, user_hash_salt=SALT, max_body_bytes=10**6)
    for running in _serve(settings, kafka, store):
        too_large = httpx.post(f"{running.url}/v1/feedback", json=_event(response="9 " * 600), headers=AUTH)
    assert (too_large.status_code, too_large.json()["error"]) == (422, "text_too_large")
    assert "kafka.max_text_bytes=1000" in too_large.json()["detail"], "the builder's limit, checked first"


# -- which policy versions feedback may name (issue 13, item 6) ----------------------------------------------


def test_any_release_in_the_window_is_accepted_and_the_served_base_before_the_first(
    store: ArtifactStore,
) -> None:
    base = hashlib.sha256(b"base").hexdigest()
    served = common_pb2.PolicyVersion(model_id="base", checkpoint_sha256=base)  # what the server reports
    settings = FeedbackSettings(release_window=3, policy_refresh_s=1e-9)
    versions = KnownVersions(settings, store, served=lambda: served)
    assert versions.lookup(base) == served, "before the first promotion: the served base model"

    shas = [hashlib.sha256(f"release {i}".encode()).hexdigest() for i in range(1, 6)]
    for i, sha in enumerate(shas, start=1):
        _promote(store, sha, i)
    accepted = [versions.lookup(sha) is not None for sha in shas]
    assert accepted == [False, False, True, True, True], "the 3 most recent releases (a rollout's too)"
    assert versions.lookup(base) is None, "once there are releases, the base is just an old version"
    assert versions.lookup(shas[4]).iteration == 5, "the release's full version is recorded"

    rollback(store, 1)
    assert versions.lookup(shas[0]) is not None, "the release rolled back to is served, so accepted"
