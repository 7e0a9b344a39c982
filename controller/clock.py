"""The one clock: monotonic seconds for deadlines and expiries, wall time as an aware UTC
``datetime`` for timestamps that leave the cabinet (OCPP, MQTT, logs).

Everything that reads time takes a :class:`Clock` (or, where only one reading is needed, a
bound method of one: :data:`Monotonic`, :data:`WallSeconds`), so tests, the simulators and
the demo drive the whole station on one :class:`SimClock` and production uses
:class:`SystemClock`. Wall time is a ``datetime`` at the seams; :data:`WallSeconds` (epoch
float) exists only for the MQTT payload arithmetic that was written in seconds.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

#: A monotonic reading in seconds (``time.monotonic`` or ``SimClock.monotonic``).
Monotonic = Callable[[], float]
#: A wall reading in epoch seconds (``time.time`` or ``SimClock.time``).
WallSeconds = Callable[[], float]


@runtime_checkable
class Clock(Protocol):
    """Monotonic seconds (only differences mean anything; never goes back) and the wall
    time as an aware UTC ``datetime`` (may jump when NTP or OCPP sets it)."""

    def monotonic(self) -> float: ...

    def wall(self) -> dt.datetime: ...


class SystemClock:
    """The operating system's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def time(self) -> float:
        """Wall time in epoch seconds."""
        return time.time()

    def __call__(self) -> float:
        """Monotonic seconds: a ``SystemClock()`` can stand where a ``Monotonic`` is taken."""
        return time.monotonic()


#: Default wall start of a :class:`SimClock`: 2026-11-15 12:00:00 UTC (a fixed, recent
#: date so that logs and certificates of a simulated run read sensibly and repeat).
DEFAULT_WALL_START = dt.datetime(2026, 11, 15, 12, 0, 0, tzinfo=dt.UTC)


class SimClock:
    """Simulated time that moves only when told: ``advance(s)`` or ``t += s``.

    ``t`` is the monotonic reading (settable, as the station's tests step it directly);
    the wall clock runs in lock step from ``wall_start`` (an aware datetime, or epoch
    seconds). Calling the clock returns ``t``, so ``clock`` itself is a :data:`Monotonic`.
    """

    def __init__(self, t: float = 1000.0,
                 wall_start: dt.datetime | float | None = None) -> None:
        if not math.isfinite(t):
            raise ValueError(f"SimClock: start time must be finite, got {t}")
        self.t0 = t
        self.t = t
        self.epoch = _epoch(DEFAULT_WALL_START if wall_start is None else wall_start)

    def monotonic(self) -> float:
        return self.t

    def __call__(self) -> float:
        return self.t

    def time(self) -> float:
        """Wall time in epoch seconds."""
        return self.epoch + (self.t - self.t0)

    def wall(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time(), dt.UTC)

    @property
    def elapsed(self) -> float:
        """Seconds since the clock was made."""
        return self.t - self.t0

    def advance(self, seconds: float) -> float:
        """Move both clocks forward by ``seconds`` (>= 0); returns the new ``t``."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"SimClock.advance: seconds must be finite and >= 0, got {seconds}")
        self.t += seconds
        return self.t

    def set_wall(self, wall: dt.datetime | float) -> None:
        """Step the wall clock (as NTP or an operator would); monotonic time is unmoved."""
        self.epoch = _epoch(wall) - (self.t - self.t0)


def _epoch(wall: dt.datetime | float) -> float:
    if isinstance(wall, dt.datetime):
        if wall.tzinfo is None:
            raise ValueError(f"SimClock: wall time must be timezone-aware, got {wall!r}")
        return wall.timestamp()
    if not math.isfinite(wall):
        raise ValueError(f"SimClock: wall start must be finite, got {wall}")
    return float(wall)


def iso_utc(wall: dt.datetime) -> str:
    """RFC 3339 UTC with milliseconds and ``Z`` (what OCPP and MQTT payloads carry)."""
    if wall.tzinfo is None:
        raise ValueError(f"iso_utc: wall time must be timezone-aware, got {wall!r}")
    text = wall.astimezone(dt.UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
