"""Regression tests of issue 15, station side: each numbered finding, over a real websocket
from a hostile backend (``fuzz.station_boundaries``), and the start-up validation of stored
state (a bad row is dropped with an error event, never loaded)."""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz.station_boundaries import call, linked
from ocpp_fixtures import station_config

from controller.grid import GridLimitSource
from controller.limits import LimitBook
from controller.mqtt import MqttConfig, MqttConnection
from controller.ocpp.config import OcppConfig
from controller.ocpp.smart_charging import Profiles
from controller.ocpp.v16.config_keys import ConfigKeys, standard_keys
from controller.ocpp.v201.device_model import DeviceModel, default_vars

pytestmark = pytest.mark.timeout(60)


def profile201(limit: str = "100.0", **top: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"id": 5, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
                         "chargingProfileKind": "Absolute", "chargingSchedule": [{
                             "id": 1, "chargingRateUnit": "A",
                             "startSchedule": "2026-01-05T08:00:00Z",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 0.0}]}]}
    p.update(top)
    return p


def frame(uid: str, action: str, payload: dict[str, Any], **raw: str) -> str:
    """The CALL as text, with placeholders ``"@name@"`` replaced by raw JSON fragments."""
    text = json.dumps([2, uid, action, payload])
    for name, fragment in raw.items():
        text = text.replace(f'"@{name}@"', fragment)
    return text


def nan_profile_frame(uid: str, evse: int, version: str) -> str:
    if version == "1.6":
        purpose = "ChargePointMaxProfile" if evse == 0 else "TxDefaultProfile"
        return frame(uid, "SetChargingProfile", {"connectorId": evse, "csChargingProfiles": {
            "chargingProfileId": 5, "stackLevel": 0, "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Absolute", "chargingSchedule": {
                "chargingRateUnit": "W", "startSchedule": "2026-01-05T08:00:00Z",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": "@lim@"}]}}},
            lim="NaN")
    p = profile201()
    if evse == 0:
        p["chargingProfilePurpose"] = "ChargingStationMaxProfile"
    p["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] = "@lim@"
    return frame(uid, "SetChargingProfile", {"evseId": evse, "chargingProfile": p}, lim="NaN")


def honest(version: str) -> tuple[str, dict[str, Any]]:
    if version == "1.6":
        return "GetConfiguration", {"key": ["HeartbeatInterval"]}
    return "GetVariables", {"getVariableData": [{"component": {"name": "OCPPCommCtrlr"},
                                                 "variable": {"name": "HeartbeatInterval"}}]}


FORMAT = {"2.0.1": "FormatViolation", "1.6": "FormationViolation"}


# ------------------------------------------------------------------ 1. NaN charging limit
@pytest.mark.parametrize("version", ["2.0.1", "1.6"])
@pytest.mark.parametrize("evse", [0, 1])
async def test_1_nan_limit_refused_naming_the_field_nothing_stored(
        tmp_path: Path, version: str, evse: int) -> None:
    async with linked(version, tmp_path) as (be, svc, st):
        reply = await call(be, "nan-1", nan_profile_frame("nan-1", evse, version))
        assert reply is not None and reply[:3] == [4, "nan-1", FORMAT[version]]
        assert "limit" in reply[3] and "NaN" in reply[3]
        assert svc.profiles.items == {}
        assert svc.db.execute("SELECT COUNT(*) FROM profiles").fetchone()[0] == 0
        assert st.limits.get("station", "ocpp") is None
        assert be.closes == 0


def test_1_nan_limit_refused_by_the_profile_rules_too(tmp_path: Path) -> None:
    """Profiles that do not come over the wire (a remote start's pending TxProfile, a 1.6
    translation) meet the same rule."""
    book = Profiles(sqlite3.connect(tmp_path / "p.sqlite3"), 2, [1000.0, 1000.0])
    p = {"id": 1, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
         "charging_profile_kind": "Absolute", "charging_schedule": [{
             "id": 1, "charging_rate_unit": "A", "start_schedule": "2026-01-05T08:00:00Z",
             "charging_schedule_period": [{"start_period": 0, "limit": float("nan")}]}]}
    why = book.validate(1, p)
    assert why is not None and "limit" in why and "finite" in why
    p["charging_schedule"][0]["charging_schedule_period"][0]["limit"] = float("inf")
    assert "finite" in (book.validate(1, p) or "")


def test_1_persisted_nan_profile_dropped_at_start_up_with_an_error_event(
        tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "p.sqlite3")
    Profiles(db, 2, [1000.0, 1000.0])
    good = {"id": 1, "stack_level": 0, "charging_profile_purpose": "ChargingStationMaxProfile",
            "charging_profile_kind": "Absolute", "charging_schedule": [{
                "id": 1, "charging_rate_unit": "W", "start_schedule": "2026-01-05T08:00:00Z",
                "charging_schedule_period": [{"start_period": 0, "limit": 500_000.0}]}]}
    bad = json.loads(json.dumps(good))
    bad["id"] = 2
    bad["stack_level"] = 1
    bad["charging_schedule"][0]["charging_schedule_period"][0]["limit"] = float("nan")
    with db:  # what an older version stored for the NaN SetChargingProfile of issue 15
        db.execute("INSERT INTO profiles VALUES (1, 0, ?)", (json.dumps(good),))
        db.execute("INSERT INTO profiles VALUES (2, 0, ?)", (json.dumps(bad),))
        db.execute("INSERT INTO profiles VALUES (3, 1, '{not json')")
        db.execute("INSERT INTO profiles VALUES (4, 7, ?)", (json.dumps({**good, "id": 4}),))
    with structlog.testing.capture_logs() as logged:
        book = Profiles(db, 2, [1000.0, 1000.0])
    assert sorted(book.items) == [1]
    assert [r[0] for r in db.execute("SELECT id FROM profiles")] == [1]
    dropped = [e for e in logged if e["event"] == "persisted_profile_dropped"]
    assert [e["log_level"] for e in dropped] == ["error"] * 3
    assert "limit" in dropped[0]["reason"] and "finite" in dropped[0]["reason"]
    lb = LimitBook()
    book.apply(lb, 0.0, datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    lim = lb.get("station", "ocpp")
    assert lim is not None and lim.value == 500_000.0  # the good one applies, nothing faults


# ------------------------------------------------------------------ 2. deep JSON
@pytest.mark.parametrize("version", ["2.0.1", "1.6"])
async def test_2_json_nested_5000_deep_answered_and_link_stays_open(
        tmp_path: Path, version: str) -> None:
    async with linked(version, tmp_path) as (be, _svc, _st):
        deep = "[" * 5000 + "]" * 5000
        reply = await call(be, "deep-1", frame("deep-1", "DataTransfer", {
            "vendorId": "x", "data": "@d@"}, d=deep))
        assert reply is not None and reply[:3] == [4, "deep-1", FORMAT[version]]
        assert "nested deeper" in reply[3]
        reply = await call(be, "deep-2", frame("deep-2", "DataTransfer", {
            "vendorId": "x", "data": "@d@"}, d="[" * 40 + "]" * 40))  # parses, too deep
        assert reply is not None and reply[2] == FORMAT[version]
        reply = await call(be, "-1", deep)  # no message id to read
        assert reply is not None and reply[:3] == [4, "-1", "RpcFrameworkError"]
        action, payload = honest(version)
        reply = await call(be, "ok-1", json.dumps([2, "ok-1", action, payload]))
        assert reply is not None and reply[0] == 3
        assert be.closes == 0 and be.connections == 1


# ------------------------------------------------------------------ 3. accepted though invalid
async def test_3_variables_out_of_range_rejected_201(tmp_path: Path) -> None:
    async with linked("2.0.1", tmp_path) as (be, svc, _st):
        def var(comp: str, name: str, value: str) -> dict[str, Any]:
            return {"component": {"name": comp}, "variable": {"name": name},
                    "attributeValue": value}
        data = [var("SecurityCtrlr", "BasicAuthPassword", "p" * 1000),
                var("OCPPCommCtrlr", "HeartbeatInterval", "99999999999999999999"),
                var("SmartChargingCtrlr", "LimitChangeSignificance", "1e400"),
                var("SmartChargingCtrlr", "LimitChangeSignificance", "nan"),
                var("OCPPCommCtrlr", "HeartbeatInterval", "0"),
                var("SecurityCtrlr", "BasicAuthPassword", "short"),
                var("SecurityCtrlr", "BasicAuthPassword", "valid-Password_1234"),
                var("OCPPCommCtrlr", "HeartbeatInterval", "120")]
        reply = await call(be, "sv", json.dumps([2, "sv", "SetVariables",
                                                 {"setVariableData": data}]))
        assert reply is not None and reply[0] == 3
        got = [r["attributeStatus"] for r in reply[2]["setVariableResult"]]
        assert got == ["Rejected"] * 6 + ["Accepted"] * 2
        assert svc.dm.get("SmartChargingCtrlr", "LimitChangeSignificance") == "0.05"
        assert svc.dm.get("OCPPCommCtrlr", "HeartbeatInterval") == "120"


async def test_3_configuration_out_of_range_rejected_16(tmp_path: Path) -> None:
    async with linked("1.6", tmp_path) as (be, svc, _st):
        for n, (key, value, want) in enumerate([
                ("HeartbeatInterval", "99999999999999999999", "Rejected"),
                ("HeartbeatInterval", "1e400", "Rejected"),
                ("HeartbeatInterval", "-5", "Rejected"),
                ("MeterValueSampleInterval", "٣", "Rejected"),  # not an ASCII digit
                ("AuthorizationKey", "k" * 41, "Rejected"),  # 16 to 40 characters
                ("HeartbeatInterval", "90", "Accepted")]):
            uid = f"cc-{n}"
            reply = await call(be, uid, json.dumps([2, uid, "ChangeConfiguration",
                                                    {"key": key, "value": value}]))
            assert reply is not None and reply[0] == 3 and reply[2]["status"] == want, key
        assert svc.keys.get("HeartbeatInterval") == "90"


@pytest.mark.parametrize(("where", "value", "field"), [
    ("schedule", "not-a-date", "startSchedule"),
    ("schedule", "0001-01-01T00:00:00+14:00", "startSchedule"),
    ("schedule", "2026-01-05T08:00:00", "startSchedule"),  # no UTC offset
    ("top", "garbage", "validFrom"),
])
async def test_3_bad_dates_rejected_with_reason(tmp_path: Path, where: str, value: str,
                                                field: str) -> None:
    async with linked("2.0.1", tmp_path) as (be, svc, _st):
        p = profile201()
        if where == "schedule":
            p["chargingSchedule"][0]["startSchedule"] = value
        else:
            p["validFrom"] = value
        reply = await call(be, "bd", json.dumps([2, "bd", "SetChargingProfile",
                                                 {"evseId": 1, "chargingProfile": p}]))
        assert reply is not None and reply[0] == 3, reply
        assert reply[2]["status"] == "Rejected"
        assert reply[2]["statusInfo"]["reasonCode"] == "InvalidProfile"
        assert field in reply[2]["statusInfo"]["additionalInfo"]
        assert svc.profiles.items == {}


@pytest.mark.parametrize("version", ["2.0.1", "1.6"])
async def test_3_profile_id_2_pow_63_and_negative_duration_are_property_violations(
        tmp_path: Path, version: str) -> None:
    async with linked(version, tmp_path) as (be, svc, _st):
        if version == "1.6":
            big = frame("id", "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
                "chargingProfileId": "@id@", "stackLevel": 0,
                "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Relative",
                "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": 10}]}}}, id=str(2 ** 63))
            neg = json.dumps([2, "du", "GetCompositeSchedule", {"connectorId": 1,
                                                                 "duration": -1}])
        else:
            big = frame("id", "SetChargingProfile", {"evseId": 1, "chargingProfile":
                                                     profile201(id="@id@")}, id=str(2 ** 63))
            neg = json.dumps([2, "du", "GetCompositeSchedule", {"evseId": 1, "duration": -1}])
        reply = await call(be, "id", big)
        assert reply is not None and reply[:3] == [4, "id", "PropertyConstraintViolation"]
        field = "chargingProfileId" if version == "1.6" else "chargingProfile.id"
        assert "9223372036854775808" in reply[3] and field in reply[3]
        reply = await call(be, "du", neg)
        assert reply is not None and reply[:3] == [4, "du", "PropertyConstraintViolation"]
        assert "duration" in reply[3]
        assert svc.profiles.items == {}


def test_3_persisted_variables_and_keys_validated_again_at_start_up(tmp_path: Path) -> None:
    cfg = OcppConfig(url="ws://127.0.0.1:1/ocpp", database=str(tmp_path / "o.sqlite3"),
                     password="s3cret-pass-16-chars")
    db = sqlite3.connect(cfg.database)
    variables = default_vars(cfg, station_config())
    DeviceModel(db, variables)
    with db:
        db.execute("INSERT INTO device_model VALUES ('SmartChargingCtrlr', NULL, NULL, "
                   "'LimitChangeSignificance', '', '1e400')")
        db.execute("INSERT INTO device_model VALUES ('OCPPCommCtrlr', NULL, NULL, "
                   "'HeartbeatInterval', '', '99999999999999999999')")
        db.execute("INSERT INTO device_model VALUES ('OCPPCommCtrlr', NULL, NULL, "
                   "'OfflineThreshold', '', '30')")
    with structlog.testing.capture_logs() as logged:
        dm = DeviceModel(db, variables)
    assert dm.get("SmartChargingCtrlr", "LimitChangeSignificance") == "0.05"
    assert dm.get("OCPPCommCtrlr", "HeartbeatInterval") == str(int(cfg.heartbeat_interval_s))
    assert dm.get("OCPPCommCtrlr", "OfflineThreshold") == "30"  # a valid override stays
    assert db.execute("SELECT COUNT(*) FROM device_model").fetchone()[0] == 1
    keys = standard_keys(cfg, station_config())
    ConfigKeys(db, keys)
    with db:
        db.execute("INSERT INTO v16_config VALUES ('HeartbeatInterval', '1e400')")
        db.execute("INSERT INTO v16_config VALUES ('CpoName', 'ok')")
    with structlog.testing.capture_logs() as logged16:
        ck = ConfigKeys(db, keys)
    assert ck.get("HeartbeatInterval") == str(int(cfg.heartbeat_interval_s))
    assert ck.get("CpoName") == "ok"
    assert [e["variable"] for e in logged if e["event"] == "persisted_variable_dropped"] == [
        "LimitChangeSignificance", "HeartbeatInterval"]
    assert [e["key"] for e in logged16 if e["event"] == "persisted_key_dropped"] == [
        "HeartbeatInterval"]


# ------------------------------------------------------------------ 5. grid limit at year 1
class _Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def event(self, kind: str, /, **fields: Any) -> None:
        self.items.append((kind, fields))


@pytest.mark.parametrize(("field", "value"), [
    ("issued_at", "0001-01-01T00:00:00+14:00"),
    ("issued_at", "9999-12-31T23:59:59-14:00"),
    ("limit_kw", 10 ** 400),
    ("limit_kw", 1e7),
    ("storage_kw", 2 ** 1100),
])
def test_5_grid_limit_out_of_range_rejected_with_event(field: str, value: Any) -> None:
    events = _Events()
    book = LimitBook()
    conn = MqttConnection(MqttConfig(), "ST1", version="9.9.9", wall=lambda: 1_795_000_000.0)
    grid = GridLimitSource(book, conn, fallback_w=100_000.0, events=events,
                           mono=lambda: 10.0, wall=lambda: 1_795_000_000.0)
    body: dict[str, Any] = {"id": "g1", "limit_kw": 500, "valid_for_s": 30,
                            "issued_at": "2026-11-19T09:46:40Z", "source": "ems"}
    body[field] = value
    result = grid.handle("mwc/ST1/grid/limit", json.dumps(body).encode())
    assert type(result).__name__ == "Rejected"
    assert [k for k, _ in events.items] == ["grid_limit_rejected"]
    assert events.items[0][1]["field"] == field
    assert book.get("station", "grid") is None
