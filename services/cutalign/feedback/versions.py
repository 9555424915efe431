"""Which policy versions production feedback may be about.

Feedback trains the policy that produced the response (CUT is on-policy: the Misalign term pushes down
tokens *this* policy found likely), so an event must name the checkpoint sha256 of the policy that answered
the user, and it must be one we know. Known versions come from ``feedback.known_policy_versions`` when set,
else from the promoted release ``policy/current.json`` in S3 (re-read every ``policy_refresh_s``), whose full
``PolicyVersion`` (model id, iteration, URI) is then recorded on the sample.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cutalign.config import FeedbackSettings
from cutalign.policy.promotion import current_release
from cutalign.store import ArtifactStore
from cutalign.v1 import common_pb2

log = logging.getLogger(__name__)


class KnownVersions:
    """``lookup(sha256)``: the known ``PolicyVersion`` or None. S3 errors propagate (the app answers 503)."""

    def __init__(
        self,
        settings: FeedbackSettings,
        store: ArtifactStore | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.known_policy_versions and store is None:
            raise ValueError(
                "feedback needs known policy versions: set CUTALIGN_FEEDBACK_KNOWN_POLICY_VERSIONS or give "
                "the S3 store holding policy/current.json (CUTALIGN_S3_*)"
            )
        self._static = {
            sha: common_pb2.PolicyVersion(checkpoint_sha256=sha) for sha in settings.known_policy_versions
        }
        self._store = store
        self._refresh_s = settings.policy_refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: dict[str, common_pb2.PolicyVersion] = {}
        self._read_at: float | None = None

    def lookup(self, sha256: str) -> common_pb2.PolicyVersion | None:
        if self._static:
            return self._static.get(sha256)
        return self._promoted().get(sha256)

    def describe(self) -> str:
        """Which versions are accepted, for the 422 reason."""
        if self._static:
            return "feedback.known_policy_versions"
        known = sorted(self._promoted())
        return f"the promoted policy {known[0]}" if known else "none (policy/current.json does not exist)"

    def _promoted(self) -> dict[str, common_pb2.PolicyVersion]:
        assert self._store is not None
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._refresh_s:
                release = current_release(self._store)
                self._cached = {release.version.checkpoint_sha256: release.version} if release else {}
                self._read_at = now
                log.info("promoted policy read", extra={"versions": sorted(self._cached)})
            return self._cached
