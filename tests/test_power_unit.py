"""The power-unit layout: register map, simulator and driver over real Modbus TCP."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from cycle_fixtures import TEST_LINK, SimClock, config_data, make_config, small_truck

from controller.config import ConfigError, parse_config
from controller.station import Station
from power.modbus_base import InterlockRefusedError, LinkSettings, ModbusLink
from power.power_unit import PowerUnitConfig, PowerUnitHardware, make_hardware
from power.power_unit_map import (
    MAX_READ,
    MAX_WRITE,
    OUTPUT_START,
    from_s16,
    from_u16,
    live_reads,
    rating_reads,
    to_s16,
    to_u16,
)
from sim.physics import StationPhysics
from sim.power_unit import PowerUnitSimulator
from sim.truck import TruckSim


@asynccontextmanager
async def unit(modules: int = 48, link: LinkSettings = TEST_LINK
               ) -> AsyncIterator[tuple[PowerUnitSimulator, PowerUnitHardware]]:
    sim = PowerUnitSimulator(StationPhysics(modules, 2), realtime=False)
    await sim.start()
    hw = PowerUnitHardware(sim.hardware_config(link))
    try:
        await hw.start()
        yield sim, hw
    finally:
        await hw.close()
        await sim.stop()


def test_map_reads_fit_modbus_limits_and_scaling_round_trips() -> None:
    for m_n in (1, 12, 13, 48, 96, 192):
        reads = live_reads(m_n)
        assert all(c <= MAX_READ for _f, _a, c in reads)
        assert sum(c for _f, _a, c in reads) == m_n * 10
        assert all(c <= MAX_READ for _f, _a, c in rating_reads(m_n))
    assert len(live_reads(48)) == 4 and len(live_reads(96)) == 8
    assert from_u16(to_u16(812.34)) == pytest.approx(812.3)
    assert from_s16(to_s16(-3.2)) == pytest.approx(-3.2)
    with pytest.raises(ValueError, match="does not fit"):
        to_u16(-1.0)


async def test_a_poll_is_a_handful_of_requests_and_writes_coalesce() -> None:
    async with unit(48) as (sim, hw):
        before = sim.unit.requests
        snap = await hw.poll_all()
        assert sim.unit.requests - before == 5  # header with the matrix images + 4 live blocks
        assert snap.unavailable == []
        before = sim.unit.requests
        await asyncio.gather(*(hw.modules[i].set_output(700.0, 40.0 + i / 10)
                               for i in range(48)))
        assert sim.unit.requests - before == 1  # 96 registers: one fc 16 write
        assert [m.current_limit_a for m in sim.physics.modules] == pytest.approx(
            [40.0 + i / 10 for i in range(48)])
        before = sim.unit.requests
        await asyncio.gather(hw.matrix.connect(0, 0), hw.matrix.connect(7, 1),
                             hw.matrix.connect(47, 0))
        assert sim.unit.requests - before == 1
        # gaps carry the unit's values: module 3 was not asked and keeps its limit
        await hw.modules[5].set_output(700.0, 10.0)
        assert sim.physics.modules[3].current_limit_a == pytest.approx(40.3)
        assert sim.physics.modules[5].current_limit_a == pytest.approx(10.0)


async def test_96_modules_need_two_writes_in_flight_together() -> None:
    async with unit(96) as (sim, hw):
        before = sim.unit.requests
        await asyncio.gather(*(hw.modules[i].set_output(650.0, 20.0) for i in range(96)))
        assert sim.unit.requests - before == 2  # 61 modules per write at most
        assert all(m.current_limit_a == pytest.approx(20.0) for m in sim.physics.modules)
        snap = await hw.poll_all()
        assert snap.unavailable == []


async def test_refused_close_fails_only_the_culprit() -> None:
    async with unit(8) as (sim, hw):
        await hw.matrix.connect(2, 1)
        sim.advance(0.05)
        await hw.poll_all()
        results = await asyncio.gather(hw.matrix.connect(2, 0), hw.matrix.connect(4, 0),
                                       return_exceptions=True)
        assert isinstance(results[0], InterlockRefusedError)
        assert results[0].module == 2 and results[0].gun == 0
        assert results[1] is None
        assert sim.physics.matrix.coils[4 * 2 + 0]


async def test_module_lost_on_the_internal_bus_is_named() -> None:
    async with unit(8) as (sim, hw):
        sim.physics.set_comm_loss(3)
        sim.advance(0.1)
        snap = await hw.poll_all()
        bad = [m for m in snap.modules if not m.available]
        assert [m.index for m in bad] == [3]
        assert "module 3 not answering on the internal bus" in (bad[0].reason or "")


async def test_repeated_snapshot_is_stale_and_a_stuck_counter_unavailable() -> None:
    link = dataclasses.replace(TEST_LINK, heartbeat_stale_polls=2)
    async with unit(4, link) as (sim, hw):
        sim.advance(0.1)
        assert (await hw.poll_all()).modules[0].reason is None
        snap = await hw.poll_all()  # no time passed: the unit did not refresh
        assert snap.modules[0].available
        assert (snap.modules[0].reason or "").startswith("stale: power unit cycle counter")
        snap = await hw.poll_all()
        assert not snap.modules[0].available
        assert "cycle counter stuck" in (snap.modules[0].reason or "")
        sim.advance(0.1)
        assert (await hw.poll_all()).modules[0].fresh


async def test_unit_gone_is_stale_once_then_unavailable() -> None:
    async with unit(4) as (sim, hw):
        sim.advance(0.1)
        await hw.poll_all()
        await sim.stop()
        first = await hw.poll_all()
        assert first.modules[0].available and (first.modules[0].reason or "").startswith("stale")
        second = await hw.poll_all()
        assert not second.modules[0].available and not second.matrix.available
        with pytest.raises(Exception, match="power unit"):
            await hw.modules[0].set_output(600.0, 10.0)


async def test_simulator_refuses_a_bad_write_as_a_whole() -> None:
    async with unit(4) as (sim, hw):
        link = ModbusLink(hw.config.unit, "raw", TEST_LINK)
        try:
            good, bad = [to_u16(600.0), to_u16(10.0)], [to_u16(600.0), to_u16(150.0)]
            with pytest.raises(Exception, match="exception 3"):
                await link.write_registers(OUTPUT_START, good + bad)
            assert sim.physics.modules[0].current_limit_a == 0.0
            with pytest.raises(Exception, match="exception 2"):
                await link.write_registers(OUTPUT_START + 8 * 2, good)  # module 8 of 4
            assert len(good + bad) <= MAX_WRITE
        finally:
            await link.close()


def test_config_selects_the_power_unit_and_refuses_per_module_addresses() -> None:
    data = config_data(48)
    data["hardware"] = {"layout": "power_unit", "host": "10.0.0.9", "port": 502}
    hw = parse_config(data).hardware_config()
    assert isinstance(hw, PowerUnitConfig)
    assert (hw.unit.host, hw.unit.port, hw.module_count, hw.guns) == ("10.0.0.9", 502, 48, 2)
    assert [(m.port, m.unit) for m in hw.meters] == [(503, 1), (503, 2)]
    assert isinstance(make_hardware(hw), PowerUnitHardware)
    data["modules"]["addresses"] = [{"host": "h", "port": 1}] * 48
    with pytest.raises(ConfigError, match="power_unit"):
        parse_config(data)


async def test_station_charges_two_trucks_through_the_power_unit() -> None:
    clock = SimClock()
    cars = [TruckSim(small_truck(n, target_soc_pct=95), clock) for n in "AB"]
    sim = PowerUnitSimulator(StationPhysics(8, 2, loads=cars), realtime=False)
    await sim.start()
    st = Station(make_config(8, 2), cars, hardware=sim.hardware_config(TEST_LINK), clock=clock)
    assert isinstance(st.hw, PowerUnitHardware)
    violations = 0
    try:
        await st.start()
        for c in cars:
            c.plug_in()
        rec = None
        for _ in range(200):
            rec = await st.cycle()
            clock.t += 0.1
            sim.advance(0.1)
            if all(g.state == "Charging" and g.current_a > 150 for g in rec.guns):
                break
        assert rec is not None and all(g.state == "Charging" for g in rec.guns), rec
        for _ in range(10):
            rec = await st.cycle()
            clock.t += 0.1
            sim.advance(0.1)
        a, b = rec.guns
        assert abs(a.current_a - b.current_a) <= 5.0 and a.current_a + b.current_a > 380
        violations = st.violations
    finally:
        await st.close()
        await sim.stop()
    assert violations == 0
    assert sim.physics.hot_switches() == []


async def test_control_writes_coalesce_without_touching_other_modules() -> None:
    async with unit(48) as (sim, hw):
        await asyncio.gather(*(m.set_watchdog(700) for m in hw.modules),
                             *(m.enable() for m in hw.modules))
        before = sim.unit.requests
        await asyncio.gather(*(hw.modules[i].disable() for i in range(48)))
        assert sim.unit.requests - before == 1  # one run of 48 enable registers
        assert not any(m.enabled for m in sim.physics.modules)
        assert all(m.watchdog_ms == 700 for m in sim.physics.modules)
        before = sim.unit.requests
        await asyncio.gather(hw.modules[1].enable(), hw.modules[3].enable())
        assert sim.unit.requests - before == 2  # no gap filled: module 2 stays off
        assert [m.enabled for m in sim.physics.modules[:5]] == [False, True, False, True, False]
        with pytest.raises(ValueError, match="watchdog"):
            await hw.modules[0].set_watchdog(70000)
