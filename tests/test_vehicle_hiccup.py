"""Vehicle-link hiccups (issue 14, item 4): a late or silent SECC bridge pauses the gun at 0 A
and keeps the session; only an explicit unplug reading, or a link silent for longer than
``station.vehicle_silence_s``, ends it as EVDisconnected.

The SECC bridges are the real Modbus TCP simulator (sim/secc_server.py) read by the real
``ModbusVehicleLink``; the in-process tests run the station on a simulated clock, the
cross-process test runs `mwc sim modules --trucks` and `mwc run` with two busy processes
competing for the CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cycle_fixtures import TEST_LINK, SimClock, make_config, small_truck
from helpers import eventually

from controller.records import CycleRecord
from controller.session import ENERGY_STATES, GunState
from controller.station import Station, StationEvent
from controller.vehicle import VehicleLink
from controller.vehicle_modbus import ModbusVehicleLink
from power.meters import ModbusMeter
from power.modbus_base import DeviceEndpoint, LinkSettings
from power.modbus_driver import Hardware
from power.modbus_map import SIM_TARGET_ALL
from power.secc_map import SeccSimCommand, secc_unit
from sim.cli import send_command
from sim.layout import station_toml
from sim.modbus_server import StationSimulator
from sim.physics import StationPhysics
from sim.secc_server import SECC_DELAY_MS, SECC_NAME, SeccBridges, serve_trucks
from sim.truck import TruckSim

ROOT = Path(__file__).resolve().parent.parent
MWC = str(ROOT / ".venv" / "bin" / "mwc")
ENERGY = {s.value for s in ENERGY_STATES}


@dataclass
class Hiccup:
    sim: StationSimulator
    bridges: SeccBridges
    trucks: list[TruckSim]
    clock: SimClock
    station: Station
    links: list[ModbusVehicleLink]
    records: list[CycleRecord] = field(default_factory=list)
    events: list[StationEvent] = field(default_factory=list)

    async def step(self, n: int = 1) -> CycleRecord:
        """``n`` cycles of 100 ms simulated time; each link polls once before the cycle."""
        rec: CycleRecord | None = None
        for _ in range(n):
            for link in self.links:
                await link.poll_once()
            rec = await self.station.cycle()
            self.records.append(rec)
            self.clock.t += 0.1
            self.sim.advance(0.1)
        assert rec is not None
        return rec

    def stopped(self) -> list[StationEvent]:
        return [e for e in self.events if e.kind == "charging_stopped"]


@asynccontextmanager
async def hiccup_rig(**station: Any) -> AsyncIterator[Hiccup]:
    clock = SimClock()
    trucks = [TruckSim(small_truck(n, target_soc_pct=95.0), clock) for n in "AB"]
    for t in trucks:
        t.plug_in()
    sim = StationSimulator(StationPhysics(8, 2, loads=trucks), realtime=False)
    bridges = serve_trucks(sim, trucks)
    await sim.start()
    ep = [DeviceEndpoint("127.0.0.1", sim.ports.extra[SECC_NAME], secc_unit(g)) for g in range(2)]
    links = [ModbusVehicleLink(e, TEST_LINK, clock) for e in ep]
    vehicles: list[VehicleLink] = list(links)
    st = Station(make_config(8, 2, **station), vehicles,
                 hardware=Hardware(sim.hardware_config(TEST_LINK), clock), clock=clock)
    h = Hiccup(sim, bridges, trucks, clock, st, links)
    st.subscribe(h.events.append)
    try:
        await st.start()
        yield h
    finally:
        await st.close()
        for link in links:
            await link.close()
        await sim.stop()


async def _both_charging(h: Hiccup) -> None:
    for _ in range(200):
        rec = await h.step()
        if all(g.state == "Charging" and g.current_a > 50.0 for g in rec.guns):
            return
    raise AssertionError([(g.state, g.current_a) for g in h.records[-1].guns])


async def test_secc_answering_300_ms_late_for_2_s_pauses_then_resumes_the_session() -> None:
    async with hiccup_rig() as h:
        await _both_charging(h)
        assert h.bridges.delay(SIM_TARGET_ALL, 300) is None  # both bridges late: 2 s
        during = [await h.step() for _ in range(20)]
        assert h.bridges.delay(SIM_TARGET_ALL, 0) is None
        # the link timed out (200 ms) on every late read: the status aged the whole 2 s
        assert all(not link.health.available for link in h.links)
        assert all(g.state in ENERGY for r in during for g in r.guns)
        paused = [r for r in during if all(g.state == "SuspendedEVSE" for g in r.guns)]
        assert paused, [[g.state for g in r.guns] for r in during]
        assert all(g.setpoint_a == 0.0 for g in paused[-1].guns)  # safe: 0 A while silent
        for _ in range(60):  # the link answers again: the same session resumes
            rec = await h.step()
            if all(g.state == "Charging" and g.current_a > 50.0 for g in rec.guns):
                break
        else:
            raise AssertionError([(g.state, g.current_a) for g in h.records[-1].guns])
        assert h.stopped() == [], h.stopped()
        assert [s.transaction for s in h.station.sessions] == [True, True]
        reasons = [e.reason for e in h.events if e.kind == "state_changed"
                   and e.state is GunState.CHARGING and e.previous is GunState.SUSPENDED_EVSE]
        assert reasons.count("vehicle link back") == 2
        assert h.station.violations == 0, [v for r in h.records for v in r.violations][:5]
        assert h.sim.physics.hot_switches() == []


async def test_a_single_late_read_is_no_pause_at_all() -> None:
    async with hiccup_rig() as h:
        await _both_charging(h)
        h.events.clear()
        h.bridges.delay(SIM_TARGET_ALL, 300)
        await h.step()  # one read missed (the "> 80 ms on a loaded machine")
        h.bridges.delay(SIM_TARGET_ALL, 0)
        for _ in range(5):
            rec = await h.step()
        assert [g.state for g in rec.guns] == ["Charging", "Charging"]
        assert all(g.current_a > 50.0 for g in rec.guns)
        assert [e for e in h.events if e.kind == "state_changed"] == []
        assert h.station.violations == 0 and h.sim.physics.hot_switches() == []


async def test_link_silent_past_vehicle_silence_s_ends_as_ev_disconnected() -> None:
    async with hiccup_rig(vehicle_silence_s=2.0) as h:
        await _both_charging(h)
        h.bridges.delay(0, 300)  # gun 0's bridge stays late for good
        for _ in range(40):
            rec = await h.step()
            if rec.guns[0].state == "Finishing":
                break
        stopped = h.stopped()
        assert [(e.gun, e.reason) for e in stopped] == [(0, "EVDisconnected")]
        silent_for = stopped[0].t - h.links[0].status().read_at
        assert 2.0 < silent_for <= 2.2, silent_for
        assert rec.guns[1].state == "Charging"  # the other truck never noticed
        # the link answers again, the truck is still plugged: the gun leaves Finishing only
        # when the vehicle is unplugged (or is given up), as OCPP does; it stays safe meanwhile
        h.bridges.delay(0, 0)
        await h.step(5)
        assert h.records[-1].guns[0].setpoint_a == 0.0
        await send_command("127.0.0.1", h.sim.ports.control, SeccSimCommand.VEHICLE_UNPLUG,
                           0, 0)
        for _ in range(30):
            rec = await h.step()
            if rec.guns[0].state == "Available":
                break
        assert rec.guns[0].state == "Available"
        assert h.station.violations == 0 and h.sim.physics.hot_switches() == []


async def test_a_bridge_that_forgot_the_transfer_gets_start_again_and_the_session_resumes(
        ) -> None:
    async with hiccup_rig() as h:
        await _both_charging(h)
        h.events.clear()
        h.trucks[0].stop()  # the SECC restarted: the truck waits for START, asks 0 A
        for _ in range(60):
            rec = await h.step()
            if (h.links[0].restarts and rec.guns[0].state == "Charging"
                    and rec.guns[0].current_a > 50.0):
                break
        else:
            raise AssertionError([(g.state, g.current_a) for g in h.records[-1].guns])
        assert h.links[0].restarts == 1 and h.links[1].restarts == 0
        assert h.stopped() == [] and h.station.sessions[0].transaction
        assert h.station.violations == 0 and h.sim.physics.hot_switches() == []
        # a stop the station asked for is not undone: no START after STOP
        h.station.stop_charging(0, "Local")
        await h.step(20)
        assert not h.trucks[0].charging and h.links[0].restarts == 1


def test_silence_shorter_than_the_current_timeout_is_refused_naming_both_keys() -> None:
    from controller.config import ConfigError

    with pytest.raises(ConfigError, match=r"vehicle_silence_s.*vehicle_timeout_s"):
        make_config(8, 2, vehicle_timeout_s=3.0, vehicle_silence_s=2.0)
    with pytest.raises(ConfigError, match=r"station\.vehicle_silence_s = 0\.5"):
        make_config(8, 2, vehicle_silence_s=0.5)


# --------------------------------------------------------------------------- across processes


def _busy() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


@pytest.mark.timeout(90)
async def test_mwc_run_rides_out_a_late_secc_under_cpu_load_without_spurious_unplug() -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(ROOT / ".cache" / "numba")}
    tmp = Path(tempfile.mkdtemp(prefix="mwc-hiccup-"))
    sim = subprocess.Popen(
        [MWC, "sim", "modules", "--count", "8", "--guns", "2", "--port", "0",
         "--trucks", "eactros600,man_mcs"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    procs: list[subprocess.Popen[Any]] = [sim]
    meters: list[ModbusMeter] = []
    log_path = tmp / "controller.log"
    try:
        assert sim.stdout is not None
        layout = json.loads(await asyncio.wait_for(asyncio.to_thread(sim.stdout.readline), 20))
        cfg = tmp / "station.toml"
        cfg.write_text(station_toml(layout, {"id": "HICCUP", "max_kw": 1440.0,
                                             "fallback_grid_kw": 1440.0,
                                             "free_charging": True, "cable_check_s": 0.3}))
        with log_path.open("wb") as log:
            ctl = subprocess.Popen([MWC, "run", "--config", str(cfg)], stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
        procs.append(ctl)
        procs += [_busy(), _busy()]  # two competing busy processes from here on
        link = LinkSettings(timeout_s=0.5, poll_budget_s=1.0)
        meters = [ModbusMeter(g, DeviceEndpoint(layout["host"], layout["meters"]["port"],
                                                layout["meters"]["units"][g]), link)
                  for g in range(2)]

        async def currents() -> list[float]:
            return [(await m.poll()).current_a for m in meters]

        async def until_both_charge(within_s: float) -> None:
            now = [0.0, 0.0]

            async def both() -> bool:
                assert ctl.poll() is None, log_path.read_text()[-3000:]
                now[:] = await currents()
                return all(c > 20.0 for c in now)

            await eventually(both, within_s, 0.2, what="both guns charging above 20 A",
                             detail=lambda: (now, log_path.read_text()[-3000:]))

        await until_both_charge(40.0)
        port = layout["control"]["port"]
        assert await send_command(layout["host"], port, SECC_DELAY_MS, SIM_TARGET_ALL,
                                  300) == "ok"
        await asyncio.sleep(2.0)  # the test's subject: a 2 s real-time hiccup of both SECCs
        assert await send_command(layout["host"], port, SECC_DELAY_MS, SIM_TARGET_ALL,
                                  0) == "ok"
        t_back = time.monotonic()
        await until_both_charge(20.0)
        resumed_s = time.monotonic() - t_back
        before_stop = _lines(log_path)  # (what SIGTERM does is the stop sequence's test)
        ctl.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.to_thread(ctl.wait), 30)
        lines = _lines(log_path)
        tail = log_path.read_text(errors="replace")[-3000:]
        states = [(x.get("gun"), x.get("state"), x.get("reason")) for x in before_stop
                  if x.get("event") == "gun state"]
        ended = [s for s in states if s[1] in ("Finishing", "Available", "Faulted")]
        assert ended == [], (states, tail)  # no session ended before SIGTERM, for any reason
        assert not [s for s in ended if s[2] == "EVDisconnected"], (states, tail)
        # the hiccup was real: both guns paused at 0 A and came back, on the same session
        paused = {(g, "SuspendedEVSE", "vehicle link silent") for g in (0, 1)}
        assert paused <= set(states), (states, tail)
        back = {(g, "Charging", "vehicle link back") for g in (0, 1)}
        assert back <= set(states), (states, tail)
        assert not [x for x in lines if x.get("event") == "safety violation"], (states, tail)
        stopped = [x for x in lines if x.get("event") == "station stopped"]
        assert stopped and stopped[-1].get("violations") == 0, (stopped, tail)
        assert resumed_s < 15.0
    finally:
        for m in meters:
            await m.close()
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
