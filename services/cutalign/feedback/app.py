"""Production feedback ingestion: ``POST /v1/feedback`` turns users' feedback into Judgments on Kafka.

Run: ``python -m cutalign.feedback.app`` (or ``cutalign feedback serve``); settings come from
``CUTALIGN_FEEDBACK_*``, ``CUTALIGN_KAFKA_*``, ``CUTALIGN_S3_*`` (the release history the accepted policy
versions come from, see ``versions``) and ``CUTALIGN_POLICY_*`` (the served version, before the first
release). ``/healthz``, ``/readyz`` and ``/metrics`` are served by the same app; ``/readyz`` says 503 unless
the store is readable, the broker answers and the publisher can publish (a fenced producer is replaced).

Request::

    POST /v1/feedback
    Authorization: Bearer <feedback.token, or one of feedback.client_tokens>
    Content-Type: application/json
    Idempotency-Key: <optional; the same key is the same judgment (used when there is no event_id)>
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
      "policy_version": "<64 hex>",                     required: checkpoint sha256 of the answering policy,
                                                        one of the recent releases (see ``versions``)
      "user_id": "u-123",                               optional; only its salted HMAC is kept
      "event_id": "e-42"                                optional, printable; a retry with it is the same
    }                                                   judgment (else the Idempotency-Key, else the content)

Answers (every rejection is JSON ``{"error": <code>, "detail": <why>}``):

* ``202`` ``{"status": "accepted", "sample_id", "polarity": "positive"|"negative"|"unspecified", "trace_id"}``
  — only after the Judgment is acknowledged by the broker;
* ``401`` ``unauthorized`` (no bearer token; with ``WWW-Authenticate``), ``403`` ``forbidden`` (a wrong one);
* ``429`` ``too_many_auth_failures`` with ``Retry-After``: this client address failed to authenticate too
  often (``feedback.auth_failure_*``); every request from it is refused until its bucket refills;
* ``415`` ``unsupported_media_type`` (not ``Content-Type: application/json``);
* ``413`` ``body_too_large`` (over ``feedback.max_body_bytes``);
* ``400`` ``malformed_body`` (not UTF-8, not JSON, not an object), ``invalid_idempotency_key``;
* ``422`` ``invalid_event`` (missing/unknown/mistyped fields, a contradictory flag and rating, a negative
  without text, text that is only whitespace or zero-width characters, no polarity when
  ``require_polarity``), ``text_too_large`` (a field over ``kafka.max_text_bytes``, which the builder would
  refuse), ``unknown_policy_version``;
* ``429`` ``rate_limited`` with ``Retry-After`` (token bucket per authenticated client);
* ``503`` ``policy_store_unavailable`` / ``publish_failed``: retry later (with the same ``event_id``).

The polarity rule (flag, else rating threshold, else ``POLARITY_UNSPECIFIED``) and why unflagged feedback is
not guessed are in :mod:`cutalign.feedback.event`. The raw ``user_id`` is never stored, logged or published.

Kafka side (the same contract a producer that skips this endpoint follows; see ``proto/README.md``): a
``cutalign.v1.Judgment`` on the judgments topic, key = ``sample.id`` (``fb-<32 hex>#0``, derived from the
source and ``event_id``, else from the event's content), headers ``schema``/``schema-version``/``trace-id``,
``source = PRODUCTION_FEEDBACK``, ``sample.prompt.instruction``/``input``, ``sample.response``,
``sample.policy`` (the known ``PolicyVersion``), ``sample.iteration = 0`` (the builder assigns the open
iteration), ``text`` = the feedback, ``polarity``, ``rating`` when given, ``feedback_source``, ``user_hash``,
``judge_id = feedback:<source>``.

Access-log lines never carry the query string (a client that sends ``?token=...`` does not get its token
written to the log). Prometheus labels are bounded: the client names configured, the outcome codes above.
"""

from __future__ import annotations

import logging
import math
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

from cutalign.admin_token import bearer_matches
from cutalign.bus import TypedProducer
from cutalign.bus.config import client_config
from cutalign.checks import id_problem, oversize_field
from cutalign.config import FeedbackSettings, KafkaSettings, PolicySettings, S3Settings
from cutalign.feedback.event import EventRejected, FeedbackEvent, resolve_polarity, to_judgment
from cutalign.feedback.publisher import GroupCommitPublisher, PublishFailed
from cutalign.feedback.ratelimit import RateLimiter
from cutalign.feedback.versions import KnownVersions, ServedVersion
from cutalign.observability import configure_logging
from cutalign.store import ArtifactStore, ChecksumMismatch
from cutalign.v1 import common_pb2, messages_pb2

log = logging.getLogger(__name__)

SERVICE = "feedback"
DEFAULT_SALT = "change-me"
DEFAULT_CLIENT = "default"  # the client ``feedback.token`` authenticates
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
    "cutalign_feedback_accepted_total",
    "Accepted feedback by authenticated client (a configured name) and polarity.",
    ["client", "polarity"],
)
LATENCY = Histogram(
    "cutalign_feedback_request_seconds", "Time to answer POST /v1/feedback (incl. the flush)."
)


class Refused(Exception):
    """A request refused with ``status`` and a stable ``code``; ``detail`` says why (never echoes secrets)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def check_settings(settings: FeedbackSettings) -> dict[str, str]:
    """Fail fast on an insecure configuration; returns the bearer token of each client, by client name."""
    tokens = {name: token.get_secret_value() for name, token in settings.client_tokens.items()}
    if settings.token is not None and settings.token.get_secret_value():
        tokens[DEFAULT_CLIENT] = settings.token.get_secret_value()
    if not tokens or not all(tokens.values()):
        raise ValueError(
            "feedback.token is unset: set CUTALIGN_FEEDBACK_TOKEN (from a Secret) to the bearer token, or "
            "CUTALIGN_FEEDBACK_CLIENT_TOKENS to a JSON object of client name -> token"
        )
    if len(set(tokens.values())) != len(tokens):
        raise ValueError("feedback.client_tokens: two clients share a token; give each its own")
    if settings.user_hash_salt.get_secret_value() == DEFAULT_SALT:
        raise ValueError(
            "feedback.user_hash_salt is the default 'change-me': set CUTALIGN_FEEDBACK_USER_HASH_SALT (from "
            "a Secret) to a long random value, or user hashes can be reversed by guessing ids"
        )
    return tokens


class RedactQuery(logging.Filter):
    """Drop the query string from uvicorn's access-log lines: a ``?token=`` never reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?[query redacted]", *args[3:])
        return True


def _redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQuery) for f in access.filters):
        access.addFilter(RedactQuery())


def create_app(
    settings: FeedbackSettings,
    kafka: KafkaSettings,
    *,
    versions: KnownVersions,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The ingestion app; its Kafka producer is flushed when the app shuts down (SIGTERM under uvicorn)."""
    tokens = check_settings(settings)
    salt = settings.user_hash_salt.get_secret_value()
    limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst, clock=clock)
    auth_failures = RateLimiter(settings.auth_failure_per_s, settings.auth_failure_burst, clock=clock)
    _redact_access_log()
    producer = TypedProducer(kafka, service=SERVICE)
    publisher = GroupCommitPublisher(producer, kafka.topic_judgments)
    admin = AdminClient(client_config(kafka, client_suffix=f"{SERVICE}-admin"))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(publisher.close)

    app = FastAPI(title="cutalign feedback ingestion", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(Refused)
    async def rejected(_: Request, exc: Refused) -> JSONResponse:
        REQUESTS.labels(exc.code).inc()
        log.info("feedback rejected", extra={"reason": exc.code, "status": exc.status})
        return JSONResponse({"error": exc.code, "detail": exc.detail}, exc.status, headers=exc.headers)

    @app.post("/v1/feedback", status_code=202)
    async def post_feedback(request: Request) -> dict[str, str]:
        started = time.perf_counter()
        address = request.client.host if request.client is not None else "unknown"
        client = _authenticate(request.headers.get("authorization"), tokens, auth_failures, address)
        wait_s = limiter.acquire(client)
        if wait_s > 0:
            raise Refused(
                429, "rate_limited", f"too many requests from client {client!r}", _retry_after(wait_s)
            )
        _check_content_type(request.headers.get("content-type"))
        idempotency_key = _idempotency_key(request.headers.get("idempotency-key"))
        event = _parse(await _read_body(request, settings.max_body_bytes))
        try:
            polarity = resolve_polarity(
                event, settings.positive_rating_threshold, require=settings.require_polarity
            )
        except EventRejected as e:
            raise Refused(422, "invalid_event", str(e)) from e
        oversize = oversize_field(
            (
                ("instruction", event.instruction),
                ("input", event.input),
                ("response", event.response),
                ("feedback", event.feedback),
            ),
            kafka.max_text_bytes,
        )
        if oversize is not None:
            raise Refused(422, "text_too_large", f"{oversize}: the target builder could not train on it")
        try:
            version = await run_in_threadpool(versions.lookup, event.policy_version)
            if version is None:
                known = await run_in_threadpool(versions.describe)
                raise Refused(
                    422,
                    "unknown_policy_version",
                    f"policy_version {event.policy_version} is not known; accepted: {known}",
                )
        except STORE_ERRORS as e:
            raise Refused(503, "policy_store_unavailable", f"cannot read the promoted policy: {e}") from e
        judgment = to_judgment(
            event,
            polarity=polarity,
            policy=version,
            client=client,
            user_salt=salt,
            idempotency_key=idempotency_key,
        )
        trace_id = request.headers.get("x-trace-id") or uuid.uuid4().hex
        try:
            await run_in_threadpool(publisher.publish, judgment, judgment.sample.id, trace_id)
        except PublishFailed as e:
            raise Refused(503, "publish_failed", str(e)) from e
        polarity_name = POLARITY_NAMES[polarity]
        REQUESTS.labels("accepted").inc()
        ACCEPTED.labels(client, polarity_name).inc()
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
        problem = await run_in_threadpool(_not_ready, versions, admin, kafka.topic_judgments, publisher)
        if problem:
            return PlainTextResponse(f"not ready: {problem}", 503)
        return PlainTextResponse("ready")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def _retry_after(wait_s: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait_s)))}


def _authenticate(header: str | None, tokens: dict[str, str], failures: RateLimiter, address: str) -> str:
    """The client ``header``'s bearer token authenticates; failures are throttled per client address."""
    blocked_s = failures.wait_s(address)
    if blocked_s > 0:  # guessing tokens: refused before the token is even looked at
        raise Refused(
            429,
            "too_many_auth_failures",
            "too many failed authentications from this address; retry later",
            _retry_after(blocked_s),
        )
    matches = {name: bearer_matches(header, token) for name, token in tokens.items()}  # constant time each
    client = next((name for name, ok in matches.items() if ok), None)
    if client is not None:
        return client
    failures.acquire(address)
    if None in matches.values():
        raise Refused(
            401,
            "unauthorized",
            "send 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": 'Bearer realm="cutalign-feedback"'},
        )
    raise Refused(403, "forbidden", "the bearer token is not valid for this endpoint")


def _check_content_type(header: str | None) -> None:
    media_type = (header or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise Refused(
            415,
            "unsupported_media_type",
            f"send the event as 'Content-Type: application/json' (got {media_type or 'none'!r})",
        )


def _idempotency_key(header: str | None) -> str | None:
    problem = id_problem(header, "the Idempotency-Key header") if header is not None else None
    if problem is not None:
        raise Refused(400, "invalid_idempotency_key", problem)
    return header


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, "body_too_large", f"the body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, "body_too_large", f"the body exceeds the limit of {limit} bytes")
    return bytes(body)


def _parse(body: bytes) -> FeedbackEvent:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Refused(400, "malformed_body", f"the body is not valid UTF-8 (byte {e.start})") from e
    try:
        return FeedbackEvent.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors(
            include_input=False, include_url=False
        )  # never echo the input: it may hold a user id
        if any(err["type"] == "json_invalid" for err in errors) or errors[0]["loc"] == ():
            raise Refused(400, "malformed_body", f"the body is not a JSON object: {errors[0]['msg']}") from e
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors)
        raise Refused(422, "invalid_event", problems) from e


def _not_ready(
    versions: KnownVersions, admin: AdminClient, topic: str, publisher: GroupCommitPublisher
) -> str | None:
    try:
        versions.describe()
    except STORE_ERRORS as e:
        return f"policy store: {e}"
    problem = publisher.probe()
    if problem is not None:
        return f"publisher: {problem}"
    try:
        metadata = admin.list_topics(topic, timeout=2.0)
    except KafkaException as e:
        return f"broker: {e}"
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return f"topic {topic} is not available"
    return None


def build(
    settings: FeedbackSettings,
    kafka: KafkaSettings,
    s3: S3Settings | None,
    served: ServedVersion | None = None,
) -> FastAPI:
    """The app from settings: the release history in ``s3`` (and ``served``, before the first release)."""
    store = ArtifactStore(s3) if s3 is not None else None
    return create_app(settings, kafka, versions=KnownVersions(settings, store, served=served))


def _served_version(policy: PolicySettings) -> ServedVersion:
    """The version the policy server reports (asked once per refresh, only before the first release)."""

    def served() -> common_pb2.PolicyVersion:
        from cutalign.policy.served import read_served  # the HTTP client stack, only when it is asked

        model = read_served(policy.model_copy(update={"max_retries": 0, "timeout_s": 5.0})).base()
        return model.version if model is not None else common_pb2.PolicyVersion()

    return served


def main(**overrides: Any) -> None:
    """Serve on ``feedback.host:feedback.port`` until SIGTERM (uvicorn drains requests, then the producer)."""
    configure_logging(SERVICE)
    settings = FeedbackSettings(**overrides)
    s3 = S3Settings() if S3Settings().access_key is not None else None  # static versions need no store
    app = build(settings, KafkaSettings(), s3, _served_version(PolicySettings()))
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, server_header=False)


if __name__ == "__main__":
    main()
