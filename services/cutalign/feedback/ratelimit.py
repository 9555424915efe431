"""Token buckets by key: the feedback API limits requests per authenticated client and auth failures per
client address.

A key is something the caller cannot choose freely: the client its bearer token authenticates (rotating the
body's ``source`` does not get a fresh bucket), or, for failed authentications, the client address (so
guessing tokens is throttled). A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a request
takes one token or is refused with how long until one is back (the HTTP ``Retry-After``). Buckets of keys not
heard from lately are dropped once there are more than ``max_keys``: such a bucket was full, or nearly.
Limits are per replica: N replicas admit N times the rate.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s} and {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """Take a token for ``key``: 0.0 if allowed, else the seconds until a token is available."""
        return self._take(key, take=True)

    def wait_s(self, key: str) -> float:
        """The seconds until ``key`` has a token (0.0: it has one now); takes nothing."""
        return self._take(key, take=False)

    def _take(self, key: str, *, take: bool) -> float:
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
            wait_s = 0.0
            if tokens >= 1.0:
                tokens -= 1.0 if take else 0.0
            else:
                wait_s = (1.0 - tokens) / self.rate_per_s
            self._buckets[key] = (tokens, now)  # most recently used last
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait_s
