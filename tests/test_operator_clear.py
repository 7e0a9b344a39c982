"""Operator clear (issue 14): a latched gun fault is acknowledged without a restart — from the
backend (OCPP ChangeAvailability to Operative on the gun's EVSE / connector, 2.0.1 and 1.6)
or on the cabinet PC (`mwc clear-fault --gun N` over the running controller's control
socket). Real station on the Modbus simulators, real websocket backends, the real CLI.

The fault is a real one: the truck's SECC reports a battery voltage 150 V off, so pre-charge
never matches and the gun goes Faulted ("pre-charge timeout") and stays so.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cycle_fixtures import Rig, rig, small_truck
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from ocpp16_fixtures import Backend16, config16
from ocpp_fixtures import Backend, SimWall, ocpp_config

from controller.control_socket import ControlError, ControlServer, answer, request
from controller.ocpp.v16.service import Ocpp16Service
from controller.ocpp.v201.service import OcppService
from controller.operator import ClearError, clear_gun_fault
from controller.vehicle import VehicleStatus
from sim.layout import station_toml

ROOT = Path(__file__).resolve().parent.parent
MWC = str(ROOT / ".venv" / "bin" / "mwc")


def _lying_secc(r: Rig, g: int) -> Callable[[], None]:
    """Gun g's truck reports a battery voltage 150 V too high; returns the undo."""
    truck = r.trucks[g]
    honest = truck.status

    def lie() -> VehicleStatus:
        s = honest()
        return replace(s, present_voltage_v=s.present_voltage_v + 150.0)

    truck.status = lie  # type: ignore[method-assign]

    def undo() -> None:
        truck.status = honest  # type: ignore[method-assign]

    return undo


async def _faulted(r: Rig, g: int = 0) -> None:
    undo = _lying_secc(r, g)
    r.trucks[g].plug_in()
    await r.until(lambda rec: rec.guns[g].state == "Faulted", max_cycles=100)
    undo()  # the cause is gone; the latch stays until the operator clears it
    await r.step(10)
    assert r.states()[g] == "Faulted"
    assert "pre-charge timeout" in (r.station.sessions[g].reason or "")


async def _charges_again(r: Rig, g: int = 0) -> None:
    await r.until(lambda rec: rec.guns[g].state == "Charging" and rec.guns[g].current_a > 50.0,
                  max_cycles=200)


async def _step_while(r: Rig, fut: asyncio.Future[Any], limit: int = 100) -> Any:
    """Run cycles (the station stays alive) until ``fut`` is done."""
    for _ in range(limit):
        if fut.done():
            return fut.result()
        await r.step()
        await asyncio.sleep(0.01)
    raise AssertionError("no answer while the station cycled")


# --------------------------------------------------------------------------- the function


async def test_clear_gun_fault_only_acts_on_a_faulted_gun_and_names_a_bad_one() -> None:
    async with rig([small_truck("A"), small_truck("B")], precharge_timeout_s=1.0) as r:
        with pytest.raises(ClearError, match=r"gun 3 does not exist: this station has guns 1\.\.2"):
            clear_gun_fault(r.station, 2, "local")
        res = clear_gun_fault(r.station, 0, "local")
        assert not res.cleared and "Available, not Faulted" in res.message
        await _faulted(r)
        res = clear_gun_fault(r.station, 0, "web")
        assert res.cleared and res.state == "Faulted" and "pre-charge timeout" in res.message
        rec = await r.step()
        assert rec.guns[0].state != "Faulted"
        await _charges_again(r)
        r.assert_safe()


async def test_emergency_stop_is_not_lifted_by_a_gun_clear() -> None:
    async with rig([small_truck("A"), small_truck("B")]) as r:
        r.station.emergency_stop("button")
        await r.step(2)
        res = clear_gun_fault(r.station, 1, "local")
        assert not res.cleared and "emergency stop" in res.message
        await r.step(2)
        assert r.states() == ["Faulted", "Faulted"]


def test_control_requests_with_mistakes_get_an_error_naming_the_mistake() -> None:
    from controller.session import GunSession

    class Two:
        sessions = (GunSession(0), GunSession(1))

        def clear_fault(self, gun: int) -> None:
            raise AssertionError("nothing is Faulted")

    st = Two()
    assert answer(st, b"not json\n")["error"].startswith("request is not one JSON object")
    assert "integer from 1" in answer(st, b'{"command": "clear-fault", "gun": "1"}')["error"]
    assert "gun 5 does not exist" in answer(st, b'{"command": "clear-fault", "gun": 5}')["error"]
    assert "unknown command 'reboot'" in answer(st, b'{"command": "reboot"}')["error"]
    assert answer(st, b"[1]")["ok"] is False
    got = answer(st, b'{"command": "status"}')
    assert got == {"ok": True, "guns": [{"gun": 1, "state": "Available", "reason": None},
                                        {"gun": 2, "state": "Available", "reason": None}]}


def test_clear_module_gives_a_given_up_module_its_resets_back() -> None:
    from controller.session import GunSession

    class Cabinet:
        sessions = (GunSession(0),)
        module_count = 4

        def __init__(self) -> None:
            self.given_up_modules = [2]
            self.forgotten: list[int | None] = []

        def clear_fault(self, gun: int) -> None:
            raise AssertionError("not a gun clear")

        def forget_module_faults(self, module: int | None = None) -> None:
            self.forgotten.append(module)
            self.given_up_modules = [m for m in self.given_up_modules if m != module]

    st = Cabinet()
    got = answer(st, b'{"command": "clear-module", "module": 3}')
    assert got["ok"] and got["cleared"] and got["module"] == 3, got
    assert st.forgotten == [2] and st.given_up_modules == []
    again = answer(st, b'{"command": "clear-module", "module": 3}')
    assert again["ok"] and not again["cleared"] and "not given up" in again["message"]
    assert "module 5 does not exist" in answer(
        st, b'{"command": "clear-module", "module": 5}')["error"]
    assert "integer from 1" in answer(st, b'{"command": "clear-module"}')["error"]


# --------------------------------------------------------------------------- OCPP


async def test_TC_G_03_CS_change_availability_operative_clears_a_latched_fault_201(
        tmp_path: Path) -> None:
    be = Backend()
    await be.start()
    async with rig([small_truck("A", target_soc_pct=95), small_truck("B")],
                   precharge_timeout_s=1.0) as r:
        svc = OcppService(ocpp_config(tmp_path, be.port), r.station.config, wall=SimWall())
        svc.attach(r.station)
        task = asyncio.ensure_future(svc.run())
        try:
            await be.wait_for(lambda: svc.online)
            await _faulted(r)

            def statuses() -> list[str]:
                return [s["connector_status"] for s in be.of("StatusNotification")
                        if s["evse_id"] == 1]

            await be.wait_for(lambda: statuses()[-1:] == ["Faulted"])
            # another EVSE's Operative leaves gun 1 (EVSE 1) faulted
            fut = asyncio.ensure_future(be.cp.call(call201.ChangeAvailability(
                operational_status="Operative", evse={"id": 2}), suppress=False))
            assert (await _step_while(r, fut)).status == "Accepted"
            await r.step(3)
            assert r.states()[0] == "Faulted"
            fut = asyncio.ensure_future(be.cp.call(call201.ChangeAvailability(
                operational_status="Operative", evse={"id": 1, "connector_id": 1}),
                suppress=False))
            assert (await _step_while(r, fut)).status == "Accepted"
            await _charges_again(r)
            await be.wait_for(lambda: "Available" in statuses()[statuses().index("Faulted"):])
            r.assert_safe()
        finally:
            await svc.close()
            task.cancel()
            with __import__("contextlib").suppress(BaseException):
                await task
    await be.stop()


async def test_change_availability_operative_clears_a_latched_fault_16(tmp_path: Path) -> None:
    be = Backend16(tokens={"TRUCK-A"})
    await be.start()
    async with rig([small_truck("A", target_soc_pct=95), small_truck("B")],
                   precharge_timeout_s=1.0) as r:
        svc = Ocpp16Service(config16(tmp_path, be.port), r.station.config, wall=SimWall())
        svc.attach(r.station)
        task = asyncio.ensure_future(svc.run())
        try:
            await be.wait_for(lambda: svc.online)
            await _faulted(r)

            def statuses() -> list[str]:
                return [s["status"] for s in be.of("StatusNotification")
                        if s["connector_id"] == 1]

            await be.wait_for(lambda: statuses()[-1:] == ["Faulted"])
            fut = asyncio.ensure_future(be.cp.call(call16.ChangeAvailability(
                connector_id=1, type="Operative"), suppress=False))
            assert (await _step_while(r, fut)).status == "Accepted"
            await _charges_again(r)
            await be.wait_for(lambda: "Preparing" in statuses()[statuses().index("Faulted"):]
                              or "Available" in statuses()[statuses().index("Faulted"):])
            r.assert_safe()
        finally:
            await svc.close()
            task.cancel()
            with __import__("contextlib").suppress(BaseException):
                await task
    await be.stop()


# --------------------------------------------------------------------------- local command


async def test_mwc_clear_fault_reaches_the_running_station_over_its_socket() -> None:
    sock = Path(tempfile.mkdtemp(prefix="mwc-ctl-")) / "control.sock"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(ROOT / ".cache" / "numba")}
    async with rig([small_truck("A", target_soc_pct=95), small_truck("B")],
                   precharge_timeout_s=1.0) as r:
        server = ControlServer(r.station, sock)
        await server.start()
        try:
            assert oct(sock.stat().st_mode & 0o777) == "0o660"
            await _faulted(r)

            async def cli(*args: str) -> tuple[int, str]:
                proc = await asyncio.create_subprocess_exec(
                    MWC, "clear-fault", "--socket", str(sock), *args, env=env,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                out = await _step_while(r, asyncio.ensure_future(proc.communicate()), 300)
                return proc.returncode or 0, out[0].decode()

            rc, out = await cli("--gun", "3")
            assert rc == 2 and "gun 3 does not exist" in out
            rc, out = await cli("--gun", "2")
            assert rc == 1 and "not Faulted" in out
            rc, out = await cli("--gun", "1", "--json")
            reply = json.loads(out.strip().splitlines()[-1])
            assert rc == 0 and reply["cleared"] is True and reply["gun"] == 1, out
            await _charges_again(r)
            r.assert_safe()
            with pytest.raises(ControlError, match="another process answers there"):
                await ControlServer(r.station, sock).start()  # a second controller
        finally:
            await server.close()
        assert not sock.exists()
    with pytest.raises(ControlError, match=r"no control socket at .*is `mwc run`"):
        await request(sock, {"command": "status"})


@pytest.mark.timeout(60)
async def test_mwc_run_serves_its_control_socket() -> None:
    """The real `mwc run` binds control.socket (env override) and answers `mwc clear-fault`
    while it runs; the socket is gone after SIGTERM."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(ROOT / ".cache" / "numba")}
    tmp = Path(tempfile.mkdtemp(prefix="mwc-ctlrun-"))
    sock = tmp / "control.sock"
    sim = subprocess.Popen([MWC, "sim", "modules", "--count", "4", "--guns", "2", "--port",
                            "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           env=env)
    ctl: subprocess.Popen[bytes] | None = None
    try:
        assert sim.stdout is not None
        layout = json.loads(await asyncio.wait_for(asyncio.to_thread(sim.stdout.readline), 20))
        cfg = tmp / "station.toml"
        cfg.write_text(station_toml(layout, {"id": "CTL", "max_kw": 300.0,
                                             "fallback_grid_kw": 300.0}))
        with (tmp / "ctl.log").open("wb") as log:
            ctl = subprocess.Popen([MWC, "run", "--config", str(cfg)], stdout=log,
                                   stderr=subprocess.STDOUT,
                                   env={**env, "MWC__CONTROL__SOCKET": str(sock)})
        deadline = time.monotonic() + 40.0
        while not sock.exists():
            assert ctl.poll() is None, (tmp / "ctl.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (tmp / "ctl.log").read_text()[-2000:]
            await asyncio.sleep(0.1)
        out = subprocess.run([MWC, "clear-fault", "--socket", str(sock), "--gun", "1"],
                             capture_output=True, text=True, env=env, timeout=20)
        assert out.returncode == 1 and "gun 1 is Available, not Faulted" in out.stdout, out
        status = await request(sock, {"command": "status"})
        assert [g["state"] for g in status["guns"]] == ["Available", "Available"]
        ctl.terminate()
        await asyncio.wait_for(asyncio.to_thread(ctl.wait), 20)
        assert not sock.exists()
    finally:
        for proc in (ctl, sim):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
