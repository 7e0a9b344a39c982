"""Start-up readiness and the watchdog of ``mwc run`` (docs/install.md, deploy/systemd/).

:class:`StartupWatch` observes the station's cycle: at the first completed cycle it logs the
start-up time (process start → first cycle, and the allocator warm-up within it) and tells
systemd READY=1; at every cycle it feeds the systemd watchdog. Both happen inside the cycle,
so a controller that hangs anywhere in its cycle stops pinging and is restarted.
"""

from __future__ import annotations

import time
from typing import Any

from controller import logs
from controller.sdnotify import Notifier, process_age_s

#: Start-up goals to the first cycle (issue 9): with a warm numba cache, and cold.
GOAL_WARM_S = 1.0
GOAL_COLD_S = 2.0  # issue 17: the reference allocator runs while the kernel compiles


class StartupWatch:
    """READY=1 after the first cycle; WATCHDOG=1 from every cycle (rate-limited)."""

    def __init__(self, station: Any, notifier: Notifier, entry_t: float | None = None) -> None:
        self.station = station
        self.notifier = notifier
        self.entry_t = time.monotonic() if entry_t is None else entry_t
        self.ready_after_s: float | None = None
        self.log = logs.get_logger("controller.startup", station=station.config.station.id)

    def observe(self, event: Any) -> None:
        if event.kind != "cycle":
            return
        if self.ready_after_s is None:
            self._first_cycle()
        self.notifier.watchdog()

    def _first_cycle(self) -> None:
        since_entry = time.monotonic() - self.entry_t
        age = process_age_s()
        total = age if age is not None and age >= since_entry else since_entry
        self.ready_after_s = total
        warmup = float(getattr(self.station, "warmup_s", 0.0))
        source = str(getattr(self.station, "jit_source", "none"))
        cold = bool(getattr(self.station, "jit_cold", source == "compiled"))
        goal = GOAL_COLD_S if cold else GOAL_WARM_S
        self.log.info("first cycle done: ready", startup_s=round(total, 3),
                      allocator_warmup_s=round(warmup, 3),
                      allocator_code=source, cold_cache=cold, goal_s=goal,
                      goal_met=total <= goal, seq=self.station.seq)
        self.notifier.ready(f"charging control running (started in {total:.2f} s)")
