"""Policy version safety: generate from the expected policy or not at all.

Samples of iteration k must come from the policy released for it; a sample attributed to the wrong policy
would train the next iteration on another model's mistakes. So before every batch the generator asks the
server what it serves (``policy.served``: the embedded/KServe server's ``/info``, vLLM's ``/v1/models``,
TGI's ``/info`` model path) and refuses — ``PolicyVersionMismatch``, counted in
``cutalign_generator_version_refusals_total`` — unless the expected checkpoint sha256 is among it. The
refusal says what was expected, from where, and exactly what the server answered. Where the server names
the policy on each response (the embedded server does) every response is checked too, which closes the
window of a hot reload landing between the check and the batch; vLLM is asked for the release by name on
every request, so it answers from that release or not at all.

Which policy is expected, in order:

1. ``expected_sha256`` when configured (``CUTALIGN_GENERATOR_EXPECTED_POLICY_SHA256``): exactly that one;
2. otherwise, with an artifact store, the promoted release in ``policy/current.json``, re-read before every
   batch: after a promotion and its rollout the generator follows the new release without a restart, and
   it refuses while the server serves anything else (a rollout not done yet, a rollback the server missed,
   a policy loaded by hand). ``policy.release_wait_s`` lets it wait that long for the rollout first;
3. before the first promotion (no ``policy/current.json`` yet), or without a store: the (base) version
   served at the first check is pinned, so a run never mixes two policies.

``cutalign_policy_release_mismatch`` is 1 while the server serves another release than the expected one (as of
the generator's last check), 0 once it serves it: the alert on a rollout that did not happen.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from cutalign.policy.client import Completion, PolicyClient
from cutalign.policy.promotion import current_release
from cutalign.policy.served import Served, ServedModel, read_served
from cutalign.policy.version import describe
from cutalign.store import ArtifactStore
from cutalign.v1 import common_pb2, training_pb2

log = logging.getLogger(__name__)

VERSION_REFUSALS = Counter(
    "cutalign_generator_version_refusals_total",
    "Batches refused because the server serves an unexpected policy.",
)
RELEASE_MISMATCH = Gauge(
    "cutalign_policy_release_mismatch",
    "1 while the policy server does not serve the release the generator must use (last check), else 0.",
)


class PolicyVersionMismatch(RuntimeError):
    """The server serves another policy than the one this iteration must be generated from."""


class VersionGuard:
    def __init__(
        self, client: PolicyClient, expected_sha256: str | None, store: ArtifactStore | None = None
    ) -> None:
        self.client = client
        self.configured = expected_sha256
        self.store = store
        self.expected = expected_sha256
        self.pinned: ServedModel | None = None  # the version served before any release (rule 3 above)
        self.version: common_pb2.PolicyVersion | None = None

    def check(self) -> common_pb2.PolicyVersion:
        """The served version, if it is the expected one (waiting up to ``release_wait_s``); else refuse."""
        wait_s = self.client.settings.release_wait_s
        try:
            for attempt in Retrying(
                stop=stop_after_delay(wait_s),
                wait=wait_exponential(multiplier=0.5, max=10),
                retry=retry_if_exception_type(PolicyVersionMismatch),
                reraise=True,
            ):
                with attempt:
                    return self._check_once()
        except PolicyVersionMismatch as e:
            VERSION_REFUSALS.inc()
            log.error("%s", e)
            raise
        raise AssertionError("unreachable: Retrying returns or raises")

    def _check_once(self) -> common_pb2.PolicyVersion:
        served = read_served(self.client.settings)
        expected, source, release = self._expected(served)
        match = served.find(expected) if expected else None
        RELEASE_MISMATCH.set(0 if match is not None else 1)
        if match is None:
            raise PolicyVersionMismatch(
                f"refusing to generate: expected policy checkpoint {expected or '<none served yet>'} "
                f"({source}), but {served.observed}. Roll the expected release out (promote it, or wait "
                "for its rollout), or set CUTALIGN_GENERATOR_EXPECTED_POLICY_SHA256 to the served checkpoint "
                "if it is the right one"
            )
        self.client.served_model = match.name
        self.expected = expected
        self.version = (
            release.version
            if release is not None and not match.version.uri
            else match.version  # the embedded server reports the full version it loaded
        )
        return self.version

    def _expected(self, served: Served) -> tuple[str, str, training_pb2.PolicyRelease | None]:
        """(expected sha256, where that expectation comes from, the release when it is one)."""
        if self.configured:
            return self.configured, "configured", None
        release = current_release(self.store) if self.store is not None else None
        if release is not None:
            return (
                release.version.checkpoint_sha256,
                f"the promoted release {describe(release.version)}",
                release,
            )
        if self.pinned is None:
            self.pinned = served.base()
            if self.pinned is not None:
                log.info(
                    "no release yet and no expected policy configured; pinned the served one: %s",
                    describe(self.pinned.version),
                )
        sha = self.pinned.version.checkpoint_sha256 if self.pinned is not None else ""
        return sha, "pinned when the generator started, before any release", None

    def verify(self, completion: Completion) -> None:
        """Refuse a response that the server says came from another policy."""
        if completion.policy_sha256 is not None and completion.policy_sha256 != self.expected:
            VERSION_REFUSALS.inc()
            message = (
                f"refusing a response: it was generated by policy "
                f"{completion.policy_sha256}, expected {self.expected} (the server changed policy mid-run)"
            )
            log.error(message)
            raise PolicyVersionMismatch(message)
