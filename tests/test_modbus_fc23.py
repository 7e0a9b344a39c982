"""Function 23 (read/write multiple registers) in the one-device-per-module layout (issue 17):
one request per module and cycle while its setpoint holds, the live values mirrored into
holding registers 0..14, and the function 4 map kept for modules without function 23."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from cycle_fixtures import rig, small_truck
from modbus_fixtures import TEST_LINK

from power.modbus_base import DeviceEndpoint, ModbusExceptionError, ModbusLink
from power.modbus_map import (
    MODULE_LIVE_COUNT,
    MODULE_MIRROR_COUNT,
    MODULE_MIRROR_START,
    MODULE_SETPOINT_START,
    encode_f32,
)
from power.modules import ModbusModule
from sim.modbus_server import StationSimulator
from sim.physics import ConstantVoltageLoad, StationPhysics


def count_requests(link: ModbusLink) -> Counter[str]:
    """Count the link's requests by kind ("read/write", "read input", "write registers"…)."""
    seen: Counter[str] = Counter()
    call = link._call

    async def counted(what: str, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        seen[what.split(" registers")[0].split(" register")[0]] += 1
        return await call(what, fn)

    link._call = counted  # type: ignore[method-assign]
    return seen


@asynccontextmanager
async def one_module(fc23: bool = True, mode: str = "auto"
                     ) -> AsyncIterator[tuple[StationSimulator, ModbusModule]]:
    physics = StationPhysics(1, 1, loads=[ConstantVoltageLoad(600.0)])
    sim = StationSimulator(physics, realtime=False, module_fc23=fc23)
    await sim.start()
    link = dataclasses.replace(TEST_LINK, module_read_write=mode)
    drv = ModbusModule(0, DeviceEndpoint(sim.ports.host, sim.ports.modules[0]), link)
    try:
        yield sim, drv
    finally:
        await drv.close()
        await sim.stop()


async def test_the_simulator_mirrors_the_live_values_and_applies_the_write_first() -> None:
    async with one_module() as (sim, drv):
        link = drv.link
        live = await link.read_input(0, MODULE_LIVE_COUNT)
        pair = encode_f32(650.0) + encode_f32(12.5)
        regs = await link.read_write(MODULE_MIRROR_START, MODULE_MIRROR_COUNT,
                                     MODULE_SETPOINT_START, pair)
        assert len(regs) == MODULE_LIVE_COUNT
        assert regs[:12] == live[:12]  # same model state (time does not move)
        mod = sim.physics.modules[0]
        assert (mod.voltage_setpoint_v, mod.current_limit_a) == (650.0, 12.5)
        assert await link.read_holding(MODULE_MIRROR_START, MODULE_MIRROR_COUNT) == regs
        # the mirror is read-only; a setpoint outside the rating is refused as with fc 16
        with pytest.raises(ModbusExceptionError) as ro:
            await link.write_registers(2, [0, 0])
        assert ro.value.code == 2
        with pytest.raises(ModbusExceptionError) as bad:
            await link.read_write(0, 15, MODULE_SETPOINT_START,
                                  encode_f32(650.0) + encode_f32(500.0))
        assert bad.value.code == 3
        assert mod.current_limit_a == 12.5


async def test_an_old_module_refuses_function_23_and_has_no_mirror() -> None:
    async with one_module(fc23=False) as (_sim, drv):
        with pytest.raises(ModbusExceptionError) as no_fc:
            await drv.link.read_write(0, 15, MODULE_SETPOINT_START, encode_f32(1.0) * 2)
        assert no_fc.value.code == 1
        with pytest.raises(ModbusExceptionError) as no_mirror:
            await drv.link.read_holding(0, 15)
        assert no_mirror.value.code == 2


async def test_a_held_setpoint_costs_one_request_a_cycle() -> None:
    async with one_module() as (sim, drv):
        seen = count_requests(drv.link)
        first = await drv.poll()  # nothing commanded yet: function 4 (and the rating)
        assert first.available and seen == Counter({"read input": 2})
        await drv.set_output(700.0, 10.0)
        assert seen["write"] == 1
        for _ in range(5):  # poll, then the same setpoint: one request in all
            seen.clear()
            s = await drv.poll()
            await drv.set_output(700.0, 10.0)
            assert s.available and s.reason is None
            assert seen == Counter({"read/write": 1}), seen
        seen.clear()
        await drv.poll()
        await drv.set_output(700.0, 20.0)  # a changed setpoint is a second request
        assert seen == Counter({"read/write": 1, "write": 1})
        assert sim.physics.modules[0].current_limit_a == 20.0
        seen.clear()
        s = await drv.poll()  # echoes the new pair and reads after the write
        assert seen == Counter({"read/write": 1})
        assert s.voltage_v == pytest.approx(sim.physics.modules[0].voltage_v, abs=1e-3)


async def test_the_poll_echoes_only_after_a_command() -> None:
    # When the controller stops commanding, the polls stop feeding the watchdog.
    async with one_module() as (_sim, drv):
        seen = count_requests(drv.link)
        await drv.poll()
        await drv.set_output(700.0, 10.0)
        seen.clear()
        await drv.poll()
        await drv.poll()
        assert seen == Counter({"read/write": 1, "read input": 1})


async def test_auto_falls_back_to_function_4_for_good() -> None:
    async with one_module(fc23=False) as (sim, drv):
        seen = count_requests(drv.link)
        await drv.poll()
        await drv.set_output(700.0, 10.0)
        seen.clear()
        s = await drv.poll()  # refused once (exception 1), then read with fc 4, same poll
        assert s.available and s.reason is None
        assert seen == Counter({"read/write": 1, "read input": 1})
        assert drv.read_write == "fc4"
        assert drv.read_write_refused is not None and "exception 1" in drv.read_write_refused
        for _ in range(3):  # from now on: fc 4 poll + fc 16 write, never fc 23 again
            seen.clear()
            await drv.set_output(700.0, 10.0)
            assert (await drv.poll()).available
            assert seen == Counter({"write": 1, "read input": 1})
        assert sim.physics.modules[0].current_limit_a == 10.0


async def test_fc4_mode_never_tries_and_fc23_mode_never_falls_back() -> None:
    async with one_module(mode="fc4") as (_sim, drv):
        seen = count_requests(drv.link)
        await drv.poll()
        await drv.set_output(700.0, 10.0)
        await drv.poll()
        assert "read/write" not in seen
    async with one_module(fc23=False, mode="fc23") as (_sim, drv):
        await drv.poll()
        await drv.set_output(700.0, 10.0)
        s = await drv.poll()  # a refusal is a device error here, with the reason
        assert s.reason is not None and "exception 1" in s.reason
        assert drv.read_write == "fc23"


async def test_a_decrease_that_failed_is_what_the_next_poll_echoes() -> None:
    async with one_module() as (sim, drv):
        await drv.poll()
        await drv.set_output(700.0, 50.0)
        sim.physics.comm_lost.add(0)
        with pytest.raises(Exception, match="module 0"):
            await drv.set_output(700.0, 5.0)  # lost on the way
        sim.physics.comm_lost.discard(0)
        await drv.poll()
        assert sim.physics.modules[0].current_limit_a == 5.0  # the lower pair, not 50 A


async def test_a_charging_station_polls_each_module_with_one_request() -> None:
    async with rig([small_truck("A", target_soc_pct=95.0),
                    small_truck("B", target_soc_pct=95.0)]) as r:
        for t in r.trucks:
            t.plug_in()
        await r.until(lambda rec: rec.station_power_w > 250_000.0, max_cycles=400)
        await r.step(10)
        counts = [count_requests(m.link) for m in r.station.hw.modules]  # type: ignore[attr-defined]
        await r.step(10)
        per_cycle = sum(sum(c.values()) for c in counts) / 10
        held = sum(c["read/write"] for c in counts)
        assert held == 10 * len(counts)  # every poll was one fc 23 request
        # module requests a cycle: one poll each, plus only the setpoints that changed
        assert per_cycle < 1.5 * len(counts), [dict(c) for c in counts]
        print(f"module requests per cycle: {per_cycle:.1f} for {len(counts)} modules")
        r.assert_safe()
        assert all(m.read_write == "auto" for m in r.station.hw.modules)  # type: ignore[attr-defined]
