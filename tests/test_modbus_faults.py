"""Every injected fault is detected by the drivers within two polls, and recovers."""

from __future__ import annotations

import asyncio
import math
import struct

import pytest
from helpers import closed_port, eventually
from modbus_fixtures import TEST_LINK, polls_until, station

from power.modbus_base import (
    DeviceEndpoint,
    DeviceHealth,
    DeviceUnavailableError,
    LinkSettings,
    ModbusLink,
)
from power.modbus_driver import Hardware
from power.modbus_map import ModuleFault
from power.modules import ModbusModule, ModuleState
from sim.modules import ModuleParams


async def test_module_communication_loss_detected_and_recovered() -> None:
    async with station(3, 2) as st:
        assert not (await st.poll()).unavailable
        st.physics.set_comm_loss(1)
        n = await polls_until(st, lambda s: not s.modules[1].available)
        assert n <= 2
        snap = st.hw.last
        assert snap is not None
        assert "no answer" in (snap.modules[1].reason or "")
        assert snap.modules[0].available and snap.modules[2].available and snap.matrix.available
        # A dead device costs its own timeout, not the others'.
        assert snap.poll_s < TEST_LINK.poll_budget_s
        st.physics.set_comm_loss(1, False)
        assert await polls_until(st, lambda s: s.modules[1].available) == 1


async def test_one_missed_poll_is_tolerated_as_stale() -> None:
    async with station(1, 1) as st:
        await st.poll()
        st.physics.set_comm_loss(0)
        s = (await st.poll()).modules[0]
        assert s.available and (s.reason or "").startswith("stale")
        s = (await st.poll()).modules[0]
        assert not s.available and "2 missed polls" in (s.reason or "")


async def test_module_fault_code_detected() -> None:
    async with station(2, 1) as st:
        await st.poll()
        st.physics.inject_module_fault(0, 42)
        n = await polls_until(st, lambda s: s.modules[0].fault)
        assert n == 1
        s = st.hw.last.modules[0] if st.hw.last else None
        assert s is not None and s.fault_code == 42 and not s.ready
        assert s.usable_current_a == 0.0
        await st.hw.modules[0].reset_fault()
        assert (await st.poll()).modules[0].fault  # injected fault is sticky
        st.physics.clear_module_fault(0)
        await st.hw.modules[0].reset_fault()
        s = (await st.poll()).modules[0]
        assert not s.fault and s.fault_code == 0 and s.ready


async def test_pump_failure_detected_through_temperatures() -> None:
    async with station(1, 1, ModuleParams(internal_heat_capacity_j_per_k=800.0)) as st:
        await st.poll()
        await st.hw.matrix.connect(0, 0)
        await st.hw.modules[0].set_watchdog(0)
        await st.hw.modules[0].set_output(900.0, 100.0)
        await st.hw.modules[0].enable()
        st.advance(2.0, step=0.01)
        base = (await st.poll()).modules[0]
        st.physics.set_pump_failure()
        st.advance(90.0, step=0.05)
        n = await polls_until(st, lambda s: s.modules[0].derating)
        assert n == 1
        hot = st.hw.last.modules[0] if st.hw.last else base
        assert hot.coolant_out_c - hot.coolant_in_c > (base.coolant_out_c - base.coolant_in_c) + 10
        # Left alone it trips on over-temperature.
        st.advance(200.0, step=0.05)
        s = (await st.poll()).modules[0]
        assert s.over_temperature and s.fault and s.fault_code == ModuleFault.OVER_TEMPERATURE
        assert s.available_current_a == 0.0 and not s.output_on


async def test_welded_contactor_detected() -> None:
    async with station(2, 2) as st:
        await st.poll()
        await st.hw.matrix.connect(0, 1)
        st.advance(0.05)
        st.physics.set_welded(0, 1)
        await st.hw.matrix.disconnect(0, 1)
        st.advance(0.05)
        n = await polls_until(st, lambda s: s.matrix.welded)
        assert n == 1
        m = st.hw.last.matrix if st.hw.last else None
        assert m is not None and m.closed[0, 1] and not m.commanded[0, 1]
        assert m.mismatch()[0, 1]
        assert m.module_gun()[0] == 1


async def test_meter_offline_detected_and_recovered() -> None:
    async with station(1, 2) as st:
        await st.poll()
        st.physics.set_meter_offline(1)
        assert await polls_until(st, lambda s: not s.meters[1].available) <= 2
        assert st.hw.last is not None and st.hw.last.meters[0].available
        st.physics.set_meter_offline(1, False)
        assert await polls_until(st, lambda s: s.meters[1].available) == 1


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("internal_c", math.nan, "internal temperature is nan"),
        ("coolant_in_c", -60.0, "coolant inlet temperature -60.0 °C outside"),
        ("voltage_v", 1100.0, "above the rated maximum"),
        ("current_a", math.inf, "output current is inf"),
        ("available_current_a", 250.0, "available current 250.0 A outside"),
    ],
)
async def test_insane_module_values_make_it_unavailable(
    field: str, value: float, reason: str
) -> None:
    async with station(1, 1) as st:
        await st.poll()
        mod = st.physics.modules[0]
        good = getattr(mod, field)
        setattr(mod, field, value)
        s = (await st.poll()).modules[0]
        assert not s.available and reason in (s.reason or ""), s.reason
        assert getattr(s, field) == good  # the last sane value is kept
        setattr(mod, field, good)
        assert (await st.poll()).modules[0].available


async def test_insane_meter_values() -> None:
    async with station(1, 1) as st:
        await st.poll()
        meter = st.physics.meters[0]
        meter.energy_wh = 100.0
        assert (await st.poll()).meters[0].available
        meter.energy_wh = 50.0
        s = (await st.poll()).meters[0]
        assert not s.available and "energy went backwards" in (s.reason or "")
        assert (await st.poll()).meters[0].available  # new baseline accepted
        meter.voltage_v = math.nan
        assert "voltage is nan" in ((await st.poll()).meters[0].reason or "")


async def test_reconnect_after_simulator_restart() -> None:
    async with station(2, 1) as st:
        assert not (await st.poll()).unavailable
        await st.sim.stop()
        n = await polls_until(st, lambda s: len(s.unavailable) == 4)
        assert n <= 2
        snap = st.hw.last
        assert snap is not None
        assert "connect failed" in (snap.modules[0].reason or "") or "no answer" in (
            snap.modules[0].reason or "")
        await st.sim.start()  # same ports

        async def all_back() -> bool:  # backoff is at most 50 ms in TEST_LINK
            return not (await st.poll()).unavailable

        await eventually(all_back, what="every device answers after the restart",
                         detail=lambda: st.hw.last and st.hw.last.unavailable)


async def test_first_connect_failure_is_retried_with_backoff() -> None:
    async with station(1, 1) as st:
        cfg = st.hw.config
        await st.sim.stop()
        hw = Hardware(cfg)
        try:
            snap = await hw.start()
            assert len(snap.unavailable) == 3
            await st.sim.start()

            async def all_up() -> bool:
                return not (await hw.poll_all()).unavailable

            await eventually(all_up, what="every device answers once the simulator is up",
                             detail=lambda: hw.last and hw.last.unavailable)
        finally:
            await hw.close()


class _HangingModule:
    """A ``ModuleDriver`` whose poll never returns (a wedged driver)."""

    index = 0

    async def poll(self) -> ModuleState:
        await asyncio.sleep(3600)  # the test's subject: a poll that never returns
        raise AssertionError

    async def set_output(self, voltage_v: float, current_a: float) -> None: ...
    async def enable(self) -> None: ...
    async def disable(self) -> None: ...
    async def reset_fault(self) -> None: ...
    async def set_watchdog(self, ms: int) -> None: ...
    async def close(self) -> None: ...


async def test_a_wedged_driver_does_not_block_the_poll() -> None:
    async with station(1, 1) as st:
        hw = Hardware(st.hw.config, modules=[_HangingModule()])
        try:
            snap = await hw.poll_all(deadline_s=0.05)
            assert snap.poll_s < 0.5
            assert not snap.modules[0].available
            assert "poll exceeded 50 ms" in (snap.modules[0].reason or "")
            assert snap.matrix.available and snap.meters[0].available
        finally:
            await hw.close()


class _SometimesSlowModule(_HangingModule):
    """Answers at once, or (``slow``) only after the station's poll deadline has passed;
    books its health the way the Modbus drivers do."""

    def __init__(self) -> None:
        self.health = DeviceHealth(max_missed=2)
        self.slow = False
        self.last = ModuleState(0, False, "not polled yet", 0.0)

    async def poll(self) -> ModuleState:
        if self.slow:
            await asyncio.sleep(3600)  # cut by the deadline: the test's subject
        self.health.ok()
        self.last = ModuleState(0, True, None, 1.0, voltage_v=800.0, current_a=120.0)
        return self.last


async def test_a_poll_cut_at_the_deadline_is_a_missed_answer_not_an_outage() -> None:
    """One poll cut by the station's deadline (a loaded host) keeps the last values, marked
    stale, as the driver's own timeout does; only ``max_missed`` cuts in a row make the
    device unavailable. Before, every cut device went unavailable at once and a gun's whole
    output dropped for a cycle."""
    async with station(1, 1) as st:
        mod = _SometimesSlowModule()
        hw = Hardware(st.hw.config, modules=[mod])
        try:
            assert (await hw.poll_all(deadline_s=0.05)).modules[0].fresh
            mod.slow = True
            cut = (await hw.poll_all(deadline_s=0.05)).modules[0]
            assert cut.available and cut.stale and not cut.fresh
            assert "poll exceeded 50 ms" in (cut.reason or "")
            assert (cut.voltage_v, cut.current_a) == (800.0, 120.0)
            again = (await hw.poll_all(deadline_s=0.05)).modules[0]
            assert not again.available and "2 missed polls" in (again.reason or "")
            mod.slow = False
            assert (await hw.poll_all(deadline_s=0.05)).modules[0].fresh
        finally:
            await hw.close()


async def _fake_device(reply: bytes) -> tuple[asyncio.Server, int]:
    """A TCP server that answers every Modbus request with the same (broken) PDU."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _proto, length, unit = struct.unpack(">HHHB", header)
                await reader.readexactly(length - 1)
                writer.write(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (struct.pack(">BB", 4, 4) + b"\0" * 4, "got 2 registers, expected 8"),
        (struct.pack(">BB", 4, 16) + struct.pack(">ffff", 40e3, 100, 900, 150),
         "voltage range 900.0..150.0 V is not plausible"),
        (struct.pack(">BB", 0x84, 6), "Modbus exception 6 (server device busy)"),
        (b"\x99\x01", "Modbus exception 1"),  # unknown function code >= 0x80
        # Byte count 200 with two bytes of data: pymodbus drops the connection, we time out.
        (b"\x04\xc8\x00\x01", "no answer to read input registers 200..207"),
        (b"\x04\x10" + b"\x7f\xc0\x00\x00" * 4, "rating has a non-finite value"),
    ],
)
async def test_malformed_replies_give_reasons_not_crashes(reply: bytes, reason: str) -> None:
    server, port = await _fake_device(reply)
    drv = ModbusModule(0, DeviceEndpoint("127.0.0.1", port), LinkSettings(
        timeout_s=0.05, poll_budget_s=0.2, max_missed=1))
    try:
        s = await drv.poll()
        assert not s.available and reason in (s.reason or ""), s.reason
    finally:
        await drv.close()
        server.close()
        await server.wait_closed()


class _BrokenModule(_HangingModule):
    async def poll(self) -> ModuleState:
        raise RuntimeError("bug in a driver")


async def test_a_crashing_driver_is_reported_not_raised() -> None:
    async with station(1, 1) as st:
        hw = Hardware(st.hw.config, modules=[_BrokenModule()])
        try:
            snap = await hw.poll_all()
            assert not snap.modules[0].available
            assert "driver error: RuntimeError('bug in a driver')" in (snap.modules[0].reason or "")
            assert snap.matrix.available
        finally:
            await hw.close()


async def test_frozen_heartbeat_can_be_detected() -> None:
    link = LinkSettings(timeout_s=0.1, poll_budget_s=0.25, heartbeat_stale_polls=2)
    async with station(1, 1, link=link) as st:  # simulated time stands still between polls
        assert (await st.poll()).modules[0].available
        assert (await st.poll()).modules[0].available
        s = (await st.poll()).modules[0]
        assert not s.available and "heartbeat stuck" in (s.reason or "")
        st.advance(0.01)
        assert (await st.poll()).modules[0].available


async def test_connect_backoff_doubles_on_the_injected_clock() -> None:
    now = [0.0]
    with closed_port() as port:  # nobody listens there, nobody can start to
        link = ModbusLink(DeviceEndpoint("127.0.0.1", port), "module 0",
                          LinkSettings(timeout_s=0.2, backoff_initial_s=0.1,
                                       backoff_max_s=0.3),
                          clock=lambda: now[0])
        attempts = 0
        # Attempts at 0; 0.1 (+0.1); 0.31 (+0.2); 0.62 (+0.3, the maximum); 0.93 (+0.3).
        for t, expect_attempt in ((0.0, True), (0.05, False), (0.1, True), (0.25, False),
                                  (0.31, True), (0.55, False), (0.62, True), (0.93, True)):
            now[0] = t
            with pytest.raises(DeviceUnavailableError) as info:
                await link.ensure_connected()
            tried = "retry in" not in str(info.value)
            assert tried == expect_attempt, (t, str(info.value))
            attempts += tried
    assert attempts == 5 and link.connects == 0
