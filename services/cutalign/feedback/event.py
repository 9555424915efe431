"""A production feedback event: its JSON body, its checks, its polarity, and the Judgment it becomes.

Polarity of an event, in order:

1. ``positive`` (true/false) when the product sends it;
2. else ``rating`` against ``feedback.positive_rating_threshold`` (at or above: positive);
3. else ``POLARITY_UNSPECIFIED`` — published as such, never guessed (``require_polarity`` rejects it instead).

Why not classify unflagged text with the method's "Perfect" rule: that rule is a contract with a judge that
was *told* to answer only "perfect" for a flawless response. Users were told nothing of the kind, so "Great,
thanks!" would read as a negative judgment and its words would drive unlikelihood on a good response. A wrong
label trains the policy against good answers; an unspecified one only costs the example. So the target builder
does not train on ``POLARITY_UNSPECIFIED`` (it dead-letters it, reason ``unknown_polarity``, where it can be
reviewed and replayed), and products that want their unflagged feedback used send a flag or a rating.

A negative event must say in words what is wrong (CUT conditions the response on that text), so a negative
with empty ``feedback`` is refused. A flag that contradicts the rating is refused too. "Empty" means no
*visible* character (``cutalign.checks``): a response of zero-width spaces is empty, as the builder sees it.

Idempotency: the sample id (the judgment's key, by which the builder keeps one judgment) derives from the
authenticated client and ``event_id``, else the request's ``Idempotency-Key`` header, else the event's
content — never from the time of receipt, so a retry of the same request is always the same judgment.

Iteration: the judgment is published with iteration 0 (unassigned); the target builder puts it in the
iteration open when it arrives, so feedback flows into every iteration without reconfiguring anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cutalign.checks import MAX_ID_CHARS, has_visible_text, id_problem
from cutalign.v1 import common_pb2, messages_pb2

SOURCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class FeedbackEvent(BaseModel):
    """The body of ``POST /v1/feedback`` (unknown fields are an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    instruction: str = Field(description="What the user asked (the policy's instruction).")
    input: str = Field("", description="Optional Alpaca-style input, appended after a newline.")
    response: str = Field(description="What the policy answered, exactly as shown to the user.")
    feedback: str = Field("", description="The user's words about the response (required when negative).")
    positive: bool | None = Field(None, description="The user's verdict, when the product asks for one.")
    rating: float | None = Field(
        None, allow_inf_nan=False, description="A rating (e.g. 1-5 stars); compared with the threshold."
    )
    source: str = Field(pattern=SOURCE_PATTERN, description="Which product (or part of one) sent it.")
    timestamp: datetime | None = Field(None, description="When it was given (RFC 3339); default: receipt.")
    policy_version: str = Field(pattern=SHA256_PATTERN, description="sha256 of the policy that answered.")
    user_id: str | None = Field(None, repr=False, description="Hashed with a secret salt, never stored raw.")
    event_id: str | None = Field(
        None,
        max_length=MAX_ID_CHARS,
        description="The product's id of the event: a retry with it is the same judgment.",
    )

    @field_validator("instruction", "response")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not has_visible_text(value):  # the builder could not train on it (missing_instruction, ...)
            raise ValueError("must contain visible text, not only whitespace or invisible characters")
        return value

    @field_validator("event_id")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        problem = id_problem(value, "event_id") if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value


class EventRejected(ValueError):
    """The event is well-formed but cannot become a judgment (HTTP 422); the message is the reason."""


def resolve_polarity(event: FeedbackEvent, threshold: float, *, require: bool) -> messages_pb2.Polarity:
    """The module docstring's rule; raises ``EventRejected`` for contradictions and unusable negatives."""
    from_rating = None if event.rating is None else event.rating >= threshold
    if event.positive is not None and from_rating is not None and event.positive != from_rating:
        raise EventRejected(
            f"positive={str(event.positive).lower()} contradicts rating {event.rating:g} "
            f"(the positive threshold is {threshold:g})"
        )
    verdict = event.positive if event.positive is not None else from_rating
    if verdict is None:
        if require:
            raise EventRejected("send 'positive' or 'rating': this endpoint requires a polarity")
        return messages_pb2.POLARITY_UNSPECIFIED
    if not verdict and not has_visible_text(event.feedback):
        raise EventRejected("a negative feedback needs 'feedback' text that says what is wrong")
    return messages_pb2.POSITIVE if verdict else messages_pb2.NEGATIVE


def hash_user(user_id: str, salt: str) -> str:
    """HMAC-SHA256 of the user id under the secret salt: stable per user, not reversible without the salt."""
    return hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def sample_id(event: FeedbackEvent, *, client: str, user_hash: str, idempotency_key: str | None) -> str:
    """A deterministic id, so a retried request is the same judgment (the builder keeps one per key)."""
    if event.event_id is not None:
        identity: list[object] = [client, event.source, "event", event.event_id]
    elif idempotency_key is not None:
        identity = [client, event.source, "idempotency-key", idempotency_key]
    else:  # the content, with the client's timestamp if it sent one (never the time of receipt)
        identity = [
            client,
            event.source,
            event.policy_version,
            event.instruction,
            event.input,
            event.response,
            event.feedback,
            event.positive,
            event.rating,
            event.timestamp.isoformat() if event.timestamp is not None else None,
            user_hash,
        ]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]
    return f"fb-{digest}#0"


def to_judgment(
    event: FeedbackEvent,
    *,
    polarity: messages_pb2.Polarity,
    policy: common_pb2.PolicyVersion,
    client: str,
    user_salt: str,
    idempotency_key: str | None = None,
    now_ms: int | None = None,
) -> messages_pb2.Judgment:
    """The ``Judgment`` (source ``PRODUCTION_FEEDBACK``, iteration unassigned) that carries ``event``."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    at_ms = int(event.timestamp.timestamp() * 1000) if event.timestamp is not None else now_ms
    user_hash = hash_user(event.user_id, user_salt) if event.user_id is not None else ""
    sid = sample_id(event, client=client, user_hash=user_hash, idempotency_key=idempotency_key)
    prompt = messages_pb2.Prompt(
        id=sid.removesuffix("#0"),
        instruction=event.instruction,
        input=event.input,
        split="train",
        created_at_ms=at_ms,
    )
    sample = messages_pb2.Sample(
        id=sid,
        prompt=prompt,
        response=event.response,
        policy=policy,
        created_at_ms=at_ms,
    )
    judgment = messages_pb2.Judgment(
        sample=sample,
        text=event.feedback,
        polarity=polarity,
        judge_id=f"feedback:{event.source}",
        source=messages_pb2.PRODUCTION_FEEDBACK,
        created_at_ms=now_ms,
        feedback_source=event.source,
        user_hash=user_hash,
    )
    if event.rating is not None:
        judgment.rating = event.rating
    return judgment
