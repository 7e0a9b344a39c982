"""Latched module faults: when the station writes a module's fault-reset register, and when
it gives the module up.

A module that reports its FAULT bit holds its output off and is out of the pool
(``module_view``) until the latch is cleared. Policy (docs/control-cycle.md, "Latched module
faults"), per module, on fresh polls only (an unreachable module is not judged):

- **Cause gone.** A reset is written only while the module shows no cause: its over-temperature,
  over-voltage and over-current status bits are clear. A code without such a bit (coolant flow,
  internal, vendor codes) cannot be seen from outside; the reset itself is then the probe — the
  module keeps the latch while the cause persists (docs/modbus-map.md).
- **Timing.** The first reset waits ``backoff_s`` after the fault is seen; while the latch
  stays, the reset is repeated every ``backoff_s`` (a probe, not a try).
- **Tries.** A reset that clears the latch is a try. A module that faults again within
  ``window_s`` of such a clear waits twice as long as last time before its next reset; once
  ``tries`` clears have each been followed by a new fault, the module is *given up*: no more
  resets, it stays out of the pool and is reported (error log, ``module_fault`` event with
  action ``gave_up``, ``given_up`` for metrics and ``mwc doctor``). Fault-free for
  ``window_s``, a module starts again at zero tries. ``forget`` (operator) lifts a give-up.

Pure bookkeeping: no I/O, no clock of its own (``now`` comes in), so it is tested directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from power.modbus_map import ModuleStatus
from power.modules import ModuleState

#: Status bits that show a fault's cause is still there.
CAUSE_BITS = int(ModuleStatus.OVER_TEMPERATURE | ModuleStatus.OVER_VOLTAGE
                 | ModuleStatus.OVER_CURRENT)
MAX_BACKOFF_S = 300.0


@dataclass(frozen=True, slots=True)
class ModuleFaultEvent:
    """A step of the fault policy (observers; MQTT telemetry publishes it as an event)."""

    module: int
    t: float
    action: str  # faulted, reset, cleared, gave_up, forgotten
    code: int
    tries: int  # resets that cleared the latch within the window so far
    reason: str = ""
    kind: str = "module_fault"


@dataclass(slots=True)
class _Track:
    faulted_since: float | None = None
    code: int = 0
    next_at: float = 0.0
    delay: float = 0.0
    tries: int = 0
    resets: int = 0  # resets written during this fault
    last_clear_at: float | None = None
    given_up: bool = False


@dataclass
class ModuleFaultPolicy:
    """The fault-reset policy for ``modules`` modules (see the module docstring)."""

    modules: int
    tries: int = 3
    backoff_s: float = 1.0
    window_s: float = 60.0
    resets_total: int = 0
    _t: list[_Track] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._t = [_Track(delay=self.backoff_s) for _ in range(self.modules)]

    @property
    def given_up(self) -> list[int]:
        """Modules left out of the pool for good (until ``forget``)."""
        return [m for m, t in enumerate(self._t) if t.given_up]

    def faulted(self) -> dict[int, int]:
        """Module → fault code of every module whose latch is set now."""
        return {m: t.code for m, t in enumerate(self._t) if t.faulted_since is not None}

    def forget(self, module: int | None = None, now: float = 0.0) -> list[ModuleFaultEvent]:
        """Operator clear: forget the history (and a give-up) of one module or all."""
        out = []
        for m in range(self.modules) if module is None else [module]:
            t = self._t[m]
            if t.given_up:
                out.append(ModuleFaultEvent(m, now, "forgotten", t.code, t.tries,
                                            "operator clear"))
            self._t[m] = _Track(delay=self.backoff_s, faulted_since=t.faulted_since,
                                code=t.code, next_at=now)
        return out

    def step(self, states: Sequence[ModuleState], now: float
             ) -> tuple[list[int], list[ModuleFaultEvent]]:
        """One cycle: the modules to send a fault reset now, and the policy's events."""
        resets: list[int] = []
        events: list[ModuleFaultEvent] = []
        for ms in states:
            if not ms.fresh:
                continue  # unknown is not judged
            t = self._t[ms.index]
            if ms.status & int(ModuleStatus.FAULT):
                self._fault(ms, t, now, events)
                if t.given_up or self.tries == 0 or ms.status & CAUSE_BITS or now < t.next_at:
                    continue
                resets.append(ms.index)
                t.resets += 1
                self.resets_total += 1
                t.next_at = now + self.backoff_s  # probe again while the latch stays
                events.append(ModuleFaultEvent(ms.index, now, "reset", t.code, t.tries,
                                               f"reset {t.resets} of this fault"))
            elif t.faulted_since is not None:
                if t.resets:
                    t.tries += 1
                    t.last_clear_at = now
                events.append(ModuleFaultEvent(ms.index, now, "cleared", t.code, t.tries,
                                               "latch cleared"))
                t.faulted_since, t.resets = None, 0
            elif t.last_clear_at is not None and now - t.last_clear_at > self.window_s:
                t.tries, t.delay, t.last_clear_at = 0, self.backoff_s, None
        return resets, events

    def _fault(self, ms: ModuleState, t: _Track, now: float,
               events: list[ModuleFaultEvent]) -> None:
        if t.faulted_since is not None:
            return
        t.faulted_since, t.code, t.resets = now, ms.fault_code, 0
        again = t.last_clear_at is not None and now - t.last_clear_at <= self.window_s
        if not again:
            t.tries, t.delay = 0, self.backoff_s
        elif t.tries:
            t.delay = min(t.delay * 2.0, MAX_BACKOFF_S)
        t.next_at = now + t.delay
        events.append(ModuleFaultEvent(ms.index, now, "faulted", ms.fault_code, t.tries,
                                       "faulted again after a reset" if again else "latched"))
        if not t.given_up and t.tries >= self.tries:
            t.given_up = True
            why = ("never reset (fault_reset_tries = 0)" if self.tries == 0 else
                   f"faulted again after {t.tries} resets that cleared it")
            events.append(ModuleFaultEvent(ms.index, now, "gave_up", ms.fault_code, t.tries,
                                           why))
