"""In-process counters: CALLs handled per action and a latency histogram of their handling.

Handling time runs from the frame's arrival to the answer being written to the socket, so it
includes waiting for the storage commit. Cumulative log-spaced buckets make percentiles of any
interval a difference of two snapshots (the benchmark uses that).
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

# Bucket upper bounds in ms: 0.1 ms .. ~30 s, 25 % apart.
BOUNDS: tuple[float, ...] = tuple(0.1 * 1.25**i for i in range(57))


class Metrics:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.buckets = [0] * (len(BOUNDS) + 1)

    def observe(self, action: str, ms: float, ok: bool) -> None:
        self.calls[action] += 1
        if not ok:
            self.errors[action] += 1
        self.buckets[bisect.bisect_left(BOUNDS, ms)] += 1

    def snapshot(self) -> dict[str, Any]:
        total = sum(self.buckets)
        return {"calls": dict(self.calls), "errors": dict(self.errors), "total": total,
                "buckets": list(self.buckets),
                "handling_ms_p50": percentile(self.buckets, 0.50),
                "handling_ms_p99": percentile(self.buckets, 0.99)}


def percentile(buckets: list[int], q: float) -> float | None:
    """Upper bound of the bucket holding the q-quantile (None when empty)."""
    total = sum(buckets)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank:
            return round(BOUNDS[min(i, len(BOUNDS) - 1)], 2)
    return round(BOUNDS[-1], 2)
