"""In-process counters: CALLs handled per action and a latency histogram of their handling.

Handling time runs from the frame's arrival to the answer being written to the socket, so it
includes waiting for the storage commit. Cumulative log-spaced buckets make percentiles of any
interval a difference of two snapshots (the benchmark uses that).

Label sets are closed, so memory stays bounded whatever stations send: an action name that is
not an OCPP 1.6 or 2.0.1 action counts under ``UNKNOWN_ACTION``; implausible meter samples count
per reason from ``sql_tx.FLAGS``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

from ocpp.v16.enums import Action as _Action16
from ocpp.v201.enums import Action as _Action201

UNKNOWN_ACTION = "(unknown)"
KNOWN_ACTIONS: frozenset[str] = frozenset(
    [str(a.value) for a in _Action201] + [str(a.value) for a in _Action16])


def action_label(action: Any) -> str:
    """The metrics label of an action name: itself if OCPP knows it, else UNKNOWN_ACTION."""
    return action if isinstance(action, str) and action in KNOWN_ACTIONS else UNKNOWN_ACTION

# Bucket upper bounds in ms: 0.1 ms .. ~30 s, 25 % apart.
BOUNDS: tuple[float, ...] = tuple(0.1 * 1.25**i for i in range(57))


class Metrics:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.implausible: Counter[str] = Counter()
        self.internal_errors = 0

    def observe(self, action: str, ms: float, ok: bool) -> None:
        label = action_label(action)
        self.calls[label] += 1
        if not ok:
            self.errors[label] += 1
        self.buckets[bisect.bisect_left(BOUNDS, ms)] += 1

    def count_implausible(self, reason: str, n: int = 1) -> None:
        """Called from the storage thread; ``reason`` is one of ``sql_tx.FLAGS``."""
        self.implausible[reason] += n

    def snapshot(self) -> dict[str, Any]:
        total = sum(self.buckets)
        return {"calls": dict(self.calls), "errors": dict(self.errors), "total": total,
                "internal_errors": self.internal_errors,
                "implausible_samples": dict(self.implausible),
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
