"""Shared helpers for the Modbus tests: a simulated station on free loopback ports.

The simulator runs with ``realtime=False``: simulated time only moves when a test calls
``advance``, so physics assertions are deterministic and no test sleeps for physics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from power.modbus_base import LinkSettings
from power.modbus_driver import Hardware, HardwareSnapshot
from sim.modbus_server import StationSimulator
from sim.modules import ModuleParams
from sim.physics import ConstantVoltageLoad, StationPhysics

#: Short timeouts so that a dead device costs a test little time.
TEST_LINK = LinkSettings(timeout_s=0.1, poll_budget_s=0.25, max_missed=2,
                         backoff_initial_s=0.01, backoff_max_s=0.05)


@dataclass
class Station:
    sim: StationSimulator
    hw: Hardware

    @property
    def physics(self) -> StationPhysics:
        return self.sim.physics

    def advance(self, seconds: float, step: float = 0.01) -> None:
        """Move simulated time in control-cycle-sized steps."""
        n = max(1, round(seconds / step))
        for _ in range(n):
            self.sim.advance(seconds / n)

    async def poll(self) -> HardwareSnapshot:
        return await self.hw.poll_all()


@asynccontextmanager
async def station(
    modules: int = 4,
    guns: int = 2,
    params: ModuleParams | None = None,
    link: LinkSettings = TEST_LINK,
    gateway: bool = False,
    load_voltage: float = 600.0,
) -> AsyncIterator[Station]:
    """A simulator on free ports plus a ``Hardware`` pointed at it; both closed afterwards."""
    physics = StationPhysics(
        modules, guns, params or ModuleParams(),
        loads=[ConstantVoltageLoad(load_voltage) for _ in range(guns)],
    )
    sim = StationSimulator(physics, realtime=False, gateway_port=0 if gateway else None)
    await sim.start()
    hw = Hardware(sim.hardware_config(link, gateway=gateway))
    try:
        yield Station(sim, hw)
    finally:
        await hw.close()
        await sim.stop()


async def polls_until(st: Station, predicate: object, limit: int = 2) -> int:
    """Poll up to ``limit`` times; return how many polls it took for ``predicate(snapshot)``."""
    assert callable(predicate)
    for n in range(1, limit + 1):
        snap = await st.poll()
        if predicate(snap):
            return n
    raise AssertionError(f"condition not met within {limit} polls: {snap.unavailable}")
