"""Log throttling per cause: a station that repeats one bad input must not flood the log.

A cause is a short key (action, exception type, where it was raised). The first occurrence of a
cause in an interval is logged in full (with traceback); the rest of the interval only counts,
and the next logged line carries the count of those suppressed. The table of causes is bounded
(oldest dropped), so invented causes cannot grow memory either.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class CauseThrottle:
    """``allow(cause)`` is True at most once per ``interval`` seconds and cause."""

    def __init__(self, interval: float = 60.0, max_causes: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.max_causes, self._clock = interval, max_causes, clock
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def allow(self, cause: str) -> tuple[bool, int]:
        """(log it now?, occurrences suppressed since the last logged one)."""
        now = self._clock()
        last = self._seen.get(cause)
        if last is not None and now - last[0] < self.interval:
            self._seen[cause] = (last[0], last[1] + 1)
            return False, last[1] + 1
        suppressed = 0 if last is None else last[1]
        self._seen[cause] = (now, 0)
        self._seen.move_to_end(cause)
        while len(self._seen) > self.max_causes:
            self._seen.popitem(last=False)
        return True, suppressed


def cause_of(exc: BaseException) -> str:
    """Exception type and the innermost frame it came from: one key per bug, not per input."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"
    return f"{type(exc).__name__}@{where}"
