"""Crash safety (issue 9): the real `mwc run` process killed with SIGKILL mid-charge.

Two trucks charge through the real controller process (Modbus simulators with SECC bridges
in this process, the project's ocpp_server as the backend, OCPP 2.0.1 security profile 1).
The backend goes away, so meter values queue up in the controller's SQLite queue; then the
controller is killed with SIGKILL. Checked:
- the power modules switch their outputs off within their watchdog time (no controller);
- no contactor is ever switched under load (the simulator logs every switch with its current);
- after the restart, both transactions that were running are ended towards the backend with
  stoppedReason PowerLoss and the meter register of the moment of the crash; everything queued
  before the crash arrives, in order, seqNo gap-free, events made offline flagged offline;
- the trucks, still plugged, charge again in new transactions.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from csms_fixtures import PASSWORD, add_token, make_config, provision
from helpers import eventually

from ocpp_server.app import CsmsServer
from ocpp_server.repository import TxFilter
from sim.layout import station_toml
from sim.modbus_server import StationSimulator
from sim.physics import StationPhysics
from sim.secc_server import serve_trucks
from sim.truck import TruckParams, TruckSim

pytestmark = pytest.mark.timeout(150)
ROOT = Path(__file__).resolve().parents[1]
STATION = "CRASH-1"
MODULES = 8
WATCHDOG_MS = 500


def _toml(sim: StationSimulator, csms_port: int, db: Path) -> str:
    station = {"id": STATION, "max_kw": 640.0, "fallback_grid_kw": 640.0,
               "watchdog_ms": WATCHDOG_MS, "free_charging": False, "cable_check_s": 0.3}
    return station_toml(sim.describe(), station, cable_rating_a=1000.0, sections=(
        f'[ocpp]\nurl = "ws://127.0.0.1:{csms_port}/ocpp"\nsecurity_profile = 1\n'
        f'password = "{PASSWORD}"\ndatabase = "{db}"\nsampled_interval_s = 1.0\n'
        "retry_backoff_wait_minimum_s = 0.2\nretry_backoff_random_range_s = 0.2\n"
        "retry_backoff_repeat_times = 1\nheartbeat_interval_s = 30.0\n"))


async def _until(what: str, cond: Callable[[], Awaitable[bool]], timeout: float,
                 proc: asyncio.subprocess.Process | None = None) -> None:
    await eventually(cond, timeout, 0.05, what, proc=proc)


async def _controller(config: Path, log: Path) -> asyncio.subprocess.Process:
    env = {**os.environ,
           "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache/numba"))}
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "--log-format", "json", "run",
            "--config", str(config), cwd=ROOT, env=env, stdout=out, stderr=out)


def _active(txs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in txs if t["active"]]


async def test_sigkill_mid_charge_then_restart(tmp_path: Path) -> None:
    trucks = [TruckSim(TruckParams(name=n, capacity_kwh=600.0, start_soc_pct=soc,
                                   ev_max_current_a=amps, id_token=f"TRUCK-{n}"))
              for n, soc, amps in (("A", 30.0, 400.0), ("B", 50.0, 300.0))]
    for t in trucks:
        t.plug_in()
    physics = StationPhysics(MODULES, 2, loads=trucks)
    sim = StationSimulator(physics, realtime=True)
    serve_trucks(sim, trucks)
    await sim.start()
    csms_cfg = make_config(tmp_path)
    server = CsmsServer(csms_cfg)
    await server.start()
    await provision(server, STATION)
    for n in "AB":
        await add_token(server, f"TRUCK-{n}")
    csms_cfg.ocpp.port = server.ocpp_port  # the restarted backend listens where it was
    config = tmp_path / "mwc.toml"
    config.write_text(_toml(sim, server.ocpp_port, tmp_path / "station.sqlite3"))
    log = tmp_path / "controller.log"
    proc = await _controller(config, log)
    procs = [proc]
    try:
        async def txs() -> list[dict[str, Any]]:
            return await server.repo.list_transactions(TxFilter(station_id=STATION))

        def gun_a() -> list[float]:
            return [physics.meters[g].current_a for g in range(2)]

        async def both_charging() -> bool:
            return len(_active(await txs())) == 2 and min(gun_a()) > 100.0

        await _until("both trucks charging with open transactions", both_charging, 60, proc)
        first = {t["id"]: t for t in await txs()}

        # the backend goes away: sampled meter values (1 s) queue up in the controller
        await server.stop()
        await asyncio.sleep(3.0)
        switches_before = len(physics.switch_log)

        proc.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        await proc.wait()
        while any(abs(m.current_a) > 1.0 for m in physics.modules):
            assert time.monotonic() - t_kill < 5.0, "modules still on 5 s after the crash"
            await asyncio.sleep(0.01)
        off_after = time.monotonic() - t_kill
        assert off_after <= WATCHDOG_MS / 1000 + 0.25, off_after
        print(f"modules off {off_after * 1000:.0f} ms after SIGKILL")
        crash_wh = [physics.meters[g].energy_wh for g in range(2)]

        # backend back on its port, controller restarted with the same state
        server = CsmsServer(csms_cfg)
        await server.start()
        proc = await _controller(config, log)
        procs.append(proc)

        async def old_ended() -> bool:
            for i in first:
                tx = await server.repo.get_transaction(i)
                if tx is None or tx["active"]:
                    return False
            return True

        await _until("both crashed transactions ended", old_ended, 60, proc)

        async def charging_again() -> bool:
            return len(_active(await txs())) == 2 and min(gun_a()) > 100.0

        await _until("both trucks charging again in new transactions", charging_again, 60, proc)

        for tx_id in first:
            tx = await server.repo.get_transaction(tx_id)
            assert tx is not None
            events = tx["events"]
            seqs = [e["seq_no"] for e in events]
            assert seqs == list(range(len(seqs))), seqs
            assert events[0]["event_type"] == "Started" and events[-1]["event_type"] == "Ended"
            assert tx["stop_reason"] == "PowerLoss"
            offline = [e for e in events if e["payload"].get("offline")]
            assert len(offline) >= 2, "meter values queued while the backend was away"
            gun = 0 if tx["id_token"] == "TRUCK-A" else 1
            end_wh = _register(events[-1])
            assert end_wh is not None and math.isclose(end_wh, crash_wh[gun], abs_tol=0.1), (
                end_wh, crash_wh)
            print(f"gun {gun}: Ended register {end_wh} Wh, meter at crash {crash_wh[gun]:.3f} Wh, "
                  f"{len(offline)} events sent after being made offline")
        new = [t for t in await txs() if t["id"] not in first]
        assert len(new) == 2 and all(t["active"] for t in new)
        assert physics.hot_switches() == [], physics.hot_switches()[:5]
        assert len(physics.switch_log) >= switches_before
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        await server.stop()
        await sim.stop()
    assert "Traceback" not in log.read_text(errors="replace")


def _register(event: dict[str, Any]) -> float | None:
    for mv in event["payload"].get("meterValue") or []:
        for sv in mv.get("sampledValue", []):
            if sv.get("measurand", "Energy.Active.Import.Register") == \
                    "Energy.Active.Import.Register":
                return float(sv["value"])
    return None
