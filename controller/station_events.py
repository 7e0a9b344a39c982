"""What the station tells its observers, and the observer list itself.

Observers (``Station.subscribe``) receive every :class:`~controller.session.SessionEvent`, a
:class:`MeterSample` per charging gun and cycle, a :class:`CycleEvent` per cycle and every
:class:`~controller.module_faults.ModuleFaultEvent`. They are called synchronously inside the
cycle, so they must not block (queue the work); one that raises is logged and skipped, so a
broken exporter never stops the cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.module_faults import ModuleFaultEvent
from controller.records import CycleRecord, GunRecord
from controller.session import SessionEvent


@dataclass(frozen=True, slots=True)
class MeterSample:
    """One cycle's measured values of a gun with a running transaction."""

    gun: int
    t: float
    record: GunRecord
    kind: str = "meter_sample"


@dataclass(frozen=True, slots=True)
class CycleEvent:
    """A finished cycle (telemetry, logs)."""

    record: CycleRecord
    kind: str = "cycle"


StationEvent = SessionEvent | MeterSample | CycleEvent | ModuleFaultEvent
Observer = Callable[[StationEvent], None]


def emit(observers: list[Observer], event: StationEvent, log: Any) -> None:
    """Hand ``event`` to every observer in ``observers`` (a copy: one may unsubscribe while
    called); an observer that raises is logged with the event's kind and skipped."""
    for obs in list(observers):
        try:
            obs(event)
        except Exception:
            log.exception("observer failed", kind=event.kind)
