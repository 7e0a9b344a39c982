"""ocpp_server against what independent stations do (issue 16, items 6-8).

Real uvicorn and real websockets on loopback; the stations are the ``ocpp`` package's
ChargePoint classes, behaving the way independent simulators were seen to behave.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import websockets
from csms_fixtures import PASSWORD, add_token, api, make_config, now, provision, running_csms
from csms_fixtures import station as connect
from helpers import eventually
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as r16
from ocpp.v201 import ChargePoint, call, call_result

from ocpp_server.passwords import current_hash

PROFILE = {"id": 9, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
           "chargingProfileKind": "Absolute", "chargingSchedule": [{
               "id": 1, "chargingRateUnit": "A", "startSchedule": "2026-01-01T00:00:00Z",
               "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 1500.0}]}]}


class Independent(ChargePoint):
    """A 2.0.1 station like the independent simulator: Started events without idToken,
    passwords accepted but not applied, profiles refused with a CALLERROR."""

    seen: list[tuple[str, dict[str, Any]]]

    @on("RequestStartTransaction")
    def on_start(self, **kw: Any) -> call_result.RequestStartTransaction:
        return call_result.RequestStartTransaction(status="Accepted")

    @after("RequestStartTransaction")
    async def after_start(self, remote_start_id: int, **_: Any) -> None:
        await self.call(call.TransactionEvent(
            event_type="Started", timestamp=now(), trigger_reason="RemoteStart", seq_no=0,
            transaction_info={"transaction_id": "IND-1", "remote_start_id": remote_start_id},
            evse={"id": 1, "connector_id": 1}), suppress=False)

    @on("SetVariables")
    def on_set(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        self.seen.append(("SetVariables", {"data": set_variable_data}))
        return call_result.SetVariables(set_variable_result=[
            {"attribute_status": "Accepted", "component": d["component"],
             "variable": d["variable"]} for d in set_variable_data])

    @on("GetVariables")
    def on_get(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        self.seen.append(("GetVariables", {"data": get_variable_data}))
        return call_result.GetVariables(get_variable_result=[
            {"attribute_status": "Accepted", "attribute_value": "300",
             "component": d["component"], "variable": d["variable"]}
            for d in get_variable_data])

    @on("ChangeAvailability")
    def on_availability(self, **kw: Any) -> call_result.ChangeAvailability:
        self.seen.append(("ChangeAvailability", kw))
        return call_result.ChangeAvailability(status="Accepted")

    @on("SetChargingProfile")
    def on_profile(self, **kw: Any) -> Any:
        from ocpp.exceptions import PropertyConstraintViolationError
        raise PropertyConstraintViolationError(description="unknown station in backend view")


class Legacy(Cp16):
    @on("ChangeAvailability")
    def on_availability(self, connector_id: int, type: str) -> r16.ChangeAvailability:
        assert (connector_id, type) == (2, "Inoperative")
        return r16.ChangeAvailability(status="Scheduled")


@pytest.fixture
async def csms(tmp_path: Path) -> Any:
    async with running_csms(make_config(tmp_path)) as server:
        yield server


def ws_url(server: Any) -> str:
    return f"ws://127.0.0.1:{server.ocpp_port}"


async def booted(cp: Any) -> None:
    cp.seen = []
    res = await cp.call(call.BootNotification(
        charging_station={"model": "M", "vendor_name": "Independent"}, reason="PowerUp"))
    assert res.status == "Accepted"


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    await eventually(predicate, timeout, 0.05)


async def test_TC_F_01_CSMS_remote_start_without_token_in_started_records_requested_token(
        csms: Any) -> None:
    await provision(csms, "IND")
    await add_token(csms, "REMOTE-OP-1")
    async with connect(ws_url(csms), "IND", Independent) as cp, api(csms) as client:
        await booted(cp)
        res = await client.post("/api/v1/stations/IND/remote-start",
                                json={"id_token": "REMOTE-OP-1", "evse_id": 1})
        assert res.status_code == 200 and res.json()["status"] == "Accepted"

        async def recorded() -> bool:
            txs = (await client.get("/api/v1/transactions",
                                    params={"station_id": "IND"})).json()
            return bool(txs) and txs[0]["id_token"] is not None

        await wait_for(recorded)
        tx = (await client.get("/api/v1/transactions", params={"station_id": "IND"})).json()[0]
        assert tx["transaction_id"] == "IND-1" and tx["id_token"] == "REMOTE-OP-1"
        # A token the station reports later wins over the requested one (it is the truth).
        await cp.call(call.TransactionEvent(
            event_type="Updated", timestamp=now(), trigger_reason="Authorized", seq_no=1,
            transaction_info={"transaction_id": "IND-1"}, evse={"id": 1, "connector_id": 1},
            id_token={"id_token": "TRUCK-OWN", "type": "Central"}), suppress=False)
        tx = (await client.get("/api/v1/transactions", params={"station_id": "IND"})).json()[0]
        assert tx["id_token"] == "TRUCK-OWN"


async def test_TC_A_09_CSMS_password_kept_until_station_logs_in_with_new(csms: Any) -> None:
    await provision(csms, "ROT")
    new = "rotated-password-1234"
    async with connect(ws_url(csms), "ROT", Independent) as cp, api(csms) as client:
        await booted(cp)
        res = await client.put("/api/v1/stations/ROT/password", json={"password": new})
        assert res.status_code == 200 and res.json()["pushed_to_station"]
        assert cp.seen[-1][1]["data"][0]["attribute_value"] == new
    # The station said Accepted but kept its old credentials: it is still admitted.
    async with connect(ws_url(csms), "ROT", Independent) as cp:
        await booted(cp)
    stored = (await csms.repo.get_station("ROT")).password_hash
    assert "," in stored  # both still valid
    async with connect(ws_url(csms), "ROT", Independent, password=new) as cp:
        await booted(cp)
    # Logged in with the new one: the old one is retired.
    assert (await csms.repo.get_station("ROT")).password_hash == current_hash(stored)
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(ws_url(csms), "ROT", Independent, password=PASSWORD):
            pass
    assert refused.value.response.status_code == 401


async def test_password_set_without_push_replaces_at_once(csms: Any) -> None:
    await provision(csms, "NP")
    async with api(csms) as client:
        res = await client.put("/api/v1/stations/NP/password",
                               json={"password": "operator-set-pw-1", "push": False})
        assert res.status_code == 200 and not res.json()["pushed_to_station"]
    assert "," not in (await csms.repo.get_station("NP")).password_hash
    with pytest.raises(websockets.InvalidStatus):
        async with connect(ws_url(csms), "NP", Independent):
            pass


async def test_TC_G_03_05_CSMS_change_availability_over_rest(csms: Any) -> None:
    await provision(csms, "AV")
    await provision(csms, "AV16")
    async with connect(ws_url(csms), "AV", Independent) as cp, api(csms) as client:
        await booted(cp)
        res = await client.post("/api/v1/stations/AV/availability",
                                json={"operative": False, "evse_id": 1})
        assert res.status_code == 200 and res.json() == {"status": "Accepted"}
        assert cp.seen[-1] == ("ChangeAvailability", {"operational_status": "Inoperative",
                                                      "evse": {"id": 1}})
        res = await client.post("/api/v1/stations/AV/availability", json={"operative": True})
        assert res.status_code == 200
        assert cp.seen[-1] == ("ChangeAvailability", {"operational_status": "Operative"})
        bad = await client.post("/api/v1/stations/AV/availability", json={"evse_id": 1})
        assert bad.status_code == 422 and "operative" in bad.text
    async with connect(ws_url(csms), "AV16", Legacy) as cp16, api(csms) as client:
        await cp16.call(call16.BootNotification(charge_point_model="M",
                                                charge_point_vendor="V"))
        res = await client.post("/api/v1/stations/AV16/availability",
                                json={"operative": False, "connector_id": 2})
        assert res.status_code == 200 and res.json() == {"status": "Scheduled"}


async def test_TC_B_06_CSMS_configuration_get_on_201_maps_to_get_variables(csms: Any) -> None:
    await provision(csms, "CFG")
    async with connect(ws_url(csms), "CFG", Independent) as cp, api(csms) as client:
        await booted(cp)
        base = "/api/v1/stations/CFG/configuration"
        res = await client.post(f"{base}/get",
                                json={"keys": ["OCPPCommCtrlr.HeartbeatInterval"]})
        assert res.status_code == 200
        assert res.json()["getVariableResult"][0]["attributeValue"] == "300"
        assert cp.seen[-1][1]["data"] == [{"component": {"name": "OCPPCommCtrlr"},
                                           "variable": {"name": "HeartbeatInterval"}}]
        res = await client.post(f"{base}/get", json={"keys": ["HeartbeatInterval"]})
        assert res.status_code == 422 and "Component.Variable" in res.json()["detail"]
        res = await client.post(f"{base}/get", json={})
        assert res.status_code == 422 and "GetBaseReport" in res.json()["detail"]
        res = await client.post(f"{base}/set",
                                json={"key": "OCPPCommCtrlr.HeartbeatInterval", "value": "60"})
        assert res.status_code == 200
        assert res.json()["setVariableResult"][0]["attributeStatus"] == "Accepted"


async def test_charging_profile_refused_with_callerror_is_recorded(csms: Any) -> None:
    await provision(csms, "CP")
    async with connect(ws_url(csms), "CP", Independent) as cp, api(csms) as client:
        await booted(cp)
        res = await client.post("/api/v1/stations/CP/charging-profile",
                                json={"evse_id": 1, "charging_profile": PROFILE})
        assert res.status_code == 502
        assert res.json()["detail"]["station_error"] == "PropertyConstraintViolation"
        profiles = (await client.get("/api/v1/stations/CP/charging-profiles")).json()
        assert len(profiles) == 1
        assert profiles[0]["status"] == "CallError PropertyConstraintViolation"
        # A request the schema refuses never leaves, so nothing is recorded for it.
        res = await client.post("/api/v1/stations/CP/charging-profile",
                                json={"evse_id": 1, "charging_profile": {"id": 1}})
        assert res.status_code == 422
        assert len((await client.get("/api/v1/stations/CP/charging-profiles")).json()) == 1


async def _mwc_csms(tmp_path: Path, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocpp_server", "--db", str(tmp_path / "cli.db"), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "MWC_CSMS_LOG_LEVEL": "WARNING"})
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_token_list_unblock_and_station_created_at(tmp_path: Path) -> None:
    rc, out, _ = await _mwc_csms(tmp_path, "station", "add", "CLI-1", "--profile", "0")
    assert rc == 0 and json.loads(out)["created_at"]
    assert (await _mwc_csms(tmp_path, "token", "add", "TRUCK-1"))[0] == 0
    assert (await _mwc_csms(tmp_path, "token", "block", "TRUCK-1"))[0] == 0
    rc, out, _ = await _mwc_csms(tmp_path, "token", "list")
    assert rc == 0 and json.loads(out)["status"] == "Blocked"
    rc, out, _ = await _mwc_csms(tmp_path, "token", "unblock", "TRUCK-1")
    assert rc == 0 and json.loads(out) == {"id_token": "TRUCK-1", "status": "Accepted"}
    rc, out, _ = await _mwc_csms(tmp_path, "token", "list")
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["Accepted"]
    rc, _, err = await _mwc_csms(tmp_path, "token", "unblock", "NOPE")
    assert rc == 1 and "unknown token 'NOPE'" in err


async def test_cli_station_show_and_password_match_rest(tmp_path: Path) -> None:
    from ocpp_server.passwords import verify_password
    from ocpp_server.storage import SqliteRepository

    assert (await _mwc_csms(tmp_path, "station", "add", "CLI-2"))[0] == 0
    rc, out, _ = await _mwc_csms(tmp_path, "station", "show", "CLI-2")
    shown = json.loads(out)
    assert rc == 0 and shown["id"] == "CLI-2" and not shown["has_password"]
    assert "password_hash" not in out
    rc, out, _ = await _mwc_csms(tmp_path, "station", "password", "CLI-2", "--password-stdin",
                                 stdin=b"set-by-the-cli-1\n")
    assert rc == 0 and json.loads(out) == {"id": "CLI-2", "pushed_to_station": False}
    repo = SqliteRepository(tmp_path / "cli.db")
    await repo.open()
    try:
        stored = (await repo.get_station("CLI-2")).password_hash
    finally:
        await repo.close()
    assert verify_password("set-by-the-cli-1", stored)
    rc, _, err = await _mwc_csms(tmp_path, "station", "password", "NOPE", "--password-stdin",
                                 stdin=b"whatever-long-1\n")
    assert rc == 1 and "unknown station 'NOPE'" in err
    rc, _, err = await _mwc_csms(tmp_path, "station", "password", "CLI-2")
    assert rc == 2 and "--password-env" in err


async def test_rest_station_add_returns_created_at(csms: Any) -> None:
    async with api(csms) as client:
        res = await client.post("/api/v1/stations", json={"id": "NEW-1", "security_profile": 0})
        assert res.status_code == 201 and res.json()["created_at"]
