"""``POST /seal`` requests, handed from the HTTP thread to the builder loop that answers them.

Why through the loop: only the loop may touch the buffers, and a seal requested on the builder should include
what it has buffered — so the loop flushes, seals and answers, while the HTTP thread waits for the answer.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

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


class SealRequests:
    def __init__(self) -> None:
        self._queue: queue.Queue[SealRequest] = queue.Queue()

    def route(self, params: dict[str, str]) -> tuple[int, bytes]:
        """``POST /seal?iteration=N`` (on the HTTP thread): queue the request, wait for the answer."""
        try:
            iteration = int(params["iteration"])
        except (KeyError, ValueError):
            return 400, json.dumps({"error": "use POST /seal?iteration=N with an integer N"}).encode()
        request = SealRequest(iteration)
        self._queue.put(request)
        if not request.done.wait(ANSWER_TIMEOUT_S):
            return 504, json.dumps({"error": f"no answer within {ANSWER_TIMEOUT_S:.0f}s"}).encode()
        return request.status, json.dumps(request.body).encode()

    def pending(self) -> Iterator[SealRequest]:
        """The requests waiting for an answer (builder loop)."""
        while not self._queue.empty():
            yield self._queue.get_nowait()

    def refuse_all(self, status: int, error: str) -> None:
        for request in self.pending():
            request.answer(status, {"error": error})
