"""Production feedback ingestion: ``POST /v1/feedback`` turns users' feedback into Judgments on Kafka.

Run: ``python -m cutalign.feedback.app`` (or ``cutalign feedback serve``); settings come from
``CUTALIGN_FEEDBACK_*``, ``CUTALIGN_KAFKA_*`` and, unless ``known_policy_versions`` is set,
``CUTALIGN_S3_*`` (to read the promoted ``policy/current.json``). ``/healthz``, ``/readyz`` and ``/metrics``
are served by the same app.

Request::

    POST /v1/feedback
    Authorization: Bearer <feedback.token>
    Content-Type: application/json
    X-Trace-Id: <optional; follows the judgment through the pipeline>

    {
      "instruction": "Count from 3 to 6.",              required, non-empty
      "input": "",                                      optional Alpaca input
      "response": "3 4 6",                              required, non-empty: what the user was shown
      "feedback": "It skips 5.",                        the user's words; required when negative
      "positive": false,                                optional verdict
      "rating": 1,                                      optional number (e.g. 1-5 stars)
      "source": "chat-web",                             required, [A-Za-z0-9][A-Za-z0-9._-]{0,63}
      "timestamp": "2026-01-31T12:00:00Z",              optional RFC 3339 (default: receipt time)
      "policy_version": "<64 hex>",                     required: checkpoint sha256 of the answering policy
      "user_id": "u-123",                               optional; only its salted HMAC is kept
      "event_id": "e-42"                                optional; a retry with it is the same judgment
    }

Answers (every rejection is JSON ``{"error": <code>, "detail": <why>}``):

* ``202`` ``{"status": "accepted", "sample_id", "polarity": "positive"|"negative"|"unspecified", "trace_id"}``
  — only after the Judgment is acknowledged by the broker;
* ``401`` ``unauthorized`` (no bearer token; with ``WWW-Authenticate``), ``403`` ``forbidden`` (a wrong one);
* ``413`` ``body_too_large`` (over ``feedback.max_body_bytes``);
* ``400`` ``malformed_body`` (not UTF-8, not JSON, not an object);
* ``422`` ``invalid_event`` (missing/unknown/mistyped fields, a contradictory flag and rating, a negative
  without text, no polarity when ``require_polarity``), ``unknown_policy_version``;
* ``429`` ``rate_limited`` with ``Retry-After`` (token bucket per ``source``);
* ``503`` ``policy_store_unavailable`` / ``publish_failed``: retry later (with the same ``event_id``).

The polarity rule (flag, else rating threshold, else ``POLARITY_UNSPECIFIED``) and why unflagged feedback is
not guessed are in :mod:`cutalign.feedback.event`. The raw ``user_id`` is never stored, logged or published.

Kafka side (the same contract a producer that skips this endpoint follows; see ``proto/README.md``): a
``cutalign.v1.Judgment`` on the judgments topic, key = ``sample.id`` (``fb-<32 hex>#0``, derived from the
source and ``event_id``, else from the event's content), headers ``schema``/``schema-version``/``trace-id``,
``source = PRODUCTION_FEEDBACK``, ``sample.prompt.instruction``/``input``, ``sample.response``,
``sample.policy`` (the known ``PolicyVersion``), ``sample.iteration = feedback.iteration``, ``text`` = the
feedback, ``polarity``, ``rating`` when given, ``feedback_source``, ``user_hash``, ``judge_id =
feedback:<source>``.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import urllib3
import uvicorn
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from minio.error import S3Error
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from cutalign.bus import TypedProducer
from cutalign.bus.config import client_config
from cutalign.config import FeedbackSettings, KafkaSettings, S3Settings
from cutalign.feedback.event import EventRejected, FeedbackEvent, resolve_polarity, to_judgment
from cutalign.feedback.publisher import GroupCommitPublisher, PublishFailed
from cutalign.feedback.ratelimit import RateLimiter
from cutalign.feedback.versions import KnownVersions
from cutalign.observability import configure_logging
from cutalign.store import ArtifactStore, ChecksumMismatch
from cutalign.v1 import messages_pb2

log = logging.getLogger(__name__)

SERVICE = "feedback"
DEFAULT_SALT = "change-me"
POLARITY_NAMES = {
    messages_pb2.POSITIVE: "positive",
    messages_pb2.NEGATIVE: "negative",
    messages_pb2.POLARITY_UNSPECIFIED: "unspecified",
}
STORE_ERRORS = (S3Error, urllib3.exceptions.HTTPError, ChecksumMismatch)

REQUESTS = Counter(
    "cutalign_feedback_requests_total", "Feedback requests by outcome (accepted or why not).", ["outcome"]
)
ACCEPTED = Counter(
    "cutalign_feedback_accepted_total", "Accepted feedback by source and polarity.", ["source", "polarity"]
)
LATENCY = Histogram(
    "cutalign_feedback_request_seconds", "Time to answer POST /v1/feedback (incl. the flush)."
)


class Rejection(Exception):
    """A request refused with ``status`` and a stable ``code``; ``detail`` says why (never echoes secrets)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def check_settings(settings: FeedbackSettings) -> str:
    """Fail fast on an insecure configuration; returns the bearer token."""
    if settings.token is None or not settings.token.get_secret_value():
        raise ValueError(
            "feedback.token is unset: set CUTALIGN_FEEDBACK_TOKEN (from a Secret) to the bearer token"
        )
    if settings.user_hash_salt.get_secret_value() == DEFAULT_SALT:
        raise ValueError(
            "feedback.user_hash_salt is the default 'change-me': set CUTALIGN_FEEDBACK_USER_HASH_SALT (from "
            "a Secret) to a long random value, or user hashes can be reversed by guessing ids"
        )
    return settings.token.get_secret_value()


def create_app(
    settings: FeedbackSettings,
    kafka: KafkaSettings,
    *,
    versions: KnownVersions,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The ingestion app; its Kafka producer is flushed when the app shuts down (SIGTERM under uvicorn)."""
    token = check_settings(settings)
    expected_auth = f"Bearer {token}".encode()
    salt = settings.user_hash_salt.get_secret_value()
    limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst, clock=clock)
    producer = TypedProducer(kafka, service=SERVICE)
    publisher = GroupCommitPublisher(producer, kafka.topic_judgments)
    admin = AdminClient(client_config(kafka, client_suffix=f"{SERVICE}-admin"))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(publisher.close)

    app = FastAPI(title="cutalign feedback ingestion", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(Rejection)
    async def rejected(_: Request, exc: Rejection) -> JSONResponse:
        REQUESTS.labels(exc.code).inc()
        log.info("feedback rejected", extra={"reason": exc.code, "status": exc.status})
        return JSONResponse({"error": exc.code, "detail": exc.detail}, exc.status, headers=exc.headers)

    @app.post("/v1/feedback", status_code=202)
    async def post_feedback(request: Request) -> dict[str, str]:
        started = time.perf_counter()
        _authenticate(request.headers.get("authorization"), expected_auth)
        event = _parse(await _read_body(request, settings.max_body_bytes))
        wait_s = limiter.acquire(event.source)
        if wait_s > 0:
            raise Rejection(
                429,
                "rate_limited",
                f"too many requests from source {event.source!r}",
                {"Retry-After": str(max(1, math.ceil(wait_s)))},
            )
        try:
            polarity = resolve_polarity(
                event, settings.positive_rating_threshold, require=settings.require_polarity
            )
        except EventRejected as e:
            raise Rejection(422, "invalid_event", str(e)) from e
        try:
            version = await run_in_threadpool(versions.lookup, event.policy_version)
            if version is None:
                known = await run_in_threadpool(versions.describe)
                raise Rejection(
                    422,
                    "unknown_policy_version",
                    f"policy_version {event.policy_version} is not known; accepted: {known}",
                )
        except STORE_ERRORS as e:
            raise Rejection(503, "policy_store_unavailable", f"cannot read the promoted policy: {e}") from e
        judgment = to_judgment(
            event, polarity=polarity, policy=version, iteration=settings.iteration, user_salt=salt
        )
        trace_id = request.headers.get("x-trace-id") or uuid.uuid4().hex
        try:
            await run_in_threadpool(publisher.publish, judgment, judgment.sample.id, trace_id)
        except PublishFailed as e:
            raise Rejection(503, "publish_failed", str(e)) from e
        polarity_name = POLARITY_NAMES[polarity]
        REQUESTS.labels("accepted").inc()
        ACCEPTED.labels(event.source, polarity_name).inc()
        LATENCY.observe(time.perf_counter() - started)
        return {
            "status": "accepted",
            "sample_id": judgment.sample.id,
            "polarity": polarity_name,
            "trace_id": trace_id,
        }

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        problem = await run_in_threadpool(_not_ready, versions, admin, kafka.topic_judgments)
        if problem:
            return PlainTextResponse(f"not ready: {problem}", 503)
        return PlainTextResponse("ready")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def _authenticate(header: str | None, expected: bytes) -> None:
    if not header or not header.startswith("Bearer "):
        raise Rejection(
            401,
            "unauthorized",
            "send 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": 'Bearer realm="cutalign-feedback"'},
        )
    if not secrets.compare_digest(header.encode(), expected):
        raise Rejection(403, "forbidden", "the bearer token is not valid for this endpoint")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejection(413, "body_too_large", f"the body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Rejection(413, "body_too_large", f"the body exceeds the limit of {limit} bytes")
    return bytes(body)


def _parse(body: bytes) -> FeedbackEvent:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejection(400, "malformed_body", f"the body is not valid UTF-8 (byte {e.start})") from e
    try:
        return FeedbackEvent.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors(
            include_input=False, include_url=False
        )  # never echo the input: it may hold a user id
        if any(err["type"] == "json_invalid" for err in errors) or errors[0]["loc"] == ():
            raise Rejection(
                400, "malformed_body", f"the body is not a JSON object: {errors[0]['msg']}"
            ) from e
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors)
        raise Rejection(422, "invalid_event", problems) from e


def _not_ready(versions: KnownVersions, admin: AdminClient, topic: str) -> str | None:
    try:
        versions.describe()
    except STORE_ERRORS as e:
        return f"policy store: {e}"
    try:
        metadata = admin.list_topics(topic, timeout=2.0)
    except KafkaException as e:
        return f"broker: {e}"
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return f"topic {topic} is not available"
    return None


def build(settings: FeedbackSettings, kafka: KafkaSettings, s3: S3Settings | None) -> FastAPI:
    """The app from settings: S3 is read only when no known versions are configured."""
    store = ArtifactStore(s3) if s3 is not None and not settings.known_policy_versions else None
    return create_app(settings, kafka, versions=KnownVersions(settings, store))


def main(**overrides: Any) -> None:
    """Serve on ``feedback.host:feedback.port`` until SIGTERM (uvicorn drains requests, then the producer)."""
    configure_logging(SERVICE)
    settings = FeedbackSettings(**overrides)
    s3 = None if settings.known_policy_versions else S3Settings()
    app = build(settings, KafkaSettings(), s3)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, server_header=False)


if __name__ == "__main__":
    main()
