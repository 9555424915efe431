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
with empty ``feedback`` is refused. A flag that contradicts the rating is refused too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    source: str = Field(pattern=SOURCE_PATTERN, description="Which product sent it; rate-limited per source.")
    timestamp: datetime | None = Field(None, description="When it was given (RFC 3339); default: receipt.")
    policy_version: str = Field(pattern=SHA256_PATTERN, description="sha256 of the policy that answered.")
    user_id: str | None = Field(None, repr=False, description="Hashed with a secret salt, never stored raw.")
    event_id: str | None = Field(
        None,
        max_length=200,
        description="The product's id of the event: a retry with it is the same judgment.",
    )

    @field_validator("instruction", "response")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():  # the builder could not train on it (missing_instruction / empty_response)
            raise ValueError("must contain text, not only whitespace")
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
    if not verdict and not event.feedback.strip():
        raise EventRejected("a negative feedback needs 'feedback' text that says what is wrong")
    return messages_pb2.POSITIVE if verdict else messages_pb2.NEGATIVE


def hash_user(user_id: str, salt: str) -> str:
    """HMAC-SHA256 of the user id under the secret salt: stable per user, not reversible without the salt."""
    return hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def sample_id(event: FeedbackEvent, user_hash: str, timestamp_ms: int) -> str:
    """A deterministic id, so a retried request is the same judgment (the builder keeps one per key)."""
    if event.event_id is not None:
        identity: list[object] = [event.source, event.event_id]
    else:
        identity = [
            event.source,
            event.policy_version,
            event.instruction,
            event.input,
            event.response,
            event.feedback,
            event.positive,
            event.rating,
            timestamp_ms,
            user_hash,
        ]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]
    return f"fb-{digest}#0"


def to_judgment(
    event: FeedbackEvent,
    *,
    polarity: messages_pb2.Polarity,
    policy: common_pb2.PolicyVersion,
    iteration: int,
    user_salt: str,
    now_ms: int | None = None,
) -> messages_pb2.Judgment:
    """The ``Judgment`` (source ``PRODUCTION_FEEDBACK``) that carries ``event`` on the judgments topic."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    at_ms = int(event.timestamp.timestamp() * 1000) if event.timestamp is not None else now_ms
    user_hash = hash_user(event.user_id, user_salt) if event.user_id is not None else ""
    sid = sample_id(event, user_hash, at_ms)
    prompt = messages_pb2.Prompt(
        id=sid.removesuffix("#0"),
        instruction=event.instruction,
        input=event.input,
        iteration=iteration,
        split="train",
        created_at_ms=at_ms,
    )
    sample = messages_pb2.Sample(
        id=sid,
        prompt=prompt,
        response=event.response,
        policy=policy,
        created_at_ms=at_ms,
        iteration=iteration,
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
