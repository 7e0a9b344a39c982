"""OCPP 1.6J core: boot, status, heartbeat, a full transaction, configuration keys, triggers,
availability and malformed frames, against a backend built from ``ocpp.v16``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets
from ocpp.v16 import call
from ocpp16_fixtures import (
    Backend16,
    charge,
    config16,
    finish,
    online16,
    run_for,
    shutdown16,
    started16,
)
from ocpp_fixtures import STATION_TOML, FakeStation, SimWall

from controller.config import parse_config
from controller.ocpp.connection import SUBPROTOCOLS, auth_headers
from controller.ocpp.v16.adapter import error_code
from controller.ocpp.v16.service import Ocpp16Service
from controller.ocpp.v16.transactions import reason16
from controller.services import ocpp_service
from controller.session import GunState


async def test_boot_accepted_statuses_of_connectors_0_to_2_and_heartbeat(
        tmp_path: Path) -> None:
    be = Backend16(password="s3cret-pass-16-chars", interval=1)
    await be.start()
    svc, st, task = await started16(config16(tmp_path, be.port), SimWall())
    try:
        await be.wait_for(lambda: len(be.of("StatusNotification")) == 3
                          and bool(be.of("SecurityEventNotification")))
        assert svc._ws.subprotocol == "ocpp1.6"  # negotiated on the websocket
        boot = be.of("BootNotification")[0]
        assert boot["charge_point_vendor"] == "mwcharge" and boot["charge_point_model"]
        assert be.auth_seen[0] == auth_headers(1, "MWC-T1",
                                               "s3cret-pass-16-chars")["Authorization"]
        sn = be.of("StatusNotification")
        assert [s["connector_id"] for s in sn] == [0, 1, 2]
        assert all(s["status"] == "Available" and s["error_code"] == "NoError" for s in sn)
        assert be.of("SecurityEventNotification")[0]["type"] == "StartupOfTheDevice"
        st.go(0, GunState.CABLE_CHECK, "vehicle plugged")  # 1.6: CableCheck is "Preparing"
        await be.wait_for(lambda: len(be.of("StatusNotification")) == 4)
        assert be.of("StatusNotification")[3]["status"] == "Preparing"
        st.go(0, GunState.PRECHARGE, "cable check passed")  # same 1.6 status: not reported
        st.go(0, GunState.FAULTED, "safety: over current on gun 0")
        await be.wait_for(lambda: len(be.of("StatusNotification")) == 5)
        last = be.of("StatusNotification")[4]
        assert (last["status"], last["error_code"]) == ("Faulted", "OverCurrentFailure")
        assert "over current" in last["info"]
        await be.wait_for(lambda: bool(be.of("Heartbeat")), timeout=3)  # interval 1 s
    finally:
        await shutdown16(svc, task)
        await be.stop()


async def test_boot_pending_then_accepted_nothing_else_sent_before(tmp_path: Path) -> None:
    be = Backend16(boot=["Pending", "Accepted"], interval=1)
    async with online16(tmp_path, be) as (be, svc, _st, _wall):
        msgs = [json.loads(r)[2] for r in be.raw if json.loads(r)[0] == 2]
        assert msgs[:2] == ["BootNotification", "BootNotification"]
        assert svc.boot_status == "Accepted"


async def test_boot_rejected_station_retries_and_stays_offline(tmp_path: Path) -> None:
    be = Backend16(boot=["Rejected"], interval=1)
    await be.start()
    svc, _st, task = await started16(config16(tmp_path, be.port), SimWall())
    try:
        await be.wait_for(lambda: len(be.of("BootNotification")) >= 2, timeout=4)
        assert not svc.online and svc.boot_status == "Rejected"
        assert {a for a, _ in be.got} == {"BootNotification"}
    finally:
        await shutdown16(svc, task)
        await be.stop()


async def test_full_transaction_meter_values_and_stop_transaction_data(tmp_path: Path) -> None:
    async with online16(tmp_path, sampled_interval_s=60) as (be, svc, st, wall):
        assert await svc.authorize(0, "TRUCK-1") is True
        assert be.of("Authorize")[0]["id_tag"] == "TRUCK-1"
        assert await svc.authorize(1, "STRANGER") is False
        st.cycle()
        charge(st)
        run_for(st, wall, 125)
        finish(st, "StoppedByEV")
        await be.wait_for(lambda: bool(be.of("StopTransaction")) and len(svc.queue) == 0)
        msgs = be.tx_msgs()
        assert [a for a, _ in msgs] == ["StartTransaction", "MeterValues", "MeterValues",
                                        "StopTransaction"]
        start, stop = msgs[0][1], msgs[-1][1]
        assert (start["connector_id"], start["id_tag"], start["meter_start"]) == (1, "TRUCK-1", 0)
        assert all(kw["transaction_id"] == 101 for _, kw in msgs[1:])
        sampled = {s["measurand"]: s for s in msgs[1][1]["meter_value"][0]["sampled_value"]}
        assert set(sampled) == {"Energy.Active.Import.Register", "Power.Active.Import",
                                "Current.Import", "Voltage", "SoC"}
        assert sampled["Power.Active.Import"]["value"] == "800000.0"
        assert sampled["Current.Import"]["unit"] == "A"
        assert sampled["Energy.Active.Import.Register"]["context"] == "Sample.Periodic"
        assert stop["reason"] == "Local" and stop["id_tag"] == "TRUCK-1"
        assert stop["meter_stop"] == round(st.energy[0])
        data = stop["transaction_data"]
        contexts = [mv["sampled_value"][0]["context"] for mv in data]
        assert contexts == ["Transaction.Begin", "Sample.Periodic", "Sample.Periodic",
                            "Transaction.End"]
        assert float(data[-1]["sampled_value"][0]["value"]) == round(st.energy[0], 3)
        assert svc.tx.open == {}


async def test_start_transaction_invalid_id_stops_charging(tmp_path: Path) -> None:
    async with online16(tmp_path) as (be, svc, st, _wall):
        charge(st, token="BLOCKED-9")  # e.g. let through by the offline rules
        await be.wait_for(lambda: bool(be.of("StartTransaction")) and len(svc.queue) == 0)
        await be.wait_for(lambda: bool(st.stops))
        assert st.stops == [(0, "DeAuthorized")]
        finish(st, "DeAuthorized")
        await be.wait_for(lambda: bool(be.of("StopTransaction")))
        assert be.of("StopTransaction")[0]["reason"] == "DeAuthorized"
        charge(st, g=1, token="")  # free charging: nobody's idTag, the station decided
        await be.wait_for(lambda: len(be.of("StartTransaction")) == 2 and len(svc.queue) == 0)
        assert be.of("StartTransaction")[1]["id_tag"] == "FreeCharging"
        assert st.stops == [(0, "DeAuthorized")]  # not stopped for the Invalid answer


async def test_services_select_the_1_6_client(tmp_path: Path) -> None:
    cfg = parse_config({**STATION_TOML, "ocpp": {
        "version": "1.6", "url": "ws://127.0.0.1:9/ocpp", "password": "s3cret-pass-16-chars",
        "database": str(tmp_path / "ocpp.sqlite3")}})
    st = FakeStation(SimWall())
    svc = ocpp_service(st, cfg)  # type: ignore[arg-type]
    try:
        assert isinstance(svc, Ocpp16Service) and st.authorizer == svc.authorize
        assert svc.online is False and len(svc.queue) == 1  # StartupOfTheDevice
        assert SUBPROTOCOLS[cfg.ocpp.version] == "ocpp1.6"
    finally:
        await svc.close()


async def test_get_and_change_configuration(tmp_path: Path) -> None:
    async with online16(tmp_path) as (be, svc, _st, _wall):
        cp = be.cp
        r = await cp.call(call.GetConfiguration(), suppress=False)
        keys = {k["key"]: k for k in r.configuration_key}
        assert keys["NumberOfConnectors"] == {"key": "NumberOfConnectors", "readonly": True,
                                              "value": "2"}
        assert keys["HeartbeatInterval"]["readonly"] is False
        assert "value" not in keys["AuthorizationKey"]  # write-only: never reported
        r = await cp.call(call.GetConfiguration(key=["MeterValueSampleInterval", "Bogus"]),
                          suppress=False)
        assert r.configuration_key == [{"key": "MeterValueSampleInterval", "readonly": False,
                                        "value": "60"}]
        assert r.unknown_key == ["Bogus"]
        change = [("NumberOfConnectors", "4", "Rejected"), ("Bogus", "1", "NotSupported"),
                  ("MeterValueSampleInterval", "-5", "Rejected"),
                  ("MeterValuesSampledData", "Voltage,Frequency", "Rejected"),
                  ("MeterValueSampleInterval", "15", "Accepted"),
                  ("StopTransactionOnInvalidId", "FALSE", "Accepted"),
                  ("AuthorizationKey", "short", "Rejected"),
                  ("AuthorizationKey", "a-new-key-of-20-chars", "Accepted")]
        for key, value, want in change:
            r = await cp.call(call.ChangeConfiguration(key=key, value=value), suppress=False)
            assert r.status == want, key
        assert svc.keys.num("MeterValueSampleInterval") == 15
        assert svc.keys.flag("StopTransactionOnInvalidId") is False
        assert svc.link_password() == "a-new-key-of-20-chars"  # used at the next connect


async def test_configuration_survives_restart(tmp_path: Path) -> None:
    async with online16(tmp_path) as (be, _svc, _st, _wall):
        r = await be.cp.call(call.ChangeConfiguration(key="ClockAlignedDataInterval",
                                                      value="300"), suppress=False)
        assert r.status == "Accepted"
    async with online16(tmp_path) as (be, svc, _st, _wall):
        assert svc.keys.get("ClockAlignedDataInterval") == "300"


async def test_trigger_unlock_availability_data_transfer(tmp_path: Path) -> None:
    async with online16(tmp_path) as (be, svc, st, _wall):
        cp = be.cp
        n = len(be.of("StatusNotification"))
        r = await cp.call(call.TriggerMessage(requested_message="StatusNotification",
                                              connector_id=2), suppress=False)
        assert r.status == "Accepted"
        await be.wait_for(lambda: len(be.of("StatusNotification")) == n + 1)
        assert be.of("StatusNotification")[-1]["connector_id"] == 2
        r = await cp.call(call.TriggerMessage(requested_message="Heartbeat"), suppress=False)
        await be.wait_for(lambda: bool(be.of("Heartbeat")))
        r = await cp.call(call.TriggerMessage(requested_message="StatusNotification",
                                              connector_id=7), suppress=False)
        assert r.status == "Rejected"
        r = await cp.call(call.TriggerMessage(requested_message="DiagnosticsStatusNotification"),
                          suppress=False)
        await be.wait_for(lambda: bool(be.of("DiagnosticsStatusNotification")))
        r = await cp.call(call.UnlockConnector(connector_id=3), suppress=False)
        assert r.status == "NotSupported"
        charge(st)
        r = await cp.call(call.UnlockConnector(connector_id=1), suppress=False)
        assert r.status == "Unlocked" and st.stops == [(0, "UnlockCommand")]
        r = await cp.call(call.ChangeAvailability(connector_id=1, type="Inoperative"),
                          suppress=False)
        assert r.status == "Scheduled" and st.available[0] is True  # running tx keeps it
        finish(st, "UnlockCommand")
        assert st.available[0] is False
        await be.wait_for(lambda: bool(be.of("StopTransaction")))
        assert be.of("StopTransaction")[0]["reason"] == "UnlockCommand"
        r = await cp.call(call.ChangeAvailability(connector_id=0, type="Inoperative"),
                          suppress=False)
        assert r.status == "Accepted" and st.available == {0: False, 1: False}
        await be.wait_for(lambda: any(s["connector_id"] == 0 and s["status"] == "Unavailable"
                                      for s in be.of("StatusNotification")))
        r = await cp.call(call.ChangeAvailability(connector_id=5, type="Operative"),
                          suppress=False)
        assert r.status == "Rejected"
        r = await cp.call(call.DataTransfer(vendor_id="acme", message_id="x"), suppress=False)
        assert r.status == "UnknownVendorId"
        svc.auth_cache.put("TRUCK-1", "Accepted")
        r = await cp.call(call.ClearCache(), suppress=False)
        assert r.status == "Accepted" and svc.auth_cache.get("TRUCK-1") is None


async def test_malformed_frames_get_call_errors_and_the_link_survives(tmp_path: Path) -> None:
    async with online16(tmp_path) as (be, svc, _st, _wall):
        ws = be.cp._connection
        replies: list[list[object]] = []
        orig = be.cp.route_message

        async def capture(raw: str) -> None:
            msg = json.loads(raw)
            if msg[0] == 4 and msg[1] in ("-1", "bad-1", "bad-2", "bad-3"):
                replies.append(msg)
                be.changed.set()
                return
            await orig(raw)
        be.cp.route_message = capture
        await ws.send("this is not json")
        await ws.send(json.dumps({"not": "a list"}))
        await ws.send(json.dumps([2, "bad-1", "Reset"]))  # no payload
        await ws.send(json.dumps([2, "bad-2", "Reset", {"type": "Sideways"}]))
        await ws.send(json.dumps([2, "bad-3", "ReserveNow", {}]))  # not supported
        await be.wait_for(lambda: len(replies) == 5)
        codes = {m[1]: m[2] for m in replies if m[1] != "-1"}
        assert [m[2] for m in replies if m[1] == "-1"] == ["RpcFrameworkError"] * 2
        assert codes["bad-1"] == "FormationViolation"
        assert codes["bad-2"] == "FormationViolation"  # 1.6 spelling, not FormatViolation
        assert codes["bad-3"] == "NotImplemented"
        be.cp.route_message = orig
        r = await be.cp.call(call.GetConfiguration(key=["HeartbeatInterval"]), suppress=False)
        assert r.configuration_key[0]["key"] == "HeartbeatInterval"  # still alive
        assert svc.online
        await asyncio.sleep(0)
        assert isinstance(ws, websockets.ServerConnection)


@pytest.mark.parametrize(("state", "reason", "code"), [
    (GunState.CHARGING, "over current", "NoError"),
    (GunState.FAULTED, "safety: over current on gun 0", "OverCurrentFailure"),
    (GunState.FAULTED, "under voltage", "UnderVoltage"),
    (GunState.FAULTED, "meter 2 unreachable", "PowerMeterFailure"),
    (GunState.FAULTED, "contactor welded", "PowerSwitchFailure"),
    (GunState.FAULTED, "emergency stop: button", "OtherError"),
    (GunState.FAULTED, None, "OtherError"),
])
def test_fault_reasons_to_error_codes(state: GunState, reason: str | None, code: str) -> None:
    assert error_code(state, reason) == code


@pytest.mark.parametrize(("reason", "want"), [
    ("EVDisconnected", "EVDisconnected"), ("StoppedByEV", "Local"), ("Remote", "Remote"),
    ("emergency stop: button", "EmergencyStop"), ("ImmediateReset", "HardReset"),
    ("Timeout", "Other"), (None, "Other")])
def test_stop_reasons(reason: str | None, want: str) -> None:
    assert reason16(reason) == want
