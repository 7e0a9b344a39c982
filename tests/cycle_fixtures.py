"""Shared helpers for the control-cycle tests: a station against the real Modbus simulators.

The simulator runs with ``realtime=False`` and the station on a simulated clock: a test calls
``rig.step()`` (one control cycle, then ``dt`` of simulated time) — deterministic, no sleeps.
Trucks are ``sim.truck.TruckSim``: the gun's electrical load and its vehicle link at once.
``SimClock`` is the package's (``controller.clock``); tests import it from here too.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from controller.clock import SimClock as SimClock
from controller.config import StationConfig, parse_config
from controller.records import CycleRecord
from controller.station import Station, StationEvent
from power.modbus_base import LinkSettings
from power.modbus_driver import Hardware
from sim.modbus_server import StationSimulator
from sim.modules import ModuleParams
from sim.physics import StationPhysics
from sim.truck import TruckParams, TruckSim

TEST_LINK = LinkSettings(timeout_s=0.2, poll_budget_s=0.3, max_missed=2,
                         backoff_initial_s=0.01, backoff_max_s=0.05)


def config_data(modules: int = 8, guns: int = 2, **station: Any) -> dict[str, Any]:
    st: dict[str, Any] = {"id": "TEST-1", "max_kw": 1440.0, "fallback_grid_kw": 1440.0,
                          "cable_check_s": 0.3}
    st.update(station)
    return {
        "station": st,
        "guns": [{"cable_rating_a": 1500.0, "max_voltage_v": 1000.0, "connector": "MCS"}
                 for _ in range(guns)],
        "modules": {"count": modules, "rated_power_w": 40_000.0, "rated_current_a": 100.0},
    }


def make_config(modules: int = 8, guns: int = 2, **station: Any) -> StationConfig:
    return parse_config(config_data(modules, guns, **station))


def small_truck(name: str = "A", **kw: Any) -> TruckParams:
    """A small battery so that charging to target takes seconds of simulated time."""
    base: dict[str, Any] = {"name": name, "capacity_kwh": 20.0, "ev_max_current_a": 400.0,
                            "max_c_rate": 20.0, "start_soc_pct": 70.0, "target_soc_pct": 73.0,
                            "cc_until_soc_pct": 90.0, "id_token": f"TRUCK-{name}"}
    base.update(kw)
    return TruckParams(**base)


@dataclass
class Rig:
    sim: StationSimulator
    station: Station
    trucks: list[TruckSim]
    clock: SimClock
    dt: float = 0.1
    records: list[CycleRecord] = field(default_factory=list)
    events: list[StationEvent] = field(default_factory=list)
    #: The simulator's own gun currents after each step: what flowed, whether or not the
    #: station's poll of the meters kept its real-time deadline that cycle.
    flowed: list[tuple[float, ...]] = field(default_factory=list)

    @property
    def physics(self) -> StationPhysics:
        return self.sim.physics

    async def step(self, n: int = 1) -> CycleRecord:
        """``n`` control cycles, each followed by ``dt`` of simulated time."""
        rec: CycleRecord | None = None
        for _ in range(n):
            rec = await self.station.cycle()
            self.records.append(rec)
            self.clock.t += self.dt
            self.sim.advance(self.dt)
            self.flowed.append(tuple(self.physics.gun_current_a))
        assert rec is not None
        return rec

    @staticmethod
    def polled(rec: CycleRecord, silent: Collection[int] = ()) -> bool:
        """False when the station's real-time poll deadline cut a device off this cycle.

        The station runs on simulated time but polls in real time: on a loaded machine a
        poll can overrun its deadline, and every device it cut is unavailable in that
        cycle by design (meters read NaN, modules count as unavailable). Such a cycle is no
        evidence either way; a test may skip it but must still see enough polled cycles.
        ``silent``: modules the test made stop answering (their polls overrun on purpose).
        """
        return (all(math.isfinite(g.current_a) for g in rec.guns)
                and not any("poll exceeded" in (m.reason or "")
                            for m in rec.modules if m.module not in silent))

    async def polled_steps(self, n: int, max_cycles: int = 40,
                           silent: Collection[int] = ()) -> CycleRecord:
        """Step until ``n`` cycles whose poll was complete have run; returns the last."""
        done = 0
        for _ in range(max_cycles):
            rec = await self.step()
            done += self.polled(rec, silent)
            if done >= n:
                return rec
        raise AssertionError(f"only {done} of {n} cycles polled in time in {max_cycles}")

    async def until(self, pred: Callable[[CycleRecord], bool], max_cycles: int = 300
                    ) -> CycleRecord:
        for _ in range(max_cycles):
            rec = await self.step()
            if pred(rec):
                return rec
        raise AssertionError(f"condition not reached in {max_cycles} cycles; last: "
                             f"{[(g.state, round(g.current_a, 1)) for g in rec.guns]}")

    def states(self) -> list[str]:
        return [s.state.value for s in self.station.sessions]

    def assert_safe(self) -> None:
        """The safety monitor saw nothing and the simulator logged no hot switch."""
        bad = [v for r in self.records for v in r.violations]
        assert self.station.violations == 0, bad[:5]
        assert self.physics.hot_switches() == []


@asynccontextmanager
async def rig(
    trucks: list[TruckParams], modules: int = 8, module_params: ModuleParams | None = None,
    dt: float = 0.1, **station: Any,
) -> AsyncIterator[Rig]:
    """Simulator (one truck per gun) + station on a simulated clock; both closed afterwards."""
    clock = SimClock()
    cars = [TruckSim(p, clock) for p in trucks]
    physics = StationPhysics(modules, len(cars), module_params or ModuleParams(), loads=cars)
    sim = StationSimulator(physics, realtime=False)
    await sim.start()
    cfg = make_config(modules, len(cars), **station)
    hw = Hardware(sim.hardware_config(TEST_LINK), clock)
    async def advance(dt: float) -> None:  # the stop sequence's waits, on simulated time
        clock.t += dt
        sim.advance(dt)

    st = Station(cfg, cars, hardware=hw, clock=clock, pause=advance)
    r = Rig(sim, st, cars, clock, dt)
    st.subscribe(r.events.append)
    try:
        await st.start()
        yield r
    finally:
        await st.close()
        await sim.stop()
