"""Transactions, meter values, offline queue, retries, remote control (C01, E, F, J)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from ocpp.v201 import call
from ocpp_fixtures import Backend, FakeStation, SimWall, ocpp_config, online, shutdown, started

from controller.ocpp.v201.service import OcppService
from controller.session import GunState


def charge(st: FakeStation, g: int = 0) -> None:
    """The station's event sequence from plug-in to energy transfer."""
    st.go(g, GunState.PREPARING, "vehicle plugged")
    st.event("authorized", g)
    st.go(g, GunState.CABLE_CHECK, "authorized")
    st.go(g, GunState.PRECHARGE, "cable check passed")
    st.event("charging_started", g)
    st.go(g, GunState.CHARGING, "pre-charge done")


def finish(st: FakeStation, reason: str, g: int = 0) -> None:
    st.event("charging_stopped", g, reason)
    st.go(g, GunState.FINISHING, reason)
    st.go(g, GunState.AVAILABLE, reason)


def run_for(st: FakeStation, wall: SimWall, seconds: int, g: int = 0) -> None:
    for _ in range(seconds):
        wall.advance(1.0)
        st.sample(g)


def events(be: Backend) -> list[dict[str, Any]]:
    return be.of("TransactionEvent")


async def test_TC_E_01_CS_full_transaction_with_meter_values(tmp_path: Path) -> None:
    async with online(tmp_path) as (be, svc, st, wall):
        assert await svc.authorize(0, "TRUCK-1") is True  # C01: Authorize at the backend
        assert be.of("Authorize")[0]["id_token"] == {"id_token": "TRUCK-1", "type": "Central"}
        charge(st)
        run_for(st, wall, 125)
        st.go(0, GunState.SUSPENDED_EV, "vehicle requests 0 A")
        finish(st, "StoppedByEV")
        await be.wait_for(lambda: any(e["event_type"] == "Ended" for e in events(be))
                          and len(svc.queue) == 0)
        evs = events(be)
        assert [e["seq_no"] for e in evs] == list(range(len(evs)))
        assert [(e["event_type"], e["trigger_reason"]) for e in evs] == [
            ("Started", "ChargingStateChanged"), ("Updated", "MeterValuePeriodic"),
            ("Updated", "MeterValuePeriodic"), ("Updated", "ChargingStateChanged"),
            ("Ended", "ChargingStateChanged")]
        assert len({e["transaction_info"]["transaction_id"] for e in evs}) == 1
        assert evs[0]["id_token"]["id_token"] == "TRUCK-1"
        assert evs[0]["evse"] == {"id": 1, "connector_id": 1}
        assert evs[0]["transaction_info"]["charging_state"] == "Charging"
        assert evs[3]["transaction_info"]["charging_state"] == "SuspendedEV"
        assert evs[4]["transaction_info"]["stopped_reason"] == "StoppedByEV"
        sampled = {s["measurand"]: s for s in evs[1]["meter_value"][0]["sampled_value"]}
        assert set(sampled) == {"Energy.Active.Import.Register", "Power.Active.Import",
                                "Current.Import", "Voltage", "SoC"}
        assert sampled["Power.Active.Import"]["value"] == 800_000.0
        assert sampled["Current.Import"]["unit_of_measure"]["unit"] == "A"
        end = evs[4]["meter_value"][0]["sampled_value"][0]
        assert end["context"] == "Transaction.End" and end["value"] > 0
        assert not any(e.get("offline") for e in evs)
        assert len(svc.queue) == 0


async def test_TC_E_40_CS_offline_minutes_and_restart_all_delivered_in_order(
        tmp_path: Path) -> None:
    be = Backend()
    await be.start()
    port = be.port
    wall = SimWall()
    cfg = ocpp_config(tmp_path, port)
    svc, st, task = await started(cfg, wall)
    await be.wait_for(lambda: svc.online)
    charge(st)
    await be.wait_for(lambda: len(events(be)) == 1 and len(svc.queue) == 0)
    await be.stop()  # the backend goes away ...
    await asyncio.wait_for(_until(lambda: not svc.online), 5)
    run_for(st, wall, 10 * 60)  # ... for ten minutes of simulated time
    st.go(0, GunState.SUSPENDED_EVSE, "no power available")
    queued = len(svc.queue)
    assert queued >= 11
    # the controller crashes while offline: nothing is ended cleanly
    task.cancel()
    svc.db.close()
    svc2 = OcppService(cfg, __import__("ocpp_fixtures").station_config(), wall=wall)
    st2 = FakeStation(wall)
    svc2.attach(st2)
    assert len(svc2.queue) == queued + 1  # StartupOfTheDevice
    st2.energy[0] = st.energy[0]  # the meter has not moved since: the modules are off
    st2.cycle()  # the first cycle reads the meter: the crashed transaction ends with it
    assert len(svc2.queue) == queued + 2
    task2 = asyncio.ensure_future(svc2.run())
    be2 = Backend()
    await be2.start(port)
    try:
        await be2.wait_for(lambda: any(e["event_type"] == "Ended" for e in events(be2))
                           and len(svc2.queue) == 0)
        evs = events(be) + events(be2)
        assert [e["seq_no"] for e in evs] == list(range(len(evs)))  # gap-free, in order
        assert [bool(e.get("offline")) for e in evs] == [False] + [True] * (len(evs) - 1)
        assert evs[-1]["transaction_info"]["stopped_reason"] == "PowerLoss"
        end_mv = evs[-1]["meter_value"][0]["sampled_value"][0]
        assert end_mv["measurand"] == "Energy.Active.Import.Register"
        assert end_mv["value"] == round(st.energy[0], 3)  # the register at the crash
        assert [e["trigger_reason"] for e in evs[1:11]] == ["MeterValuePeriodic"] * 10
        assert len(svc2.queue) == 0
    finally:
        await shutdown(svc2, task2)
        await be2.stop()


async def _until(pred: Any) -> None:
    while not pred():
        await asyncio.sleep(0.01)


async def test_TC_E_51_CS_retry_rejected_transaction_event_then_success(tmp_path: Path) -> None:
    be = Backend(reject_tx=2)
    await be.start()
    wall = SimWall()
    svc, st, task = await started(ocpp_config(tmp_path, be.port, message_attempts=3), wall)
    try:
        await be.wait_for(lambda: svc.online)
        charge(st)
        await be.wait_for(lambda: len(events(be)) == 3 and len(svc.queue) == 0)
        assert {e["seq_no"] for e in events(be)} == {0}  # the same message, three times
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_TC_E_50_CS_rejected_transaction_event_dropped_after_max(tmp_path: Path) -> None:
    be = Backend(reject_tx=3)
    await be.start()
    wall = SimWall()
    svc, st, task = await started(ocpp_config(tmp_path, be.port, message_attempts=3), wall)
    try:
        await be.wait_for(lambda: svc.online)
        charge(st)
        run_for(st, wall, 61)
        await be.wait_for(lambda: len(events(be)) == 4 and len(svc.queue) == 0)
        evs = events(be)
        assert [e["seq_no"] for e in evs] == [0, 0, 0, 1]  # dropped after 3, next one sent
        assert evs[3]["trigger_reason"] == "MeterValuePeriodic"
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_malformed_frames_answered_with_callerror_nothing_lost(tmp_path: Path) -> None:
    async with online(tmp_path) as (be, _svc, st, wall):
        charge(st)
        assert be.cp is not None
        ws = be.cp._connection
        frames = ["not json{", json.dumps({"a": 1}), json.dumps([2, "m1", "Heartbeat"]),
                  json.dumps([2, "m2", "FooBar", {}]),
                  json.dumps([2, "m3", "RequestStopTransaction", {"transactionId": 5}]),
                  json.dumps([2, "m4", "SetChargingProfile", {"evseId": 1}])]
        for f in frames:
            n = len(be.raw)
            await ws.send(f)
            await be.wait_for(lambda n=n: any(r.startswith("[4,") for r in be.raw[n:]))
        errors = [json.loads(r) for r in be.raw if r.startswith("[4,")]
        assert [e[2] for e in errors] == ["RpcFrameworkError", "RpcFrameworkError",
                                          "FormatViolation", "NotSupported",
                                          "TypeConstraintViolation",
                                          "ProtocolError"]
        assert [e[1] for e in errors] == ["-1", "-1", "m1", "m2", "m3", "m4"]
        assert "invalid JSON" in errors[0][3]
        r = await be.cp.call(call.DataTransfer(vendor_id="com.example"), suppress=False)
        assert r.status == "UnknownVendorId"
        run_for(st, wall, 61)
        await be.wait_for(lambda: len(events(be)) == 2)
        assert [e["seq_no"] for e in events(be)] == [0, 1]


async def test_TC_J_07_J_10_CS_started_and_ended_carry_the_meter_register(tmp_path: Path) -> None:
    """The station reports charging_started before its first meter sample: the Started
    event takes the energy register from the last cycle record; the Ended register is the
    Started one plus the session energy of the stopping cycle (TC_J_10)."""
    async with online(tmp_path) as (be, _svc, st, wall):
        st.energy[0] = 12_345.0  # the meter's register before this session
        st.cycle()
        charge(st)
        await be.wait_for(lambda: len(events(be)) == 1)
        mv = events(be)[0]["meter_value"][0]
        sampled = {s["measurand"]: s for s in mv["sampled_value"]}
        assert sampled["Energy.Active.Import.Register"]["value"] == 12_345.0
        assert sampled["Energy.Active.Import.Register"]["context"] == "Transaction.Begin"
        run_for(st, wall, 2)  # the last reading is one cycle older than the stop:
        st.event("charging_stopped", 0, "Local", energy=st.energy[0] - 12_345.0 + 50.0)
        await be.wait_for(lambda: len(events(be)) == 2)
        end = events(be)[1]["meter_value"][0]["sampled_value"][0]
        assert end["context"] == "Transaction.End"
        assert end["value"] == round(st.energy[0] + 50.0, 3)  # Started + session energy
