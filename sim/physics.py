"""Physics of the simulated station: modules, contactor matrix, guns (loads) and DC meters.

``StationPhysics.step(dt)`` is pure and deterministic, so tests and a faster-than-real-time
demo can drive it from a simulated clock; ``RealTimeStepper`` steps it from a real clock for
the ``mwc sim modules`` server. The load on each gun is pluggable through ``GunLoad`` (the
truck simulator will provide one later); the default is a constant voltage source with a small
internal resistance, standing in for a battery.

Safety bookkeeping for tests: every contactor transition is logged with the current its module
carried at that instant (``switch_log`` / ``hot_switches()``), and the matrix refuses to put a
module on a second gun (interlock).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from power.modbus_map import (
    SIM_TARGET_ALL,
    MatrixFault,
    SimCommand,
)
from sim.modules import ModuleParams, SimModule


@runtime_checkable
class GunLoad(Protocol):
    """What a gun's vehicle looks like electrically.

    ``voltage_at(current_a, dt)`` returns the terminal voltage while ``current_a`` flows into
    the vehicle for ``dt`` seconds (a battery may integrate charge there).
    """

    def voltage_at(self, current_a: float, dt: float) -> float: ...


@dataclass(slots=True)
class ConstantVoltageLoad:
    """A battery stand-in: a constant source behind a small resistance."""

    voltage_v: float = 600.0
    resistance_ohm: float = 0.01

    def voltage_at(self, current_a: float, dt: float) -> float:
        return self.voltage_v + current_a * self.resistance_ohm


@dataclass(frozen=True, slots=True)
class SwitchEvent:
    """A contactor (module, gun) changed state at ``t`` while its module carried ``current_a``."""

    t: float
    module: int
    gun: int
    closed: bool
    current_a: float
    output_on: bool


class MatrixPhysics:
    """M × G contactors: coil command, auxiliary feedback after a delay, welds, interlock."""

    def __init__(
        self, modules: int, guns: int, close_delay_s: float = 0.015, open_delay_s: float = 0.010
    ) -> None:
        self.modules = modules
        self.guns = guns
        self.close_delay_s = close_delay_s
        self.open_delay_s = open_delay_s
        n = modules * guns
        self.coils: list[bool] = [False] * n
        self.closed: list[bool] = [False] * n
        self.welded: list[bool] = [False] * n
        self._since: list[float] = [0.0] * n  # time the coil last changed
        self.interlock_refused = False

    def write_coils(self, t: float, start: int, values: Sequence[bool]) -> bool:
        """Apply a coil write atomically; False (and the interlock bit) when refused.

        Refused when it would command a module onto a gun while that module is commanded or
        still closed (feedback, e.g. welded or not yet open) on another gun: break before make.
        """
        n = len(self.coils)
        if start < 0 or start + len(values) > n:
            return False
        proposed = list(self.coils)
        proposed[start : start + len(values)] = [bool(v) for v in values]
        g_count = self.guns
        for idx in range(start, start + len(values)):
            if not proposed[idx] or self.coils[idx]:
                continue
            m = idx // g_count
            for other in range(m * g_count, (m + 1) * g_count):
                if other != idx and (proposed[other] or self.closed[other]):
                    self.interlock_refused = True
                    return False
        for idx in range(start, start + len(values)):
            if proposed[idx] != self.coils[idx]:
                self._since[idx] = t
        self.coils = proposed
        self.interlock_refused = False
        return True

    def step(self, t: float) -> list[tuple[int, bool]]:
        """Move feedback towards the coils; returns the (index, closed) transitions."""
        changes: list[tuple[int, bool]] = []
        for idx in range(len(self.coils)):
            want = self.coils[idx] or self.welded[idx]
            if want == self.closed[idx]:
                continue
            delay = self.close_delay_s if want else self.open_delay_s
            if self.welded[idx]:
                delay = 0.0
            if t - self._since[idx] >= delay - 1e-12:
                self.closed[idx] = want
                changes.append((idx, want))
        return changes

    @property
    def fault_word(self) -> int:
        """Input register 2: welded contact (closed against an open coil), interlock refusal."""
        word = MatrixFault(0)
        if any(w and not c for w, c in zip(self.welded, self.coils, strict=True)):
            word |= MatrixFault.WELDED_CONTACT
        if self.interlock_refused:
            word |= MatrixFault.INTERLOCK_REFUSED
        return int(word)

    def module_gun(self) -> list[int]:
        """Gun each module is closed onto by feedback (-1 none; first gun if several)."""
        out = [-1] * self.modules
        for idx, c in enumerate(self.closed):
            m = idx // self.guns
            if c and out[m] < 0:
                out[m] = idx % self.guns
        return out

    def closed_array(self) -> np.ndarray:
        """Feedback as an (M, G) bool array."""
        return np.array(self.closed, dtype=bool).reshape(self.modules, self.guns)


@dataclass(slots=True)
class MeterPhysics:
    """A DC meter at one gun: measures voltage and current, integrates energy."""

    gun: int
    voltage_v: float = 0.0
    current_a: float = 0.0
    energy_wh: float = 0.0

    @property
    def power_w(self) -> float:
        return self.voltage_v * self.current_a

    def step(self, dt: float, voltage_v: float, current_a: float) -> None:
        self.voltage_v = voltage_v
        self.current_a = current_a
        self.energy_wh += voltage_v * current_a * dt / 3600.0


class StationPhysics:
    """The whole simulated power stage; ``step(dt)`` is the only way time passes."""

    def __init__(
        self,
        modules: int = 48,
        guns: int = 2,
        params: ModuleParams | None = None,
        loads: Sequence[GunLoad | None] | None = None,
        chiller_c: float = 25.0,
        max_substep_s: float = 0.05,
        hot_switch_threshold_a: float = 5.0,
        contactor_close_s: float = 0.015,
        contactor_open_s: float = 0.010,
    ) -> None:
        if modules < 1 or guns < 1:
            raise ValueError("need at least one module and one gun")
        self.params = params or ModuleParams()
        self.t = 0.0
        self.chiller_c = chiller_c
        self.modules = [SimModule(i, self.params) for i in range(modules)]
        for m in self.modules:
            m.coolant_in_c = m.coolant_out_c = m.internal_c = chiller_c
        self.matrix = MatrixPhysics(modules, guns, contactor_close_s, contactor_open_s)
        self.meters = [MeterPhysics(g) for g in range(guns)]
        self.loads: list[GunLoad | None] = (
            list(loads) if loads is not None else [ConstantVoltageLoad() for _ in range(guns)]
        )
        if len(self.loads) != guns:
            raise ValueError(f"{len(self.loads)} loads for {guns} guns")
        self.gun_voltage_v = [0.0] * guns
        self.gun_current_a = [0.0] * guns
        self.max_substep_s = min(max_substep_s, self.modules[0].max_stable_dt())
        self.hot_switch_threshold_a = hot_switch_threshold_a
        self.switch_log: list[SwitchEvent] = []
        self.comm_lost: set[int] = set()
        self.meter_offline: set[int] = set()

    @property
    def guns(self) -> int:
        return self.matrix.guns

    # ------------------------------------------------------------------ time
    def step(self, dt: float) -> None:
        """Advance the station by ``dt`` seconds (split into stable sub-steps)."""
        if not dt > 0 or not math.isfinite(dt):
            return
        n = max(1, math.ceil(dt / self.max_substep_s))
        h = dt / n
        for _ in range(n):
            self._substep(h)

    def _substep(self, h: float) -> None:
        self.t += h
        t = self.t
        g_count = self.guns
        for idx, closed in self.matrix.step(t):
            mod = self.modules[idx // g_count]
            self.switch_log.append(
                SwitchEvent(t, mod.index, idx % g_count, closed, mod.current_a, mod.output_on)
            )
        module_gun = self.matrix.module_gun()
        pairs = list(zip(self.modules, module_gun, strict=True))
        for g in range(g_count):
            total = sum(m.current_a for m, mg in pairs if mg == g)
            load = self.loads[g]
            if load is not None:
                v = load.voltage_at(total, h)
            else:  # no vehicle: the gun floats at the highest connected module voltage
                v = max((m.voltage_v for m, mg in pairs if mg == g), default=0.0)
            self.gun_voltage_v[g] = v
        for mod, mg in pairs:
            gun_v = self.gun_voltage_v[mg] if mg >= 0 and self.loads[mg] is not None else None
            mod.step(h, t, gun_v, self.chiller_c)
        for g in range(g_count):
            total = sum(m.current_a for m, mg in pairs if mg == g)
            self.gun_current_a[g] = total
            self.meters[g].step(h, self.gun_voltage_v[g], total)

    # ------------------------------------------------------------------ safety log
    def hot_switches(self, threshold_a: float | None = None) -> list[SwitchEvent]:
        """Contactor transitions that happened while the module carried more than the threshold."""
        limit = self.hot_switch_threshold_a if threshold_a is None else threshold_a
        return [e for e in self.switch_log if abs(e.current_a) > limit]

    # ------------------------------------------------------------------ fault injection
    def _modules(self, which: int | Iterable[int] | None) -> list[SimModule]:
        if which is None:
            return list(self.modules)
        if isinstance(which, int):
            return [self.modules[which]]
        return [self.modules[i] for i in which]

    def set_comm_loss(self, module: int, lost: bool = True) -> None:
        """Module stops answering Modbus requests (they are dropped, the master times out)."""
        _ = self.modules[module]  # validates the index
        if lost:
            self.comm_lost.add(module)
        else:
            self.comm_lost.discard(module)

    def inject_module_fault(self, module: int, code: int) -> None:
        """Module latches fault ``code`` (sticky until ``clear_module_fault``)."""
        self.modules[module].inject_fault(code)

    def clear_module_fault(self, module: int) -> None:
        self.modules[module].clear_injected_fault()

    def set_pump_failure(
        self, failed: bool = True, modules: int | Iterable[int] | None = None
    ) -> None:
        """Coolant flow to the given modules (default all) drops to zero, or comes back."""
        for m in self._modules(modules):
            m.flow_factor = 0.0 if failed else 1.0

    def set_welded(self, module: int, gun: int, welded: bool = True) -> None:
        """Contactor (module, gun) sticks closed whatever its coil says."""
        self.matrix.welded[module * self.guns + gun] = welded

    def set_meter_offline(self, gun: int, offline: bool = True) -> None:
        """Gun ``gun``'s meter stops answering."""
        _ = self.meters[gun]  # validates the index
        if offline:
            self.meter_offline.add(gun)
        else:
            self.meter_offline.discard(gun)

    def set_load_voltage(self, gun: int, voltage_v: float) -> None:
        """Change a constant-voltage load's voltage (no-op for other loads)."""
        load = self.loads[gun]
        if isinstance(load, ConstantVoltageLoad):
            load.voltage_v = voltage_v

    def apply_command(self, command: int, target: int, value: int) -> str | None:
        """Run a simulator control-device command; returns why it was refused, or None."""
        try:
            cmd = SimCommand(command)
        except ValueError:
            return f"unknown command {command}"
        every = target == SIM_TARGET_ALL
        try:
            if cmd is SimCommand.MODULE_COMM_LOSS or cmd is SimCommand.MODULE_COMM_RESTORE:
                for m in self._modules(None if every else target):
                    self.set_comm_loss(m.index, cmd is SimCommand.MODULE_COMM_LOSS)
            elif cmd is SimCommand.MODULE_FAULT:
                for m in self._modules(None if every else target):
                    m.inject_fault(value)
            elif cmd is SimCommand.MODULE_FAULT_CLEAR:
                for m in self._modules(None if every else target):
                    m.clear_injected_fault()
            elif cmd in (SimCommand.PUMP_FAILURE, SimCommand.PUMP_RESTORE):
                self.set_pump_failure(cmd is SimCommand.PUMP_FAILURE, None if every else target)
            elif cmd in (SimCommand.WELD_CONTACT, SimCommand.UNWELD_CONTACT):
                mod_i, gun_i = divmod(target, self.guns)
                _ = self.modules[mod_i]  # validates the index
                self.set_welded(mod_i, gun_i, cmd is SimCommand.WELD_CONTACT)
            elif cmd in (SimCommand.METER_OFFLINE, SimCommand.METER_ONLINE):
                guns = range(self.guns) if every else [target]
                for g in guns:
                    self.set_meter_offline(g, cmd is SimCommand.METER_OFFLINE)
            elif cmd is SimCommand.LOAD_VOLTAGE:
                for g in range(self.guns) if every else [target]:
                    self.set_load_voltage(g, float(value))
            elif cmd is SimCommand.CHILLER_TEMP:
                self.chiller_c = float(value)
        except IndexError:
            return f"target {target} out of range for {cmd.name}"
        return None


class RealTimeStepper:
    """Steps a ``StationPhysics`` from a clock, ``speed`` simulated seconds per clock second.

    For a simulated (external) clock, do not start this: call ``physics.step(dt)`` yourself.
    """

    def __init__(
        self,
        physics: StationPhysics,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = 0.005,
        speed: float = 1.0,
        max_step_s: float = 0.5,
    ) -> None:
        self.physics = physics
        self.clock = clock
        self.tick_s = tick_s
        self.speed = speed
        self.max_step_s = max_step_s
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Step forever (cancel to stop); a stall longer than ``max_step_s`` is not caught up."""
        last = self.clock()
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.clock()
            dt = min(now - last, self.max_step_s) * self.speed
            last = now
            self.physics.step(dt)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="sim-physics")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

