"""The ids a service handled lately, to skip redeliveries within a run (a rebalance handing back a batch).

Across a crash the store or the consumers' idempotence by key deduplicates; within a run this saves the work
(a policy or judge call) and the duplicate output. Bounded: the last ``capacity`` ids, insertion order.
"""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def add(self, key: str) -> None:
        if self.capacity == 0:
            return
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
