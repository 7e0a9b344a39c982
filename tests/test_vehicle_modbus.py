"""The SECC bridge over Modbus TCP: register map, ModbusVehicleLink, the simulated bridges,
and `mwc run` charging `mwc sim modules --trucks` trucks across processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from cycle_fixtures import TEST_LINK, SimClock, make_config, small_truck
from helpers import eventually

from controller.station import Station
from controller.vehicle import VehicleLink
from controller.vehicle_modbus import ModbusVehicleLink
from power.meters import ModbusMeter
from power.modbus_base import DeviceEndpoint, LinkSettings
from power.modbus_driver import Hardware
from power.secc_map import (
    NA_HIGH,
    SECC_INPUT_COUNT,
    SOC_UNKNOWN,
    SeccDecodeError,
    SeccInput,
    SeccReading,
    SeccSimCommand,
    decode_available,
    decode_status,
    encode_available,
    encode_s32,
    encode_status,
    encode_token,
    secc_unit,
)
from sim.cli import send_command
from sim.layout import station_toml
from sim.modbus_server import StationSimulator
from sim.physics import StationPhysics
from sim.secc_server import SECC_NAME, SeccBridges, serve_trucks
from sim.truck import TruckSim

ROOT = Path(__file__).resolve().parent.parent
MWC = str(ROOT / ".venv" / "bin" / "mwc")

FULL = SeccReading(plugged=True, ev_max_current_a=1500.0, ev_max_voltage_v=1250.0,
                   target_voltage_v=850.0, present_voltage_v=712.3, request_a=1499.9,
                   soc_pct=42.5, stop_requested=True, id_token="ABCDEFGHIJKLMNOPQRST",
                   heartbeat=65535, energy_transfer=True)


# --------------------------------------------------------------------------- register map


def test_every_field_round_trips_including_1500_a_and_sentinels() -> None:
    regs = encode_status(FULL)
    assert len(regs) == SECC_INPUT_COUNT
    assert regs[SeccInput.EV_MAX_CURRENT : SeccInput.EV_MAX_CURRENT + 2] == [0, 15000]
    assert decode_status(regs) == FULL
    empty = SeccReading(heartbeat=7)  # unplugged, SoC unknown, no token
    regs = encode_status(empty)
    assert regs[SeccInput.SOC] == SOC_UNKNOWN
    assert regs[SeccInput.ID_TOKEN:] == [0] * 10
    assert decode_status(regs) == empty
    assert decode_available(encode_available(1500.0, 920.4)) == (1500.0, 920.4)
    assert decode_available(encode_available(-3.0, float("nan"))) == (0.0, 0.0)


def _corrupt(index: int, values: list[int]) -> list[int]:
    regs = encode_status(FULL)
    regs[index : index + len(values)] = values
    return regs


@pytest.mark.parametrize(("regs", "named"), [
    (encode_status(FULL)[:-1], "expected 23, got 22"),
    (_corrupt(SeccInput.EV_MAX_CURRENT, encode_s32(-100)), "ev_max_current_a"),
    (_corrupt(SeccInput.REQUEST_CURRENT, encode_s32(NA_HIGH)), "request_a"),
    (_corrupt(SeccInput.PRESENT_VOLTAGE, encode_s32(-0x80000000)), "present_voltage_v"),
    (_corrupt(SeccInput.TARGET_VOLTAGE, encode_s32(99_999)), "target_voltage_v"),
    (_corrupt(SeccInput.SOC, [1001]), "soc_pct"),
    (_corrupt(SeccInput.STATUS, [0x0100]), "status"),
    (_corrupt(SeccInput.ID_TOKEN + 2, [0x41C3]), r"register 15 \(id_token\)"),
    (_corrupt(SeccInput.ID_TOKEN, [0x4100, 0x4200]), "id_token"),
    (_corrupt(SeccInput.HEARTBEAT, [70000]), "not a u16"),
])
def test_malformed_blocks_are_refused_naming_the_field(regs: list[int], named: str) -> None:
    with pytest.raises(SeccDecodeError, match=named):
        decode_status(regs)


def test_token_encoding_refuses_what_the_bridge_cannot_carry() -> None:
    with pytest.raises(ValueError, match="ASCII"):
        encode_token("Ü-TRUCK")
    with pytest.raises(ValueError, match="at most 20"):
        encode_token("X" * 21)


# --------------------------------------------------------------------------- link vs sim


@dataclass
class Bench:
    sim: StationSimulator
    bridges: SeccBridges
    trucks: list[TruckSim]
    clock: SimClock

    def endpoint(self, gun: int) -> DeviceEndpoint:
        return DeviceEndpoint("127.0.0.1", self.sim.ports.extra[SECC_NAME], secc_unit(gun))

    def link(self, gun: int, **kw: Any) -> ModbusVehicleLink:
        return ModbusVehicleLink(self.endpoint(gun), TEST_LINK, self.clock, **kw)


@asynccontextmanager
async def bench(plugged: bool = True, modules: int = 8) -> AsyncIterator[Bench]:
    clock = SimClock()
    trucks = [TruckSim(small_truck("A"), clock), TruckSim(small_truck("B"), clock)]
    if plugged:
        for t in trucks:
            t.plug_in()
    sim = StationSimulator(StationPhysics(modules, 2, loads=trucks), realtime=False)
    bridges = serve_trucks(sim, trucks)
    await sim.start()
    try:
        yield Bench(sim, bridges, trucks, clock)
    finally:
        await sim.stop()


async def test_plugged_truck_status_and_commands_cross_the_bridge() -> None:
    async with bench() as b:
        link = b.link(0)
        assert link.status().plugged is False  # nothing read yet
        await link.poll_once()
        st = link.status()
        assert st.plugged and st.id_token == "TRUCK-A" and st.read_at == b.clock.t
        assert st.ev_max_current_a == 400.0 and st.soc_pct == 70.0
        assert st.present_voltage_v == pytest.approx(b.trucks[0].terminal_v(0.0), abs=0.05)
        assert st.request_a == 0.0  # not started yet
        link.set_available(312.5, 801.2)
        link.start()
        await link.poll_once()
        t = b.trucks[0]
        assert t.charging and (t.available_a, t.available_v) == (312.5, 801.2)
        await link.poll_once()  # the status now shows the request of a started truck
        assert link.status().request_a == pytest.approx(t.max_current_a(), abs=0.05)
        link.stop()
        await link.poll_once()
        assert not t.charging and link.status().request_a == 0.0
        assert not b.trucks[1].charging  # unit 2 is the other gun
        await link.close()


async def test_available_is_written_on_change_or_as_keep_alive_only() -> None:
    async with bench() as b:
        bridge = b.bridges.bridges[0]
        writes: list[list[int]] = []
        real_write = bridge.write

        def spy(address: int, values: Any) -> Any:
            writes.append([address, *values])
            return real_write(address, values)

        bridge.write = spy  # type: ignore[method-assign]
        link = b.link(0, keepalive_polls=5)
        link.set_available(100.0, 800.0)
        await link.poll_once()
        for i in range(3):  # several wishes between two polls: only the last is sent
            link.set_available(200.0 + i, 800.0)
        link.set_available(202.01, 800.0)  # (below the 0.1 A resolution: no change)
        await link.poll_once()
        for _ in range(4):
            await link.poll_once()
        assert writes == [[101, *encode_available(100.0, 800.0)],
                          [101, *encode_available(202.0, 800.0)]]
        await link.poll_once()  # the 5th poll since the last write: keep-alive
        assert len(writes) == 3 and b.trucks[0].available_a == 202.0
        await link.close()


async def test_unplug_and_stop_request_through_the_control_device() -> None:
    async with bench() as b:
        link = b.link(1)
        await link.poll_once()
        assert link.status().plugged
        port = b.sim.ports.control
        assert await send_command("127.0.0.1", port, SeccSimCommand.VEHICLE_STOP_REQUEST,
                                  1, 0) == "ok"
        await link.poll_once()
        assert link.status().stop_requested
        assert await send_command("127.0.0.1", port, SeccSimCommand.VEHICLE_UNPLUG,
                                  1, 0) == "ok"
        await link.poll_once()
        assert not link.status().plugged and b.trucks[0].plugged
        assert (await send_command("127.0.0.1", port, SeccSimCommand.VEHICLE_PLUG, 9, 0)
                ).startswith("refused")
        link.start()  # the bridge refuses START without a vehicle: logged, not retried
        await link.poll_once()
        assert link.status().plugged is False and link.health.available
        await link.close()


async def test_frozen_heartbeat_ages_the_status_then_recovers() -> None:
    async with bench() as b:
        link = b.link(0, heartbeat_timeout_s=0.5)
        await link.poll_once()
        assert link.status().plugged
        trusted_at = link.status().read_at
        b.bridges.command(SeccSimCommand.SECC_FREEZE, 0)
        for _ in range(4):  # 0.4 s of stuck heartbeat: still trusted
            b.clock.t += 0.1
            await link.poll_once()
        assert link.status().plugged
        b.clock.t += 0.2
        await link.poll_once()
        # not believed any more: the last trusted status stays, ageing (no made-up unplug)
        aged = link.status().read_at
        assert trusted_at < aged < b.clock.t and not link.health.available
        assert link.status().plugged
        assert "heartbeat" in (link.health.reason or "")
        b.bridges.command(SeccSimCommand.SECC_RESUME, 0)
        await link.poll_once()
        assert link.status().plugged and link.status().read_at == b.clock.t
        await link.close()


async def test_malformed_reply_ages_the_status_and_is_logged_by_field() -> None:
    async with bench() as b:
        with structlog.testing.capture_logs() as logs:
            link = b.link(0)
            await link.poll_once()
            assert link.status().plugged
            bridge = b.bridges.bridges[0]
            good = bridge.input_registers
            bad = _corrupt(SeccInput.REQUEST_CURRENT, encode_s32(-50))
            bridge.input_registers = lambda: bad  # type: ignore[method-assign]
            read_at = link.status().read_at
            b.clock.t += 0.1
            await link.poll_once()
            b.clock.t += 0.1
            await link.poll_once()  # the same garbage again: logged once
            assert link.status().read_at == read_at and not link.health.available
            bridge.input_registers = good  # type: ignore[method-assign]
            await link.poll_once()
            assert link.status().plugged and link.status().read_at == b.clock.t
            await link.close()
        errors = [e for e in logs if e["log_level"] == "error"]
        assert len(errors) == 1, logs
        assert "request_a" in errors[0]["error"] and "-5.0 A is negative" in errors[0]["error"]


async def test_lost_bridge_ages_the_status_with_the_io_task_and_recovers() -> None:
    async with bench() as b:
        link = ModbusVehicleLink(b.endpoint(0), TEST_LINK, time.monotonic, poll_s=0.05)
        await link.start_io()
        await eventually(lambda: link.status().plugged, what="the first reading (plugged)",
                         detail=lambda: link.health.reason)
        await b.sim.stop()
        t0 = time.monotonic()
        await eventually(lambda: not link.health.available,
                         what="the dead bridge counted as not answering")
        lost_after = time.monotonic() - t0
        last = link.status().read_at
        assert last <= t0 + 0.05  # no new reading while the bridge is down: the status ages
        await b.sim.start()  # same ports: the link reconnects by itself
        await eventually(lambda: link.status().read_at > last, what="a new reading",
                         detail=lambda: link.health.reason)
        assert link.status().plugged
        await link.close()
        assert link.status().plugged is False
        assert lost_after < 1.0 and link.link.connects >= 2


# --------------------------------------------------------------------------- station in-process


async def test_station_charges_a_truck_through_its_secc_bridge() -> None:
    async with bench() as b:
        hw = Hardware(b.sim.hardware_config(TEST_LINK), b.clock)
        links = [b.link(g) for g in range(2)]
        vehicles: list[VehicleLink] = list(links)
        st = Station(make_config(8, 2), vehicles, hardware=hw, clock=b.clock)
        await st.start()
        try:
            for _ in range(300):
                for link in links:
                    await link.poll_once()
                rec = await st.cycle()
                b.clock.t += 0.1
                b.sim.advance(0.1)
                if all(g.state == "Charging" and g.current_a > 50.0 for g in rec.guns):
                    break
            else:
                raise AssertionError([(g.state, g.current_a) for g in rec.guns])
            assert all(t.charging and t.current_a > 50.0 for t in b.trucks)
            assert st.violations == 0 and b.sim.physics.hot_switches() == []
        finally:
            await st.close()
            for link in links:
                await link.close()
        assert not any(t.charging for t in b.trucks)  # close sent STOP


# --------------------------------------------------------------------------- across processes


def _toml(layout: dict[str, Any]) -> str:
    return station_toml(layout, {"id": "SECC-XPROC", "max_kw": 1440.0,
                                 "fallback_grid_kw": 1440.0, "free_charging": True,
                                 "cable_check_s": 0.3})


async def _currents(meters: list[ModbusMeter]) -> list[float]:
    return [(await m.poll()).current_a for m in meters]


@pytest.mark.timeout(40)
async def test_mwc_run_charges_sim_trucks_across_processes_and_stops_on_sigterm() -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(ROOT / ".cache" / "numba")}
    tmp = Path(tempfile.mkdtemp(prefix="mwc-secc-"))
    sim = subprocess.Popen(
        [MWC, "sim", "modules", "--count", "8", "--guns", "2", "--port", "0",
         "--trucks", "eactros600,man_mcs"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    ctl: subprocess.Popen[bytes] | None = None
    meters: list[ModbusMeter] = []
    try:
        assert sim.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(sim.stdout.readline), 15)
        layout = json.loads(line)
        assert layout[SECC_NAME]["units"] == [1, 2]
        cfg = tmp / "station.toml"
        cfg.write_text(_toml(layout))
        log = (tmp / "controller.log").open("wb")
        ctl = subprocess.Popen([MWC, "run", "--config", str(cfg)], stdout=log,
                               stderr=subprocess.STDOUT, env=env)
        link = LinkSettings(timeout_s=0.5, poll_budget_s=1.0)
        meters = [ModbusMeter(g, DeviceEndpoint(layout["host"], layout["meters"]["port"],
                                                layout["meters"]["units"][g]), link)
                  for g in range(2)]
        running = ctl
        currents = [0.0, 0.0]

        async def charging() -> bool:
            assert running.poll() is None, (tmp / "controller.log").read_text()[-3000:]
            currents[:] = await _currents(meters)
            return all(c > 20.0 for c in currents)

        await eventually(charging, 20.0, 0.2, what="both trucks charging above 20 A",
                         detail=lambda: (currents, (tmp / "controller.log").read_text()[-3000:]))
        ctl.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(asyncio.to_thread(ctl.wait), 10)
        assert rc == 0, (tmp / "controller.log").read_text()[-3000:]

        async def drained() -> bool:
            currents[:] = await _currents(meters)
            return not any(abs(c) > 1.0 for c in currents)

        # the stop sequence drains within 3 s (the bound this test always had)
        await eventually(drained, 3.0, 0.05, what="both guns at <= 1 A after SIGTERM",
                         detail=lambda: currents)
        # the controller told both trucks STOP on its way out: plugged, asking for nothing
        for g in range(2):
            probe = ModbusVehicleLink(DeviceEndpoint(layout["host"], layout[SECC_NAME]["port"],
                                                     layout[SECC_NAME]["units"][g]), link)
            await probe.poll_once()
            st = probe.status()
            await probe.close()
            assert st.plugged and st.request_a == 0.0 and st.soc_pct is not None, st
    finally:
        for m in meters:
            await m.close()
        for proc in (ctl, sim):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sim.returncode is not None
