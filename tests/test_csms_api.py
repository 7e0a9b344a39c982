"""The operator REST API end to end: real HTTP to uvicorn, real websockets to stations."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from csms_fixtures import (
    API_TOKEN,
    add_token,
    api,
    make_config,
    now,
    provision,
    running_csms,
    station,
)
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call_result as r16
from ocpp.v201 import ChargePoint, call, call_result

BOOT = call.BootNotification(charging_station={"model": "M", "vendor_name": "V"},
                             reason="PowerUp")
PROFILE = {"id": 7, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
           "chargingProfileKind": "Absolute", "chargingSchedule": [{
               "id": 1, "chargingRateUnit": "A", "startSchedule": "2026-01-01T00:00:00Z",
               "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 1200.0}]}]}


class Truckstop(ChargePoint):
    """A 2.0.1 station that starts a transaction when asked, and answers commands."""

    seen: list[tuple[str, dict[str, Any]]]
    hang: asyncio.Event

    @on("RequestStartTransaction")
    def on_start(self, **kw: Any) -> call_result.RequestStartTransaction:
        self.seen.append(("RequestStartTransaction", kw))
        return call_result.RequestStartTransaction(status="Accepted")

    @after("RequestStartTransaction")
    async def after_start(self, id_token: dict[str, Any], remote_start_id: int,
                          **_: Any) -> None:
        await self.call(call.TransactionEvent(
            event_type="Started", timestamp=now(), trigger_reason="RemoteStart", seq_no=0,
            transaction_info={"transaction_id": "RT-1", "remote_start_id": remote_start_id},
            id_token=id_token, evse={"id": 1, "connector_id": 1}), suppress=False)

    @on("RequestStopTransaction")
    def on_stop(self, **kw: Any) -> call_result.RequestStopTransaction:
        self.seen.append(("RequestStopTransaction", kw))
        return call_result.RequestStopTransaction(status="Accepted")

    @on("SetChargingProfile")
    def on_profile(self, **kw: Any) -> call_result.SetChargingProfile:
        self.seen.append(("SetChargingProfile", kw))
        return call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def on_clear(self, **kw: Any) -> call_result.ClearChargingProfile:
        self.seen.append(("ClearChargingProfile", kw))
        return call_result.ClearChargingProfile(status="Accepted")

    @on("GetCompositeSchedule")
    def on_composite(self, evse_id: int, duration: int, **_: Any) -> Any:
        return call_result.GetCompositeSchedule(status="Accepted", schedule={
            "evse_id": evse_id, "duration": duration, "schedule_start": now(),
            "charging_rate_unit": "A",
            "charging_schedule_period": [{"start_period": 0, "limit": 1200.0}]})

    @on("GetVariables")
    def on_get(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        return call_result.GetVariables(get_variable_result=[
            {"attribute_status": "Accepted", "attribute_value": "42",
             "component": d["component"], "variable": d["variable"]}
            for d in get_variable_data])

    @on("SetVariables")
    def on_set(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        self.seen.append(("SetVariables", {"data": set_variable_data}))
        status = "Rejected" if set_variable_data[0]["attribute_value"] == "nope-nope" else \
            "Accepted"
        return call_result.SetVariables(set_variable_result=[
            {"attribute_status": status, "component": d["component"],
             "variable": d["variable"]} for d in set_variable_data])

    @on("Reset")
    def on_reset(self, **kw: Any) -> call_result.Reset:
        self.seen.append(("Reset", kw))
        return call_result.Reset(status="Scheduled")

    @on("TriggerMessage")
    async def on_trigger(self, **kw: Any) -> call_result.TriggerMessage:
        self.seen.append(("TriggerMessage", kw))
        if kw["requested_message"] == "Heartbeat":
            await self.hang.wait()  # never answers: the backend must give up
        return call_result.TriggerMessage(status="Accepted")

    @on("UnlockConnector")
    def on_unlock(self, **kw: Any) -> call_result.UnlockConnector:
        self.seen.append(("UnlockConnector", kw))
        return call_result.UnlockConnector(status="Unlocked")


class Legacy(Cp16):
    @on("GetConfiguration")
    def on_get(self, key: list[str] | None = None, **_: Any) -> r16.GetConfiguration:
        return r16.GetConfiguration(configuration_key=[
            {"key": k, "readonly": False, "value": "60"} for k in key or ["HeartbeatInterval"]])

    @on("ChangeConfiguration")
    def on_change(self, key: str, value: str) -> r16.ChangeConfiguration:
        return r16.ChangeConfiguration(status="Accepted")

    @on("RemoteStartTransaction")
    def on_start(self, id_tag: str, **_: Any) -> r16.RemoteStartTransaction:
        return r16.RemoteStartTransaction(status="Accepted")

    @on("Reset")
    def on_reset(self, type: str) -> r16.Reset:
        assert type == "Hard"
        return r16.Reset(status="Accepted")


@pytest.fixture
async def csms(tmp_path: Path) -> Any:
    async with running_csms(make_config(tmp_path)) as server:
        yield server


def url(server: Any) -> str:
    return f"ws://127.0.0.1:{server.ocpp_port}"


async def test_api_requires_a_bearer_token(csms: Any) -> None:
    async with api(csms, token="wrong") as client:
        assert (await client.get("/api/v1/stations")).status_code == 401
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{csms.api_port}") as client:
        assert (await client.get("/api/v1/stations")).status_code == 401
        assert (await client.get("/healthz")).status_code == 200
        spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/stations/{station_id}/remote-start" in spec["paths"]


async def test_stations_and_tokens_crud(csms: Any) -> None:
    async with api(csms) as client:
        res = await client.post("/api/v1/stations", json={"id": "S-1", "password": "pw-is-long-1"})
        assert res.status_code == 201 and res.json()["has_password"]
        assert (await client.post("/api/v1/stations", json={"id": "S-1"})).status_code == 409
        bad = await client.post("/api/v1/stations", json={"id": "bad/id", "password": "x"})
        assert bad.status_code == 422 and "id" in bad.text and "password" in bad.text
        listed = (await client.get("/api/v1/stations")).json()
        assert [s["id"] for s in listed] == ["S-1"] and listed[0]["connected"] is False
        assert (await client.get("/api/v1/stations/NOPE")).status_code == 404
        res = await client.put("/api/v1/stations/S-1/password", json={"password": "new-pw-12345"})
        assert res.json() == {"id": "S-1", "pushed_to_station": False}
        assert (await client.post("/api/v1/tokens", json={"id_token": "T1"})).status_code == 201
        assert (await client.post("/api/v1/tokens/T1/block")).json()["status"] == "Blocked"
        assert (await client.post("/api/v1/tokens/NOPE/block")).status_code == 404
        tokens = (await client.get("/api/v1/tokens")).json()
    assert tokens == [{"id_token": "T1", "type": "ISO14443", "status": "Blocked",
                       "expiry": None, "group_id": None}]
    async with station(url(csms), "S-1", password="new-pw-12345") as cp:
        assert (await cp.call(BOOT, suppress=False)).status == "Accepted"


async def test_TC_F_02_CSMS_remote_start_reaches_station_and_transaction_appears(
        csms: Any) -> None:
    await provision(csms, "TS1")
    await add_token(csms, "DRIVER")
    async with station(url(csms), "TS1", Truckstop) as cp, api(csms) as client:
        cp.seen = []
        await cp.call(BOOT, suppress=False)
        res = await client.post("/api/v1/stations/TS1/remote-start",
                                json={"id_token": "DRIVER", "evse_id": 1})
        assert res.status_code == 200 and res.json()["status"] == "Accepted"
        _, kw = cp.seen[0]
        assert kw["id_token"] == {"id_token": "DRIVER", "type": "Central"}
        assert kw["remote_start_id"] == res.json()["remoteStartId"]
        for _ in range(500):  # the station sends TransactionEvent right after answering
            txs = (await client.get("/api/v1/transactions",
                                    params={"station_id": "TS1", "active": True})).json()
            if txs:
                break
            await asyncio.sleep(0.02)
        assert txs[0]["transaction_id"] == "RT-1" and txs[0]["id_token"] == "DRIVER"
        res = await client.post("/api/v1/stations/TS1/remote-stop",
                                json={"transaction_id": "RT-1"})
        assert res.json()["status"] == "Accepted"
        assert cp.seen[-1] == ("RequestStopTransaction", {"transaction_id": "RT-1"})
        metrics = (await client.get("/api/v1/metrics")).json()
    assert metrics["calls"] == {"BootNotification": 1, "TransactionEvent": 1}
    assert metrics["connected"] == 1 and metrics["handling_ms_p99"] > 0


async def test_commands_to_a_201_station(csms: Any) -> None:
    await provision(csms, "TS2")
    async with station(url(csms), "TS2", Truckstop) as cp, api(csms) as client:
        cp.seen, cp.hang = [], asyncio.Event()
        await cp.call(BOOT, suppress=False)
        base = "/api/v1/stations/TS2"
        res = await client.post(f"{base}/charging-profile",
                                json={"evse_id": 1, "charging_profile": PROFILE})
        assert res.json()["status"] == "Accepted"
        assert (await client.get(f"{base}/charging-profiles")).json()[0]["profile_id"] == 7
        res = await client.post(f"{base}/charging-profile/clear", json={"profile_id": 7})
        assert res.json()["status"] == "Accepted"
        res = await client.post(f"{base}/composite-schedule", json={"evse_id": 1})
        assert res.json()["schedule"]["chargingSchedulePeriod"][0]["limit"] == 1200.0
        res = await client.post(f"{base}/variables/get", json=[
            {"component": "OCPPCommCtrlr", "variable": "HeartbeatInterval"}])
        assert res.json()["getVariableResult"][0]["attributeValue"] == "42"
        res = await client.post(f"{base}/variables/set", json=[
            {"component": "OCPPCommCtrlr", "variable": "HeartbeatInterval", "value": "60"}])
        assert res.json()["setVariableResult"][0]["attributeStatus"] == "Accepted"
        assert (await client.post(f"{base}/reset", json={"type": "Immediate"})).json() == {
            "status": "Scheduled"}
        res = await client.post(f"{base}/trigger-message",
                                json={"requested_message": "StatusNotification", "evse_id": 1})
        assert res.json()["status"] == "Accepted"
        res = await client.post(f"{base}/unlock", json={"evse_id": 1})
        assert res.json()["status"] == "Unlocked"
        res = await client.post(f"{base}/call/Reset", json={"type": "OnIdle"})
        assert res.json() == {"status": "Scheduled"}
        # A schema-violating command is refused before it is sent.
        bad = await client.post(f"{base}/charging-profile",
                                json={"evse_id": 1, "charging_profile": {"id": "x"}})
        assert bad.status_code == 422
        # TC_A_09 / TC_A_10: a new password is stored only if the station takes it.
        res = await client.put(f"{base}/password", json={"password": "nope-nope"})
        assert res.status_code == 409
        res = await client.put(f"{base}/password", json={"password": "fresh-password-1"})
        assert res.json()["pushed_to_station"] is True
        assert cp.seen[-1][1]["data"][0]["variable"] == {"name": "BasicAuthPassword"}
        # No answer in time: 504; the station stays usable afterwards.
        res = await client.post(f"{base}/trigger-message", params={"timeout": 0.3},
                                json={"requested_message": "Heartbeat"})
        assert res.status_code == 504
        cp.hang.set()
        res = await client.post(f"{base}/unlock", json={"evse_id": 1})
        assert res.json()["status"] == "Unlocked"
    names = [a for a, _ in cp.seen]
    assert names[:3] == ["SetChargingProfile", "ClearChargingProfile", "SetVariables"]


async def test_commands_to_offline_or_legacy_stations(csms: Any) -> None:
    await provision(csms, "OLD")
    async with api(csms) as client:
        res = await client.post("/api/v1/stations/OLD/reset", json={})
        assert res.status_code == 409 and "not connected" in res.json()["detail"]
        async with station(url(csms), "OLD", Legacy) as cp:
            from ocpp.v16 import call as c16
            await cp.call(c16.BootNotification(charge_point_model="m", charge_point_vendor="v"),
                          suppress=False)
            base = "/api/v1/stations/OLD"
            res = await client.post(f"{base}/configuration/get",
                                    json={"keys": ["MeterValueSampleInterval"]})
            assert res.json()["configurationKey"][0]["key"] == "MeterValueSampleInterval"
            res = await client.post(f"{base}/variables/get", json=[
                {"component": "x", "variable": "HeartbeatInterval"}])
            assert res.json()["configurationKey"][0]["value"] == "60"
            res = await client.post(f"{base}/configuration/set",
                                    json={"key": "HeartbeatInterval", "value": "30"})
            assert res.json()["status"] == "Accepted"
            res = await client.post(f"{base}/remote-start", json={"id_token": "T", "evse_id": 1})
            assert res.json() == {"status": "Accepted"}
            assert (await client.post(f"{base}/reset", json={"type": "Immediate"})).json() == {
                "status": "Accepted"}
            res = await client.post(f"{base}/unlock", json={"evse_id": 1})  # no handler
            assert res.status_code == 502
            assert res.json()["detail"]["station_error"] == "NotImplemented"
        for _ in range(500):
            if csms.session("OLD") is None:
                break
            await asyncio.sleep(0.01)
        assert (await client.post("/api/v1/stations/OLD/reset", json={})).status_code == 409
        assert API_TOKEN  # the fixture token is what the client used


async def test_station_disconnecting_during_a_command_gives_409_at_once(csms: Any) -> None:
    await provision(csms, "TS3")
    async with api(csms) as client:
        async with station(url(csms), "TS3", Truckstop) as cp:
            cp.seen, cp.hang = [], asyncio.Event()
            await cp.call(BOOT, suppress=False)
            pending = asyncio.create_task(client.post(
                "/api/v1/stations/TS3/trigger-message", params={"timeout": 30},
                json={"requested_message": "Heartbeat"}))
            while not cp.seen:  # the command reached the station, which will never answer
                await asyncio.sleep(0.01)
            await cp._connection.close()
        res = await asyncio.wait_for(pending, 5)
    assert res.status_code == 409 and "disconnected" in res.json()["detail"]
