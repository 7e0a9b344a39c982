"""Issue 15, ocpp_server side: one regression test per finding (6-12, and item 1's REST part).

Raw frames over real websockets against a real backend on loopback; the REST API over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from csms_fixtures import api, make_config, provision, running_csms

from ocpp_server.metrics import KNOWN_ACTIONS, UNKNOWN_ACTION
from ocpp_server.migrations import _V1, SCHEMA_VERSION
from ocpp_server.storage import SqliteRepository
from ocpp_server.throttle import CauseThrottle


@pytest.fixture
async def csms(tmp_path: Path) -> Any:
    async with running_csms(make_config(tmp_path)) as server:
        for sid, rating in (("H201", 22000.0), ("H16", 22000.0)):
            await provision(server, sid, password=None, profile=0)
            await server.repo.set_station_rating(sid, rating)
        yield server


@contextlib.asynccontextmanager
async def raw(server: Any, sid: str = "H201", proto: str = "ocpp2.0.1") -> AsyncIterator[Any]:
    async with websockets.connect(f"ws://127.0.0.1:{server.ocpp_port}/ocpp/{sid}",
                                  subprotocols=[proto], max_size=None) as ws:  # type: ignore[list-item]
        yield ws


async def ask(ws: Any, frame: str) -> list[Any]:
    await ws.send(frame)
    async with asyncio.timeout(10):
        return list(json.loads(await ws.recv()))


def ts(offset_s: float = 0.0) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def alive(ws: Any) -> None:
    assert (await ask(ws, '[2,"alive","Heartbeat",{}]'))[:2] == [3, "alive"]


# --- 6: deep JSON --------------------------------------------------------------------------
@pytest.mark.parametrize(("proto", "sid", "code"), [("ocpp2.0.1", "H201", "FormatViolation"),
                                                    ("ocpp1.6", "H16", "FormationViolation")])
async def test_6_deep_json_gets_a_callerror_and_the_connection_stays_open(
        csms: Any, proto: str, sid: str, code: str) -> None:
    async with raw(csms, sid, proto) as ws:
        for depth in (1000, 5000, 20000):
            deep = '{"vendorId":"org.mwcharge","data":' + "[" * depth + "]" * depth + "}"
            reply = await ask(ws, f'[2,"d{depth}","DataTransfer",{deep}]')
            assert reply[:3] == [4, f"d{depth}", code]
            reply = await ask(ws, "[" * depth + "]" * depth)  # no id readable
            assert reply[:3] == [4, "-1", "RpcFrameworkError"]
        await alive(ws)
        assert ws.close_code is None


# --- 7: deep payloads are not stored; later reads work --------------------------------------
async def test_7_deep_data_transfer_is_refused_and_messages_stay_readable(csms: Any) -> None:
    async with raw(csms) as ws:
        deep = "[" * 900 + "]" * 900
        reply = await ask(ws, f'[2,"m1","DataTransfer",{{"vendorId":"x","data":{deep}}}]')
        assert reply[:3] == [4, "m1", "FormatViolation"] and "deeper than" in reply[3]
        ok = "[" * 20 + "1" + "]" * 20  # deep, but within the bound: kept verbatim
        reply = await ask(ws, f'[2,"m2","DataTransfer",{{"vendorId":"x","data":{ok}}}]')
        assert reply[:2] == [3, "m2"]
    async with api(csms) as client:
        r = await client.get("/api/v1/stations/H201/messages")
    assert r.status_code == 200
    assert [m["payload"]["data"] for m in r.json()] == [json.loads(ok)]


async def test_7_rows_stored_unchecked_by_an_older_backend_do_not_break_reads(
        csms: Any) -> None:
    deep = '{"vendorId":"x","data":' + "[" * 900 + "]" * 900 + "}"
    await csms.repo._run(lambda c: c.execute(
        "INSERT INTO messages (station_id, action, payload, received_at) VALUES"
        " ('H201', 'DataTransfer', ?, '2026-01-01T00:00:00.000Z')", (deep,)))
    await csms.repo.record_message("H201", "DataTransfer", {"vendorId": "ok"})
    async with api(csms) as client:
        r = await client.get("/api/v1/stations/H201/messages")
    assert r.status_code == 200
    first, second = r.json()
    assert first["payload"] is None and "deeper than" in first["payload_error"]
    assert second["payload"] == {"vendorId": "ok"} and "payload_error" not in second


# --- 8: metrics label sets are closed --------------------------------------------------------
async def test_8_invented_action_names_share_one_metrics_label(csms: Any) -> None:
    async with raw(csms) as ws:
        for i in range(150):  # within the rate budget (burst 200)
            reply = await ask(ws, f'[2,"u{i}","Invented{i}",{{}}]')
            assert reply[2] in ("NotImplemented", "NotSupported")
        await alive(ws)
    async with api(csms) as client:
        metrics = (await client.get("/api/v1/metrics")).json()
    assert metrics["calls"] == {UNKNOWN_ACTION: 150, "Heartbeat": 1}
    assert metrics["errors"] == {UNKNOWN_ACTION: 150}
    assert set(metrics["calls"]) <= KNOWN_ACTIONS | {UNKNOWN_ACTION}


# --- 9: integers beyond storage, huge multipliers, throttled tracebacks ---------------------
async def test_9_big_integers_and_multipliers_are_constraint_violations(csms: Any) -> None:
    async with raw(csms) as ws:
        status = ('{"timestamp":"%s","connectorStatus":"Available","evseId":%d,'
                  '"connectorId":1}')
        reply = await ask(ws, f'[2,"b1","StatusNotification",{status % (ts(), 2**63)}]')
        assert reply[:3] == [4, "b1", "TypeConstraintViolation"] and "evseId" in reply[3]
        mv = ('{"evseId":1,"meterValue":[{"timestamp":"%s","sampledValue":[{"value":1,'
              '"unitOfMeasure":{"unit":"Wh","multiplier":%d}}]}]}')
        reply = await ask(ws, f'[2,"b2","MeterValues",{mv % (ts(), 309)}]')
        assert reply[:3] == [4, "b2", "PropertyConstraintViolation"] and "multiplier" in reply[3]
        tx = ('{"eventType":"Started","timestamp":"%s","triggerReason":"Authorized",'
              '"seqNo":%d,"transactionInfo":{"transactionId":"T9"}}')
        reply = await ask(ws, f'[2,"b3","TransactionEvent",{tx % (ts(), 2**63)}]')
        assert reply[:3] == [4, "b3", "TypeConstraintViolation"] and "seqNo" in reply[3]
    async with raw(csms, "H16", "ocpp1.6") as ws:
        sn = {"connectorId": 2**64, "errorCode": "NoError", "status": "Available"}
        reply = await ask(ws, json.dumps([2, "c1", "StatusNotification", sn]))
        assert reply[:3] == [4, "c1", "TypeConstraintViolation"] and "connectorId" in reply[3]
    assert csms.backend.metrics.internal_errors == 0


async def test_9_a_failing_handler_logs_one_traceback_per_cause_and_interval(
        csms: Any, monkeypatch: Any) -> None:
    async def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(csms.repo, "record_security_event", broken)
    frame = '[2,"e%d","SecurityEventNotification",{"type":"X","timestamp":"%s"}]'
    async with raw(csms) as ws:
        for i in range(50):
            assert (await ask(ws, frame % (i, ts())))[2] == "InternalError"
    # One cause: logged (with traceback) once, the other 49 counted for the next line.
    [(cause, (_, suppressed))] = csms.backend.tracebacks._seen.items()
    assert cause.startswith("SecurityEventNotification:RuntimeError@") and suppressed == 49
    assert csms.backend.metrics.internal_errors == 50


def test_9_cause_throttle_one_line_per_cause_per_interval() -> None:
    now = [0.0]
    t = CauseThrottle(interval=60, max_causes=2, clock=lambda: now[0])
    assert t.allow("a") == (True, 0)
    assert [t.allow("a")[0] for _ in range(5)] == [False] * 5
    assert t.allow("b") == (True, 0)
    now[0] = 61.0
    assert t.allow("a") == (True, 5)  # the next line says how many were suppressed
    t.allow("c")
    assert len(t._seen) == 2  # bounded: invented causes cannot grow it


# --- 10: non-ASCII Authorization header ------------------------------------------------------
@pytest.mark.parametrize("header", [b"Basic \xc3\xa9\xc3\xa9", b"Basic \xff\xfe",
                                    b"Basic " + base64.b64encode(b"\xff:\xfe"), b"Basic ==="])
async def test_10_non_ascii_authorization_is_401_with_a_reason(csms: Any, header: bytes) -> None:
    await provision(csms, "P1")  # profile 1: a password is required
    reader, writer = await asyncio.open_connection("127.0.0.1", csms.ocpp_port)
    writer.write(b"GET /ocpp/P1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ocpp2.0.1\r\n"
                 b"Authorization: " + header + b"\r\n\r\n")
    async with asyncio.timeout(10):
        response = await reader.read(4096)
    writer.close()
    assert response.startswith(b"HTTP/1.1 401")
    assert b"not valid Basic credentials" in response


# --- 11: NaN and Infinity are not JSON -------------------------------------------------------
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_11_nan_and_infinity_are_refused_not_stored(csms: Any, literal: str) -> None:
    mv = ('{"evseId":1,"meterValue":[{"timestamp":"%s","sampledValue":[{"value":%s,'
          '"measurand":"Power.Active.Import"}]}]}')
    async with raw(csms) as ws:
        reply = await ask(ws, f'[2,"n1","MeterValues",{mv % (ts(), literal)}]')
        assert reply[:3] == [4, "n1", "FormatViolation"]
        await alive(ws)
    async with raw(csms, "H16", "ocpp1.6") as ws:  # 1.6 sends decimals as strings
        text = "NaN" if literal == "NaN" else literal.replace("Infinity", "inf")
        mv16 = {"connectorId": 1, "meterValue": [{"timestamp": ts(),
                                                  "sampledValue": [{"value": text}]}]}
        frame = json.dumps([2, "n2", "MeterValues", mv16])
        reply = await ask(ws, frame)
        assert reply[:3] == [4, "n2", "PropertyConstraintViolation"] and "value" in reply[3]
    count = await csms.repo._run(
        lambda c: c.execute("SELECT COUNT(*) FROM meter_values").fetchone()[0])
    assert count == 0


# --- 12: meter value plausibility -----------------------------------------------------------
def _tx_event(seq: int, event: str, wh: float, at: str, power_w: float = 20000.0) -> str:
    payload = {"eventType": event, "timestamp": at, "triggerReason": "MeterValuePeriodic",
               "seqNo": seq, "transactionInfo": {"transactionId": "TP"},
               "evse": {"id": 1, "connectorId": 1},
               "meterValue": [{"timestamp": at, "sampledValue": [
                   {"value": wh, "measurand": "Energy.Active.Import.Register",
                    "unitOfMeasure": {"unit": "Wh"}},
                   {"value": power_w, "measurand": "Power.Active.Import",
                    "unitOfMeasure": {"unit": "W"}}]}]}
    return json.dumps([2, f"t{seq}", "TransactionEvent", payload])


async def test_12_implausible_meter_values_are_flagged_not_summed(csms: Any) -> None:
    """22 kW station: 2,146 Wh in 11 s (702 kW), a falling register, 40.6 kW of power."""
    async with raw(csms) as ws:
        t0 = -7200.0
        frames = [_tx_event(0, "Started", 1000.0, ts(t0)),
                  _tx_event(1, "Updated", 21000.0, ts(t0 + 3600)),      # 20 kW: plausible
                  _tx_event(2, "Updated", 23146.0, ts(t0 + 3611)),      # 702 kW average
                  _tx_event(3, "Updated", 20500.0, ts(t0 + 3700)),      # register fell
                  _tx_event(4, "Updated", 21400.0, ts(t0 + 3780), 40600.0),  # 40.6 kW power
                  _tx_event(5, "Ended", 40000.0, ts(t0 + 7200))]        # 19 kW: plausible
        for frame in frames:
            assert (await ask(ws, frame))[0] == 3  # stored and confirmed, flagged or not
    async with api(csms) as client:
        txs = (await client.get("/api/v1/transactions", params={"station_id": "H201"})).json()
        detail = (await client.get(f"/api/v1/transactions/{txs[0]['id']}")).json()
        metrics = (await client.get("/api/v1/metrics")).json()
    flags = [(m["measurand"], m["value"], m["flag"]) for m in detail["meter_values"]
             if m["flag"] is not None]
    assert sorted(flags) == sorted([
        ("Energy.Active.Import.Register", 23146.0, "energy_rate_over_rating"),
        ("Energy.Active.Import.Register", 20500.0, "energy_decreasing"),
        ("Power.Active.Import", 40600.0, "power_over_rating")])
    assert detail["implausible_samples"] == 3 == txs[0]["implausible_samples"]
    assert detail["energy_wh"] == 39000.0  # 40,000 − 1,000 from plausible samples only
    assert metrics["implausible_samples"] == {"energy_rate_over_rating": 1,
                                              "energy_decreasing": 1, "power_over_rating": 1}


async def test_12_v16_meter_stop_below_start_gives_no_energy(csms: Any) -> None:
    async with raw(csms, "H16", "ocpp1.6") as ws:
        start = {"connectorId": 1, "idTag": "T", "meterStart": 5000, "timestamp": ts(-600)}
        reply = await ask(ws, json.dumps([2, "s1", "StartTransaction", start]))
        stop = {"transactionId": reply[2]["transactionId"], "meterStop": 4000,
                "timestamp": ts()}
        assert (await ask(ws, json.dumps([2, "s2", "StopTransaction", stop])))[0] == 3
    async with api(csms) as client:
        tx = (await client.get(f"/api/v1/transactions/{reply[2]['transactionId']}")).json()
    assert tx["flag"] == "energy_decreasing" and tx["energy_wh"] is None


async def test_12_rating_is_set_over_the_api(csms: Any) -> None:
    async with api(csms) as client:
        r = await client.put("/api/v1/stations/H201/rating", json={"rated_power_w": 350000})
        assert r.status_code == 200
        bad = await client.put("/api/v1/stations/H201/rating", content=b'{"rated_power_w":NaN}',
                               headers={"Content-Type": "application/json"})
        assert bad.status_code == 422 and "rated_power_w" in bad.text
        r = await client.post("/api/v1/stations", json={"id": "R1", "rated_power_w": 1.2e6})
        assert r.status_code == 201 and r.json()["rated_power_w"] == 1.2e6


# --- 1 (REST part): NaN and friends never reach a station ----------------------------------
async def test_1_rest_refuses_nan_limits_and_sends_nothing(csms: Any) -> None:
    received: list[str] = []
    async with raw(csms) as ws:
        async def station() -> None:
            async for frame in ws:
                received.append(frame)
                msg = json.loads(frame)
                await ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
        task = asyncio.create_task(station())
        profile = ('{"evse_id":1,"charging_profile":{"id":1,"stackLevel":0,'
                   '"chargingProfilePurpose":"TxDefaultProfile","chargingProfileKind":'
                   '"Absolute","chargingSchedule":[{"id":1,"startSchedule":"%s",'
                   '"chargingRateUnit":"W","chargingSchedulePeriod":[{"startPeriod":0,'
                   '"limit":%s}]}]}}')
        async with api(csms) as client:
            url = "/api/v1/stations/H201/charging-profile"
            cases = [(profile % (ts(), "NaN"), "limit"), (profile % (ts(), "1e400"), "body"),
                     (profile % (ts(), "-5"), "limit"),
                     (profile % ("not-a-date", "100"), "startSchedule"),
                     (profile.replace('"id":1,"stackLevel"', f'"id":{2**63},"stackLevel"')
                      % (ts(), "100"), "id")]
            for body, field in cases:
                r = await client.post(url, content=body,
                                      headers={"Content-Type": "application/json"})
                assert r.status_code == 422 and field in r.text, (body, r.text)
            r = await client.post("/api/v1/stations/H201/composite-schedule",
                                  json={"evse_id": 1, "duration": -1})
            assert r.status_code == 422
            assert (await client.get(f"/api/v1/transactions/{2**63}")).status_code == 422
            r = await client.post(url, content=profile % (ts(), "100.0"),
                                  headers={"Content-Type": "application/json"})
            assert r.status_code == 200, r.text  # the valid one does go through
        task.cancel()
    assert [json.loads(f)[2] for f in received] == ["SetChargingProfile"]


# --- schema v2 migration --------------------------------------------------------------------
async def test_schema_v1_database_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_V1)
    conn.execute("INSERT INTO stations (id, security_profile, approved, created_at)"
                 " VALUES ('OLD', 0, 1, '2026-01-01T00:00:00.000Z')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    repo = SqliteRepository(path)
    await repo.open()
    try:
        station = await repo.get_station("OLD")
        assert station is not None and station.rated_power_w is None
        version = await repo._run(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        assert version == SCHEMA_VERSION >= 2
    finally:
        await repo.close()
