"""Per-source token buckets: each product that sends feedback gets its own sustained rate and burst.

One noisy source (a retry storm, a scraper with a leaked token) must not crowd out the others, so the limit is
per ``source``. A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a request takes one
token or is refused with how long until one is back (the HTTP ``Retry-After``). Buckets of sources not heard
from lately are dropped once there are more than ``max_sources``: such a bucket was full, or nearly.
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
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s} and {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_sources = max_sources
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, when)
        self._lock = threading.Lock()

    def acquire(self, source: str) -> float:
        """Take a token for ``source``: 0.0 if allowed, else the seconds until a token is available."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.pop(source, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
            wait_s = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait_s = (1.0 - tokens) / self.rate_per_s
            self._buckets[source] = (tokens, now)  # most recently used last
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
            return wait_s
