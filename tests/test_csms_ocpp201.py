"""OCPP 2.0.1 stations against the backend, driven straight from the ``ocpp`` package."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import websockets
from csms_fixtures import (
    PASSWORD,
    add_token,
    api,
    basic,
    make_config,
    now,
    provision,
    running_csms,
    station,
)
from ocpp.exceptions import OCPPError
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result

BOOT = call.BootNotification(charging_station={"model": "MCS-1", "vendor_name": "mwcharge",
                                               "serial_number": "SN1"}, reason="PowerUp")


@pytest.fixture
async def csms(tmp_path: Path) -> Any:
    async with running_csms(make_config(tmp_path, rate_burst=50, rate_per_s=20)) as server:
        yield server


def url(server: Any) -> str:
    return f"ws://127.0.0.1:{server.ocpp_port}"


def tx_event(event_type: str, seq_no: int, tx_id: str = "TX1", **kw: Any) -> call.TransactionEvent:
    info = {"transaction_id": tx_id, **kw.pop("info", {})}
    return call.TransactionEvent(event_type=event_type, timestamp=kw.pop("timestamp", now()),
                                 trigger_reason=kw.pop("trigger_reason", "Authorized"),
                                 seq_no=seq_no, transaction_info=info, **kw)


def energy(wh: float, ts: str | None = None) -> list[dict[str, Any]]:
    return [{"timestamp": ts or now(), "sampled_value": [
        {"value": wh / 1000, "measurand": "Energy.Active.Import.Register",
         "unit_of_measure": {"unit": "kWh"}},
        {"value": 350000.0, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}},
    ]}]


async def test_TC_B_01_CSMS_cold_boot_accepted_and_heartbeat(csms: Any) -> None:
    await provision(csms, "CS1")
    async with station(url(csms), "CS1") as cp:
        boot = await cp.call(BOOT, suppress=False)
        assert boot.status == "Accepted" and boot.interval == 300
        assert boot.current_time.endswith("Z")
        hb = await cp.call(call.Heartbeat(), suppress=False)
        assert hb.current_time.endswith("Z")
        await cp.call(call.StatusNotification(timestamp=now(), connector_status="Available",
                                              evse_id=1, connector_id=1), suppress=False)
        async with api(csms) as client:
            detail = (await client.get("/api/v1/stations/CS1")).json()
    assert detail["vendor"] == "mwcharge" and detail["serial_number"] == "SN1"
    assert detail["connection"]["connected"] and detail["connection"]["protocol"] == "ocpp2.0.1"
    assert detail["connection"]["evse_status"] == {"1/1": "Available"}
    assert detail["evse_status"][0]["status"] == "Available"
    assert "password_hash" not in detail and detail["has_password"]


async def test_TC_B_02_CSMS_pending_until_approved(csms: Any) -> None:
    await provision(csms, "CS2", approved=False)
    triggered = asyncio.Event()

    class Cs(ChargePoint):
        @on("TriggerMessage")
        def on_trigger(self, requested_message: str, **_: Any) -> call_result.TriggerMessage:
            assert requested_message == "BootNotification"
            triggered.set()
            return call_result.TriggerMessage(status="Accepted")

    async with station(url(csms), "CS2", Cs) as cp:
        boot = await cp.call(BOOT, suppress=False)
        assert boot.status == "Pending" and boot.interval == 30
        # TC_B_30: anything but BootNotification from a Pending station is a SecurityError.
        with pytest.raises(OCPPError) as err:
            await cp.call(call.Heartbeat(), suppress=False)
        assert err.value.code == "SecurityError"
        async with api(csms) as client:
            assert (await client.post("/api/v1/stations/CS2/approve")).status_code == 200
        await asyncio.wait_for(triggered.wait(), 5)
        assert (await cp.call(BOOT, suppress=False)).status == "Accepted"
        await cp.call(call.Heartbeat(), suppress=False)


@pytest.mark.parametrize(("token", "expected"), [
    ("GOOD", "Accepted"), ("NOPE", "Unknown"), ("BLOCKED", "Blocked"), ("OLD", "Expired")])
async def test_TC_C_02_06_07_CSMS_authorize_statuses(csms: Any, token: str, expected: str) -> None:
    await provision(csms, "CS3")
    await add_token(csms, "GOOD", expiry="2099-01-01T00:00:00Z", group_id="FLEET")
    await add_token(csms, "BLOCKED", status="Blocked")
    await add_token(csms, "OLD", expiry="2020-01-01T00:00:00Z")
    async with station(url(csms), "CS3") as cp:
        await cp.call(BOOT, suppress=False)
        res = await cp.call(call.Authorize(id_token={"id_token": token, "type": "ISO14443"}),
                            suppress=False)
    assert res.id_token_info["status"] == expected
    if expected == "Accepted":  # TC_C_39: the group id lets the station match a stop token
        assert res.id_token_info["group_id_token"]["id_token"] == "FLEET"
        assert res.id_token_info["cache_expiry_date_time"].startswith("2099-01-01")


async def test_TC_E_53_CSMS_transaction_events_twice_and_out_of_order(csms: Any) -> None:
    await provision(csms, "CS4")
    await add_token(csms, "TOK")
    tok = {"id_token": "TOK", "type": "ISO14443"}
    t0, t1, t2 = "2026-01-01T10:00:00.000Z", "2026-01-01T10:10:00.000Z", "2026-01-01T10:20:00.000Z"
    started = tx_event("Started", 0, id_token=tok, evse={"id": 1, "connector_id": 1},
                       timestamp=t0, meter_value=energy(1000, t0),
                       info={"charging_state": "Charging"})
    updated = tx_event("Updated", 1, timestamp=t1, trigger_reason="MeterValuePeriodic",
                       meter_value=energy(101000, t1))
    ended = tx_event("Ended", 2, timestamp=t2, trigger_reason="StopAuthorized",
                     meter_value=energy(201000, t2), info={"stopped_reason": "Local"})
    async with station(url(csms), "CS4") as cp:
        await cp.call(BOOT, suppress=False)
        # Out of order: Ended first, then Started, then Updated; every one twice.
        for event in (ended, started, updated, started, ended, updated):
            res = await cp.call(event, suppress=False)
        first = await cp.call(started, suppress=False)
    assert first.id_token_info["status"] == "Accepted"
    assert res.id_token_info is None
    async with api(csms) as client:
        txs = (await client.get("/api/v1/transactions", params={"station_id": "CS4"})).json()
        assert len(txs) == 1
        detail = (await client.get(f"/api/v1/transactions/{txs[0]['id']}")).json()
    assert [e["seq_no"] for e in detail["events"]] == [0, 1, 2]
    assert detail["started_at"] == t0 and detail["ended_at"] == t2
    assert detail["stop_reason"] == "Local" and detail["id_token"] == "TOK"
    assert detail["evse_id"] == 1 and not detail["active"]
    assert detail["energy_wh"] == pytest.approx(200000.0)
    assert len([m for m in detail["meter_values"] if m["measurand"].startswith("Energy")]) == 3
    assert detail["events"][0]["payload"]["transactionInfo"]["chargingState"] == "Charging"


async def test_TC_J_01_CSMS_meter_values_and_notifications_are_kept(csms: Any) -> None:
    await provision(csms, "CS5")
    async with station(url(csms), "CS5") as cp:
        await cp.call(BOOT, suppress=False)
        await cp.call(call.MeterValues(evse_id=1, meter_value=energy(5000)), suppress=False)
        await cp.call(call.NotifyReport(request_id=1, generated_at=now(), seq_no=0, tbc=False,
                                        report_data=[{"component": {"name": "SecurityCtrlr"},
                                                      "variable": {"name": "SecurityProfile"},
                                                      "variable_attribute": [{"value": "1"}]}]),
                      suppress=False)
        await cp.call(call.NotifyChargingLimit(charging_limit={"charging_limit_source": "EMS"},
                                               evse_id=1), suppress=False)
        await cp.call(call.ReportChargingProfiles(request_id=1, charging_limit_source="CSO",
                                                  evse_id=1, tbc=False, charging_profile=[{
            "id": 1, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
            "charging_profile_kind": "Absolute", "charging_schedule": [{
                "id": 1, "charging_rate_unit": "A", "start_schedule": now(),
                "charging_schedule_period": [{"start_period": 0, "limit": 1000.0}]}]}]),
            suppress=False)
        await cp.call(call.SecurityEventNotification(type="FirmwareUpdated", timestamp=now(),
                                                     tech_info="v2"), suppress=False)
        await cp.call(call.FirmwareStatusNotification(status="Installed"), suppress=False)
        await cp.call(call.LogStatusNotification(status="Uploaded", request_id=3),
                      suppress=False)
        dt = await cp.call(call.DataTransfer(vendor_id="com.example", message_id="x",
                                             data="hello"), suppress=False)
        assert dt.status == "UnknownVendorId"  # TC_P_02
        dt = await cp.call(call.DataTransfer(vendor_id="org.mwcharge", data={"a": 1}),
                           suppress=False)
        assert dt.status == "Accepted"
    async with api(csms) as client:
        msgs = (await client.get("/api/v1/stations/CS5/messages")).json()
        events = (await client.get("/api/v1/stations/CS5/security-events")).json()
    assert [m["action"] for m in msgs] == [
        "NotifyReport", "NotifyChargingLimit", "ReportChargingProfiles",
        "FirmwareStatusNotification", "LogStatusNotification", "DataTransfer", "DataTransfer"]
    assert msgs[0]["payload"]["reportData"][0]["component"]["name"] == "SecurityCtrlr"
    assert events[0]["type"] == "FirmwareUpdated" and events[0]["tech_info"] == "v2"
    rows = await csms.repo._run(  # meter values outside a transaction
        lambda c: c.execute("SELECT value, unit FROM meter_values WHERE station_id='CS5'"
                            " AND measurand LIKE 'Energy%'").fetchall())
    assert rows == [(5000.0, "Wh")]


async def test_malformed_and_schema_violating_frames_get_call_errors(csms: Any) -> None:
    await provision(csms, "CS6")
    async with websockets.connect(f"{url(csms)}/ocpp/CS6", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                  additional_headers=basic("CS6", PASSWORD)) as ws:
        async def exchange(frame: str) -> list[Any]:
            await ws.send(frame)
            return list(json.loads(await ws.recv()))

        assert (await exchange("this is not json"))[:3] == [4, "-1", "RpcFrameworkError"]
        assert (await exchange('{"a": 1}'))[:3] == [4, "-1", "RpcFrameworkError"]
        assert (await exchange('[2, "m1", "BootNotification"]'))[:3] == [
            4, "m1", "RpcFrameworkError"]
        assert (await exchange('[7, "m2", "X", {}]'))[:3] == [4, "m2", "MessageTypeNotSupported"]
        reply = await exchange('[2, "m3", "BootNotification", {"reason": "PowerUp"}]')
        assert reply[:2] == [4, "m3"] and reply[2] in ("OccurrenceConstraintViolation",
                                                       "ProtocolError", "FormationViolation")
        reply = await exchange('[2, "m4", "BootNotification", {"reason": 5, '
                               '"chargingStation": {"model": "m", "vendorName": "v"}}]')
        assert reply[:3] == [4, "m4", "TypeConstraintViolation"]
        assert (await exchange('[2, "m5", "NoSuchAction", {}]'))[:3] == [4, "m5", "NotSupported"]
        # The connection survived all of that and still works.
        reply = await exchange('[2, "m6", "BootNotification", {"reason": "PowerUp", '
                               '"chargingStation": {"model": "m", "vendorName": "v"}}]')
        assert reply[0] == 3 and reply[2]["status"] == "Accepted"


async def test_flooding_station_is_throttled_and_others_keep_working(csms: Any) -> None:
    await provision(csms, "FLOOD")
    await provision(csms, "CALM")
    frame = '[2, "{}", "Heartbeat", {{}}]'
    async with websockets.connect(f"{url(csms)}/ocpp/FLOOD", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                  additional_headers=basic("FLOOD", PASSWORD)) as ws, \
            station(url(csms), "CALM") as calm:
        await calm.call(BOOT, suppress=False)

        async def flood() -> list[Any]:
            for i in range(400):
                await ws.send(frame.format(i))
            return [json.loads(await ws.recv()) for _ in range(400)]

        flooding = asyncio.create_task(flood())
        for _ in range(20):  # the calm station is served while the flood is on
            await asyncio.wait_for(calm.call(call.Heartbeat(), suppress=False), 2)
        replies = await flooding
    refused = [r for r in replies if r[0] == 4]
    assert refused and all(r[2] == "GenericError" for r in refused)
    assert len(replies) - len(refused) >= 50  # the burst was served


async def test_reconnect_replaces_the_old_connection(csms: Any) -> None:
    await provision(csms, "CS7")
    async with station(url(csms), "CS7") as first:
        await first.call(BOOT, suppress=False)
        async with station(url(csms), "CS7") as second:
            await first._connection.wait_closed()  # the backend closed the stale socket
            assert first._connection.close_code == 1000
            assert (await second.call(call.Heartbeat(), suppress=False)).current_time
            assert csms.session("CS7") is not None
