"""OCPP 1.6J stations against the backend, driven straight from the ``ocpp`` package."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from csms_fixtures import add_token, api, make_config, now, provision, running_csms, station
from ocpp.exceptions import OCPPError
from ocpp.v16 import ChargePoint, call

BOOT = call.BootNotification(charge_point_model="MCS-1", charge_point_vendor="mwcharge",
                             charge_point_serial_number="SN16")


@pytest.fixture
async def csms(tmp_path: Path) -> Any:
    async with running_csms(make_config(tmp_path)) as server:
        await provision(server, "CP16")
        await add_token(server, "TAG1", group_id="PARENT")
        await add_token(server, "BAD", status="Blocked")
        yield server


def ago(seconds: float) -> str:
    t = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def url(server: Any) -> str:
    return f"ws://127.0.0.1:{server.ocpp_port}"


def energy(wh: int, context: str = "Sample.Periodic",
           ts: str | None = None) -> list[dict[str, Any]]:
    return [{"timestamp": ts or now(), "sampled_value": [
        {"value": str(wh), "context": context, "measurand": "Energy.Active.Import.Register",
         "unit": "Wh"}]}]


async def test_boot_heartbeat_status_authorize(csms: Any) -> None:
    async with station(url(csms), "CP16", ChargePoint) as cp:
        boot = await cp.call(BOOT, suppress=False)
        assert boot.status == "Accepted"
        assert (await cp.call(call.Heartbeat(), suppress=False)).current_time.endswith("Z")
        await cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                              status="Available"), suppress=False)
        good = await cp.call(call.Authorize(id_tag="TAG1"), suppress=False)
        unknown = await cp.call(call.Authorize(id_tag="WHO"), suppress=False)
        blocked = await cp.call(call.Authorize(id_tag="BAD"), suppress=False)
        async with api(csms) as client:
            detail = (await client.get("/api/v1/stations/CP16")).json()
    assert good.id_tag_info == {"status": "Accepted", "parent_id_tag": "PARENT"}
    assert unknown.id_tag_info["status"] == "Invalid"
    assert blocked.id_tag_info["status"] == "Blocked"
    assert detail["ocpp_version"] == "1.6" and detail["serial_number"] == "SN16"
    assert detail["connection"]["protocol"] == "ocpp1.6"
    assert detail["evse_status"][0]["status"] == "Available"


async def test_start_stop_transaction_ids_assigned_by_backend(csms: Any) -> None:
    async with station(url(csms), "CP16", ChargePoint) as cp:
        await cp.call(BOOT, suppress=False)
        ts = ago(7200)  # 150 kWh in two hours: plausible for the default rating
        start = call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=1000,
                                      timestamp=ts)
        first = await cp.call(start, suppress=False)
        again = await cp.call(start, suppress=False)  # retried after a lost answer
        other = await cp.call(call.StartTransaction(connector_id=2, id_tag="TAG1",
                                                    meter_start=0, timestamp=ts),
                              suppress=False)
        assert first.transaction_id == again.transaction_id != other.transaction_id
        assert first.id_tag_info["status"] == "Accepted"
        tx = first.transaction_id
        await cp.call(call.MeterValues(connector_id=1, transaction_id=tx,
                                       meter_value=energy(50000, ts=ago(3600))),
                      suppress=False)
        stop = call.StopTransaction(meter_stop=151000, timestamp=now(), transaction_id=tx,
                                    reason="EVDisconnected", id_tag="TAG1",
                                    transaction_data=energy(151000, "Transaction.End"))
        res = await cp.call(stop, suppress=False)
        assert res.id_tag_info["status"] == "Accepted"
        await cp.call(stop, suppress=False)  # duplicate stop changes nothing
        unknown = await cp.call(call.StopTransaction(meter_stop=1, timestamp=now(),
                                                     transaction_id=999999), suppress=False)
        assert unknown.id_tag_info is None
    async with api(csms) as client:
        detail = (await client.get(f"/api/v1/transactions/{tx}")).json()
        active = (await client.get("/api/v1/transactions", params={"active": True})).json()
        kept = (await client.get("/api/v1/stations/CP16/messages",
                                 params={"action": "StopTransaction"})).json()
    assert detail["energy_wh"] == 150000.0 and detail["stop_reason"] == "EVDisconnected"
    assert [e["event_type"] for e in detail["events"]] == ["StartTransaction", "StopTransaction"]
    assert sorted(m["context"] for m in detail["meter_values"]) == [
        "Sample.Periodic", "Transaction.End"]
    assert [t["transaction_id"] for t in active] == [str(other.transaction_id)]
    assert kept[0]["payload"]["transactionId"] == 999999  # unknown id kept, not lost


async def test_data_transfer_and_security_event(csms: Any) -> None:
    async with station(url(csms), "CP16", ChargePoint) as cp:
        await cp.call(BOOT, suppress=False)
        res = await cp.call(call.DataTransfer(vendor_id="acme", message_id="m", data="d"),
                            suppress=False)
        assert res.status == "UnknownVendorId"
        await cp.call(call.SecurityEventNotification(type="StartupOfTheDevice", tech_info="cold",
                                                     timestamp=now()), suppress=False)
        with pytest.raises(OCPPError) as err:  # schema violation: connectorId must be int
            await cp.call(call.StatusNotification(connector_id="x", error_code="NoError",
                                                  status="Available"),
                          suppress=False, skip_schema_validation=True)
        assert err.value.code in ("TypeConstraintViolation", "FormationViolation",
                                  "FormatViolation")
    events = await csms.repo.list_security_events("CP16")
    assert events[0]["type"] == "StartupOfTheDevice"
