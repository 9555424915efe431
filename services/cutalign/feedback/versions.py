"""Which policy versions production feedback may be about.

Feedback trains the policy that produced the response (CUT is on-policy: the Misalign term pushes down
tokens *this* policy found likely), so an event must name the checkpoint sha256 of the policy that answered
the user, and it must be one that was released. Accepted, re-read every ``policy_refresh_s``:

* the ``feedback.release_window`` most recent releases of the store's release history
  (``policy/releases/``) and the one ``policy/current.json`` points at (after a rollback, an older one):
  clients that cache a version, a rollout where old and new pods answer side by side, and feedback given a
  while ago all name one of these;
* before the first promotion (no release yet), the version the policy server serves — the base model — as
  the generator pins it;
* ``feedback.known_policy_versions``, when set, in addition (e.g. a base model served elsewhere).

The full ``PolicyVersion`` of a release (model id, iteration, URI) is recorded on the sample.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cutalign.config import FeedbackSettings
from cutalign.policy.client import PolicyError
from cutalign.policy.promotion import current_release, recent_releases
from cutalign.store import ArtifactStore
from cutalign.v1 import common_pb2

log = logging.getLogger(__name__)

ServedVersion = Callable[[], common_pb2.PolicyVersion]


class KnownVersions:
    """``lookup(sha256)``: the known ``PolicyVersion`` or None. S3 errors propagate (the app answers 503)."""

    def __init__(
        self,
        settings: FeedbackSettings,
        store: ArtifactStore | None,
        *,
        served: ServedVersion | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.known_policy_versions and store is None:
            raise ValueError(
                "feedback needs known policy versions: give the S3 store holding the release history "
                "(CUTALIGN_S3_*) or set CUTALIGN_FEEDBACK_KNOWN_POLICY_VERSIONS"
            )
        self._static = {
            sha: common_pb2.PolicyVersion(checkpoint_sha256=sha) for sha in settings.known_policy_versions
        }
        self._store = store
        self._served = served
        self._window = settings.release_window
        self._refresh_s = settings.policy_refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: dict[str, common_pb2.PolicyVersion] = {}
        self._read_at: float | None = None

    def lookup(self, sha256: str) -> common_pb2.PolicyVersion | None:
        return self._known().get(sha256) or self._static.get(sha256)

    def describe(self) -> str:
        """Which versions are accepted, for the 422 reason."""
        known = sorted(set(self._known()) | set(self._static))
        return ", ".join(known) if known else "none yet (no release, and the policy server reports none)"

    def _known(self) -> dict[str, common_pb2.PolicyVersion]:
        if self._store is None:
            return {}
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._refresh_s:
                self._cached = self._read(self._store)
                self._read_at = now
                log.info("accepted policy versions read", extra={"versions": sorted(self._cached)})
            return self._cached

    def _read(self, store: ArtifactStore) -> dict[str, common_pb2.PolicyVersion]:
        releases = recent_releases(store, self._window)
        current = current_release(store)
        versions = [r.version for r in releases] + ([current.version] if current is not None else [])
        if not versions and self._served is not None:
            versions = self._served_version()
        return {v.checkpoint_sha256: v for v in versions if v.checkpoint_sha256}

    def _served_version(self) -> list[common_pb2.PolicyVersion]:
        assert self._served is not None
        try:
            return [self._served()]
        except PolicyError as e:  # the server may not be up yet: nothing is accepted from it this round
            log.warning("cannot read the served policy version", extra={"error": f"{type(e).__name__}: {e}"})
            return []
