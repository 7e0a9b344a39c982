"""Drivers against the real simulator over TCP on loopback (simulated time, no sleeps)."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from helpers import free_port_block
from modbus_fixtures import TEST_LINK, polls_until, station

from power.matrix import MatrixDriver, ModbusMatrix
from power.meters import MeterDriver, ModbusMeter
from power.modbus_base import (
    DeviceEndpoint,
    InterlockRefusedError,
    LinkSettings,
    ModbusExceptionError,
)
from power.modbus_driver import Hardware, HardwareConfig
from power.modbus_map import ModuleHolding, decode_f32
from power.modules import ModbusModule, ModuleDriver
from sim.modbus_server import StationSimulator
from sim.modules import ModuleParams
from sim.physics import StationPhysics


async def test_drivers_satisfy_their_contracts() -> None:
    async with station(2, 2) as st:
        assert isinstance(st.hw.modules[0], ModuleDriver)
        assert isinstance(st.hw.matrix, MatrixDriver)
        assert isinstance(st.hw.meters[0], MeterDriver)


async def test_poll_reads_every_register_with_scaling() -> None:
    async with station(3, 2) as st:
        mod = st.physics.modules[1]
        mod.voltage_v, mod.current_a = 812.5, 42.25
        mod.coolant_in_c, mod.coolant_out_c, mod.internal_c = 24.5, 27.75, 48.125
        mod.heartbeat = 65535
        snap = await st.poll()
        s = snap.modules[1]
        assert s.available and s.reason is None
        assert (s.voltage_v, s.current_a) == (812.5, 42.25)
        assert (s.coolant_in_c, s.coolant_out_c, s.internal_c) == (24.5, 27.75, 48.125)
        assert s.available_current_a == 100.0 and s.heartbeat == 65535
        assert s.ready and not s.output_on and not s.fault
        assert s.rating is not None and s.rating.rated_power_w == 40_000
        assert (s.rating.min_voltage_v, s.rating.max_voltage_v) == (150.0, 1000.0)
        assert snap.matrix.available and snap.matrix.closed.shape == (3, 2)
        assert all(m.available and m.energy_wh == 0.0 for m in snap.meters)
        assert snap.read_at >= snap.started_at


async def test_commands_round_trip_through_holding_registers() -> None:
    async with station(2, 2) as st:
        await st.poll()
        drv = st.hw.modules[0]
        assert isinstance(drv, ModbusModule)
        await drv.set_output(725.5, 37.25)
        await drv.set_watchdog(2500)
        await drv.enable()
        regs = await drv.link.read_holding(ModuleHolding.VOLTAGE_SETPOINT, 7)
        assert decode_f32(regs, 0) == 725.5 and decode_f32(regs, 2) == 37.25
        assert regs[4:] == [1, 2500, 0]
        mod = st.physics.modules[0]
        assert (mod.voltage_setpoint_v, mod.current_limit_a, mod.enabled) == (725.5, 37.25, True)
        await drv.disable()
        assert not mod.enabled
        with pytest.raises(ValueError, match="voltage setpoint"):
            await drv.set_output(1200.0, 10.0)
        with pytest.raises(ValueError, match="current limit"):
            await drv.set_output(700.0, math.nan)
        with pytest.raises(ValueError, match="watchdog"):
            await drv.set_watchdog(70000)


async def test_charging_through_the_matrix_is_seen_by_modules_and_meter() -> None:
    async with station(2, 2) as st:
        await st.poll()
        for i in (0, 1):
            await st.hw.matrix.connect(i, 1)
            await st.hw.modules[i].set_output(800.0, 50.0)
            await st.hw.modules[i].enable()
        st.advance(0.5)
        snap = await st.poll()
        assert list(snap.matrix.module_gun()) == [1, 1]
        assert all(m.output_on and m.current_a == pytest.approx(50.0, abs=0.1)
                   for m in snap.modules)
        meter = snap.meters[1]
        assert meter.current_a == pytest.approx(100.0, abs=0.2)
        assert meter.voltage_v == pytest.approx(601.0, abs=0.1)
        assert meter.energy_wh > 0 and snap.meters[0].energy_wh == 0.0
        # Ramp down, then open at zero current: no hot switching.
        for i in (0, 1):
            await st.hw.modules[i].set_output(800.0, 0.0)
        st.advance(0.2)
        for i in (0, 1):
            await st.hw.matrix.disconnect(i, 1)
        st.advance(0.1)
        snap = await st.poll()
        assert list(snap.matrix.module_gun()) == [-1, -1]
        assert st.physics.hot_switches() == []


async def test_watchdog_expires_without_writes_and_is_rearmed_by_enable() -> None:
    async with station(1, 1) as st:
        await st.poll()
        drv = st.hw.modules[0]
        await drv.set_watchdog(200)
        await drv.set_output(700.0, 10.0)
        await drv.enable()
        st.advance(0.15)
        assert (await st.poll()).modules[0].output_on
        await drv.set_output(700.0, 10.0)  # a write feeds the watchdog
        st.advance(0.15)
        assert (await st.poll()).modules[0].output_on  # (its fc 23 echo feeds it once more)
        st.advance(0.25)
        s = (await st.poll()).modules[0]
        assert s.watchdog_expired and not s.output_on and s.available
        await drv.enable()
        s = (await st.poll()).modules[0]
        assert s.output_on and not s.watchdog_expired


async def test_derating_under_pump_failure() -> None:
    params = ModuleParams(internal_heat_capacity_j_per_k=1500.0)
    async with station(2, 1, params) as st:
        await st.poll()
        await st.hw.matrix.connect(0, 0)
        drv = st.hw.modules[0]
        await drv.set_watchdog(0)
        await drv.set_output(900.0, 100.0)
        await drv.enable()
        st.advance(1.0, step=0.01)
        before = (await st.poll()).modules[0]
        assert not before.derating and before.current_a > 60
        st.physics.set_pump_failure()
        st.advance(150.0, step=0.05)
        after = (await st.poll()).modules[0]
        assert after.available
        assert after.derating and after.available_current_a < 100.0
        assert after.internal_c > before.internal_c + 20
        assert after.coolant_out_c > before.coolant_out_c + 10
        assert after.usable_current_a == after.available_current_a
        assert after.current_a <= after.available_current_a + 0.5


async def test_interlock_refusal_is_a_typed_error() -> None:
    async with station(2, 2) as st:
        await st.poll()
        await st.hw.matrix.connect(0, 0)
        st.advance(0.05)
        with pytest.raises(InterlockRefusedError) as info:
            await st.hw.matrix.connect(0, 1)
        assert (info.value.module, info.value.gun) == (0, 1)
        snap = await st.poll()
        assert snap.matrix.interlock_refused and snap.matrix.available
        assert snap.matrix.module_gun()[0] == 0
        assert snap.matrix.module_gun().dtype == np.int64
        await st.hw.matrix.connect(1, 1)  # an accepted write clears the bit
        assert not (await st.poll()).matrix.interlock_refused
        with pytest.raises(ValueError):
            await st.hw.matrix.connect(5, 0)


async def test_gateway_layout_by_unit_id() -> None:
    async with station(3, 2, gateway=True) as st:
        snap = await st.poll()
        assert not snap.unavailable
        assert {ep.port for ep in st.hw.config.modules} == {st.sim.ports.gateway}
        st.physics.modules[2].internal_c = 33.0
        assert (await st.poll()).modules[2].internal_c == 33.0


async def test_port_per_device_config_matches_sim_layout() -> None:
    cfg = HardwareConfig.port_per_device("10.0.0.5", 15020, 48, 2)
    assert cfg.modules[47] == DeviceEndpoint("10.0.0.5", 15067, 1)
    assert cfg.matrix.port == 15068 and cfg.meters[1] == DeviceEndpoint("10.0.0.5", 15069, 2)
    gw = HardwareConfig.gateway("h", 502, 48, 2)
    assert gw.modules[0].unit == 1 and gw.matrix.unit == 240 and gw.meters[1].unit == 242
    with pytest.raises(ValueError):
        HardwareConfig.gateway("h", 502, 300, 2)


async def test_poll_of_many_devices_is_concurrent() -> None:
    link = LinkSettings(timeout_s=0.3, poll_budget_s=0.5)
    async with station(48, 2, link=link) as st:
        snap = await st.poll()
        assert not snap.unavailable and len(snap.modules) == 48
        for m in (3, 17, 30, 44):
            st.physics.set_comm_loss(m)
        snap = await st.poll()
        # Four timeouts of 0.3 s in a row would take 1.2 s: they overlap instead.
        assert 0.3 <= snap.poll_s < 0.55
        assert [m.index for m in snap.modules if not m.available] == []  # one miss tolerated
        assert sum((m.reason or "").startswith("stale") for m in snap.modules) == 4
        assert snap.matrix.available and all(m.available for m in snap.meters)


async def test_injected_clock_stamps_states() -> None:
    ticks = iter(range(1000, 100000))
    async with station(1, 1) as st:
        hw = Hardware(st.hw.config, clock=lambda: float(next(ticks)))
        try:
            snap = await hw.poll_all()
            assert snap.started_at >= 1000 and snap.modules[0].read_at > snap.started_at
            assert snap.matrix.read_at >= 1000 and snap.meters[0].read_at >= 1000
        finally:
            await hw.close()


async def test_driver_standalone_construction() -> None:
    async with station(1, 1) as st:
        p = st.sim.ports
        mod = ModbusModule(0, DeviceEndpoint(p.host, p.modules[0]), TEST_LINK)
        mx = ModbusMatrix(1, 1, DeviceEndpoint(p.host, p.matrix), TEST_LINK)
        met = ModbusMeter(0, DeviceEndpoint(p.host, p.meters, 1), TEST_LINK)
        try:
            states = await asyncio.gather(mod.poll(), mx.poll(), met.poll())
            assert all(s.available for s in states)
        finally:
            await asyncio.gather(mod.close(), mx.close(), met.close())


async def test_wrong_matrix_size_is_reported() -> None:
    async with station(2, 2) as st:
        p = st.sim.ports
        mx = ModbusMatrix(3, 2, DeviceEndpoint(p.host, p.matrix), TEST_LINK)
        try:
            s = await mx.poll()
            assert not s.available and "2 modules × 2 guns" in (s.reason or "")
        finally:
            await mx.close()


async def test_exception_reply_is_unavailable_with_reason() -> None:
    async with station(1, 1) as st:
        p = st.sim.ports
        wrong_unit = ModbusModule(0, DeviceEndpoint(p.host, p.modules[0], unit=9), TEST_LINK)
        try:
            s = await wrong_unit.poll()
            assert not s.available and "Modbus exception 4" in (s.reason or "")
            with pytest.raises(ModbusExceptionError):
                await wrong_unit.enable()
        finally:
            await wrong_unit.close()


async def test_hardware_snapshot_lists_unavailable_devices() -> None:
    async with station(2, 1) as st:
        st.physics.set_meter_offline(0)
        n = await polls_until(st, lambda s: not s.meters[0].available)
        assert n == 1  # never seen before: unavailable at once
        assert st.hw.last is not None
        assert any("meter 0" in r for r in st.hw.last.unavailable)


async def test_documented_port_layout_end_to_end() -> None:
    for attempt in range(5):
        base = free_port_block(4 + 3)  # a fixed layout: cannot bind 0
        sim = StationSimulator(StationPhysics(4, 2), base_port=base, realtime=False)
        try:
            await sim.start()
        except OSError:
            if attempt == 4:
                raise
            continue
        break
    try:
        assert sim.ports.modules == [base, base + 1, base + 2, base + 3]
        assert (sim.ports.matrix, sim.ports.meters, sim.ports.control) == (
            base + 4, base + 5, base + 6)
        cfg = HardwareConfig.port_per_device("127.0.0.1", base, 4, 2, TEST_LINK)
        async with Hardware(cfg) as hw:
            snap = await hw.poll_all()
            assert not snap.unavailable
    finally:
        await sim.stop()
