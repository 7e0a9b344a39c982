"""Recovery after lost communication: re-arm returning modules, clear comm-caused gun faults.

*Unknown is not last-known* (docs/control-cycle.md, "Stale data and recovery"): while a device
does not answer, its readings are stale — the safety monitor and the allocator treat its
current as unknown. This module does the bookkeeping for the way back:

- a module that stopped answering (or whose arming at start failed) *needs arming*; once it
  answers again with a fresh poll it gets ``set_watchdog`` and ``enable`` again (a restarted
  module comes back with its own default watchdog and its output off), before the cycle plans
  current with it — the cycle already decides on that fresh poll;
- a gun fault raised by the session while the gun's devices did not answer (its meter, the
  matrix, or a module on it — typically "finishing: current did not fall / contactors did not
  open", judged on numbers nobody measured) is marked *comm-caused*; it clears itself once
  those devices answer again with sane readings: the meter fresh and at or below the switch
  threshold, the matrix fresh with no contactor of the gun closed or commanded.

Pure bookkeeping (no I/O); ``Station`` sends the commands and clears the faults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from controller.config import StationSection
from power.modbus_driver import HardwareSnapshot


@dataclass
class CommRecovery:
    """Per-device bookkeeping of lost and returned communication."""

    modules: int
    guns: int
    threshold_a: float = StationSection.default_of("switch_threshold_a")
    window_s: float = 6.0  # a gun fault this soon after its devices were silent: comm-caused
    needs_arm: set[int] = field(default_factory=set)
    comm_faults: dict[int, str] = field(default_factory=dict)  # gun → the fault's reason
    _lost_at: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lost_at = [-math.inf] * self.guns

    def observe(self, snap: HardwareSnapshot, now: float) -> list[int]:
        """Book this poll; returns the modules that answer again and need arming."""
        back = []
        for ms in snap.modules:
            if not ms.available:
                self.needs_arm.add(ms.index)
            elif ms.fresh and ms.index in self.needs_arm:
                back.append(ms.index)
        for g in range(self.guns):
            if self.degraded(snap, g):
                self._lost_at[g] = now
        return back

    def armed(self, module: int) -> None:
        self.needs_arm.discard(module)

    def degraded(self, snap: HardwareSnapshot, g: int) -> bool:
        """Gun ``g``'s view is not measured now: matrix, its meter or a module on it silent."""
        mx = snap.matrix
        if not mx.fresh or not snap.meters[g].fresh:
            return True
        if mx.closed.shape != (self.modules, self.guns):
            return True
        on_g = mx.closed[:, g] | mx.commanded[:, g]
        return any(on_g[ms.index] and not ms.fresh for ms in snap.modules)

    def fault_raised(self, g: int, reason: str, now: float) -> bool:
        """A session fault of gun ``g``: comm-caused (returns True, remembered) when its
        devices were silent within ``window_s``."""
        if now - self._lost_at[g] <= self.window_s:
            self.comm_faults[g] = reason
            return True
        return False

    def to_clear(self, snap: HardwareSnapshot) -> list[int]:
        """Guns whose comm-caused fault may clear now (sane fresh readings); forgotten here."""
        out = []
        for g in list(self.comm_faults):
            if self.degraded(snap, g):
                continue
            meter = snap.meters[g]
            mx = snap.matrix
            low = math.isfinite(meter.current_a) and abs(meter.current_a) <= self.threshold_a
            if low and not (mx.closed[:, g] | mx.commanded[:, g]).any():
                out.append(g)
                del self.comm_faults[g]
        return out

    def forget(self, g: int) -> None:
        """The fault was cleared another way (operator, restart)."""
        self.comm_faults.pop(g, None)
