"""Background module commands outside the cycle's apply: re-enable after a watchdog expiry,
re-arm a module that answers again, fault resets by the policy.

Each is a task of its own (a slow module never holds the cycle); at most one per module is in
flight (``pending``), and a failure goes to the folded device-error log, to be tried again on
a later cycle. Under an emergency stop nothing is enabled, re-armed or reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from controller.logfold import DeviceErrorFolder
from controller.module_faults import ModuleFaultEvent, ModuleFaultPolicy
from controller.recovery import CommRecovery
from power.hardware_api import StationHardware
from power.modbus_driver import HardwareSnapshot, ModuleState


class ModuleCare:
    """The station's background module commands (see the module docstring)."""

    def __init__(self, hw: StationHardware, watchdog_ms: int, recovery: CommRecovery,
                 faults: ModuleFaultPolicy, errors: DeviceErrorFolder, log: Any,
                 emit: Callable[[ModuleFaultEvent], None], timeout_s: Callable[[], float],
                 tasks: set[asyncio.Task[Any]]) -> None:
        self.hw = hw
        self.watchdog_ms = watchdog_ms
        self.recovery = recovery
        self.faults = faults
        self.errors = errors
        self.log = log
        self.emit = emit
        self.timeout_s = timeout_s
        self.tasks = tasks  # the station's: cancelled by its close()
        self.pending: set[int] = set()

    def reenable(self, snap: HardwareSnapshot, back: list[int], emergency: bool) -> None:
        """Re-arm modules that answer again (watchdog, enable) and re-enable those whose
        output went off without a fault (e.g. watchdog expiry)."""
        if emergency:
            return
        for i in back:
            if i not in self.pending:
                self._spawn(i, self._arm(i))
        for ms in snap.modules:
            i = ms.index
            if (ms.fresh and ms.ready and not ms.fault and not ms.output_on
                    and i not in self.pending and i not in self.recovery.needs_arm):
                self._spawn(i, self._enable(i))

    def fault_policy(self, snap: HardwareSnapshot, now: float, emergency: bool) -> None:
        """Latched module faults: fault resets by the policy, its events out."""
        resets, events = self.faults.step(snap.modules, now)
        for ev in events:
            level = {"gave_up": "error", "faulted": "warning"}.get(ev.action, "info")
            getattr(self.log, level)("module fault " + ev.action.replace("_", " "),
                                     module=ev.module, code=ev.code, tries=ev.tries,
                                     reason=ev.reason)
            self.emit(ev)
        if emergency:
            return
        for i in resets:
            if i not in self.pending:
                self._spawn(i, self._reset_fault(i))

    def _spawn(self, i: int, work: Awaitable[None]) -> None:
        self.pending.add(i)
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _enable(self, i: int) -> None:
        try:
            await asyncio.wait_for(self.hw.modules[i].enable(), self.timeout_s())
        except Exception as exc:
            self.errors.error(f"module {i}", f"enable failed: {exc!r}")
        finally:
            self.pending.discard(i)

    async def _arm(self, i: int) -> None:
        """A module answers again: its watchdog and enable, as at start."""
        mod, timeout = self.hw.modules[i], self.timeout_s()
        try:
            await asyncio.wait_for(mod.set_watchdog(self.watchdog_ms), timeout)
            last = getattr(mod, "last", None)
            if not (isinstance(last, ModuleState) and last.fault):
                await asyncio.wait_for(mod.enable(), timeout)
            self.recovery.armed(i)
            self.log.info("module answers again: re-armed", module=i)
        except Exception as exc:
            self.errors.error(f"module {i}", f"re-arm failed: {exc!r}")
        finally:
            self.pending.discard(i)

    async def _reset_fault(self, i: int) -> None:
        try:
            await asyncio.wait_for(self.hw.modules[i].reset_fault(), self.timeout_s())
        except Exception as exc:
            self.errors.error(f"module {i}", f"fault reset failed: {exc!r}")
        finally:
            self.pending.discard(i)
