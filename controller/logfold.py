"""Log folding: repeated device errors become one line per device per interval, plus one
station summary line, so a station with no hardware reachable does not write a warning every
cycle (about 1.5 GB a day at 10 Hz) and an operator still sees what is wrong and since when.

``DeviceErrorFolder.error(device, message)``: the first error of a device is logged at once;
later ones within ``interval_s`` are counted, and at the end of the interval one line
(``device errors repeated``) gives the count and the last message. A device quiet for a whole
interval starts afresh. ``HardwareSummary.update(snapshot)`` logs, once per interval while any
device is unreachable, ``"48 of 48 modules unreachable since …"`` (matrix and meters likewise),
and one line when everything answers again.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.clock import Monotonic
from power.modbus_driver import HardwareSnapshot


@dataclass(slots=True)
class _Window:
    start: float
    count: int = 0
    last: str = ""


class DeviceErrorFolder:
    """One log line per device per interval (see the module docstring)."""

    def __init__(self, log: Any, interval_s: float = 10.0, clock: Monotonic = time.monotonic
                 ) -> None:
        self.log = log
        self.interval_s = interval_s
        self.clock = clock
        self._w: dict[str, _Window] = {}
        self.lines = 0  # lines written (tests, metrics)
        self.folded = 0  # errors counted instead of written

    def error(self, device: str, message: str) -> None:
        """Book one error of ``device``: logged now if it is the first, else counted."""
        w = self._w.get(device)
        if w is None:
            self._w[device] = _Window(self.clock(), 0, message)
            self.lines += 1
            self.log.warning("device error", device=device, error=message)
            return
        w.count += 1
        w.last = message
        self.folded += 1

    def flush(self) -> None:
        """End the intervals that are over: one line per device with errors in it."""
        now = self.clock()
        for device, w in list(self._w.items()):
            if now - w.start < self.interval_s:
                continue
            if w.count == 0:
                del self._w[device]  # quiet for a whole interval: the next error is news
                continue
            self.lines += 1
            self.log.warning("device errors repeated", device=device, count=w.count,
                             interval_s=self.interval_s, last_error=w.last)
            self._w[device] = _Window(now, 0, w.last)


class HardwareSummary:
    """One station summary line per interval while devices are unreachable."""

    def __init__(self, log: Any, interval_s: float = 10.0, clock: Monotonic = time.monotonic,
                 wall: Callable[[], dt.datetime] | None = None) -> None:
        self.log = log
        self.interval_s = interval_s
        self.clock = clock
        self.wall = wall or (lambda: dt.datetime.now(dt.UTC))
        self._since: dict[str, str] = {}  # kind → wall time it first went unreachable
        self._next = -float("inf")
        self.last_line = ""

    def update(self, snap: HardwareSnapshot) -> None:
        down = {
            "modules": (sum(not m.available for m in snap.modules), len(snap.modules)),
            "matrix": (int(not snap.matrix.available), 1),
            "meters": (sum(not m.available for m in snap.meters), len(snap.meters)),
        }
        now = self.clock()
        was_down = bool(self._since)
        for kind, (n, _total) in down.items():
            if n and kind not in self._since:
                self._since[kind] = self.wall().astimezone(dt.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ")
            elif not n:
                self._since.pop(kind, None)
        if not self._since:
            if was_down:
                self.last_line = "every device answers again"
                self.log.info("hardware reachable", summary=self.last_line)
            self._next = -float("inf")
            return
        if now < self._next:
            return
        self._next = now + self.interval_s
        parts = [f"{down[k][0]} of {down[k][1]} {_noun(k, down[k][1])} unreachable since "
                 f"{since}" for k, since in self._since.items()]
        self.last_line = "; ".join(parts)
        self.log.warning("hardware unreachable", summary=self.last_line)


def _noun(kind: str, total: int) -> str:
    return "matrix" if kind == "matrix" else kind if total != 1 else kind.rstrip("s")
