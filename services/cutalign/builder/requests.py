"""``POST /seal`` requests, handed from the HTTP thread to the builder loop that answers them.

Why through the loop: only the loop may touch the buffers, and a seal requested on the builder should include
what it has buffered — so the loop flushes, seals and answers, while the HTTP thread waits for the answer.

The endpoint seals training data, so it always needs the builder's admin token (``Authorization: Bearer``;
see ``cutalign.admin_token``): 401 without one, 403 for a wrong one — checked on the HTTP thread, before the
loop hears of the request. A caller's mistake is a 4xx (400 for a missing or bad iteration), never a 500.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from cutalign.admin_token import bearer_matches
from cutalign.store import ArtifactStore, layout
from cutalign.v1 import training_pb2

ANSWER_TIMEOUT_S = 300.0


@dataclass
class SealRequest:
    iteration: int
    done: threading.Event = field(default_factory=threading.Event)
    status: int = 500
    body: dict[str, object] = field(default_factory=dict)

    def answer(self, status: int, body: dict[str, object]) -> None:
        self.status, self.body = status, body
        self.done.set()


def manifest_summary(store: ArtifactStore, manifest: training_pb2.IterationManifest) -> dict[str, object]:
    """What the seal endpoint and the CLI print about a sealed iteration."""
    return {
        "iteration": manifest.iteration,
        "manifest": store.uri(layout.iteration_manifest_key(manifest.iteration)),
        "shards": len(manifest.shards),
        "counts_by_kind": dict(manifest.counts_by_kind),
        "counts_before_downsampling": dict(manifest.counts_before_downsampling),
        "excluded": len(manifest.excluded_sample_ids),
        "duplicates": len(manifest.duplicate_positions),
        "sealed_by": manifest.sealed_by,
    }


def _answer(
    status: int, body: dict[str, object], headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    return status, json.dumps(body).encode(), headers or {}


class SealRequests:
    def __init__(self, token: str) -> None:
        self._token = token
        self._queue: queue.Queue[SealRequest] = queue.Queue()

    def route(self, params: dict[str, str], headers: Mapping[str, str]) -> tuple[int, bytes, dict[str, str]]:
        """``POST /seal?iteration=N`` (on the HTTP thread): check the token, queue, wait for the answer."""
        authorized = bearer_matches(headers.get("authorization"), self._token)
        if authorized is None:
            return _answer(
                401,
                {"error": "send 'Authorization: Bearer <builder admin token>'"},
                {"WWW-Authenticate": 'Bearer realm="cutalign-builder"'},
            )
        if not authorized:
            return _answer(403, {"error": "the bearer token is not this builder's admin token"})
        raw = params.get("iteration", "")
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            return _answer(400, {"error": f"use POST /seal?iteration=N with an integer N >= 1, got {raw!r}"})
        request = SealRequest(int(raw))
        self._queue.put(request)
        if not request.done.wait(ANSWER_TIMEOUT_S):
            return _answer(504, {"error": f"no answer within {ANSWER_TIMEOUT_S:.0f}s"})
        return _answer(request.status, request.body)

    def pending(self) -> Iterator[SealRequest]:
        """The requests waiting for an answer (builder loop)."""
        while not self._queue.empty():
            yield self._queue.get_nowait()

    def refuse_all(self, status: int, error: str) -> None:
        for request in self.pending():
            request.answer(status, {"error": error})
