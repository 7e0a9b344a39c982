"""Seeded hostile-input generators for the backend's boundaries (``ocpp_server``).

Each generator is a plain function of a ``random.Random``, so a failing case is reproduced by
its seed and index alone. Frames are built as Python values and serialised by ``dump``, which
also writes what ``json.dumps`` refuses to (``NaN``, ``1e400``, lone surrogates, nesting
deeper than Python's recursion limit) via ``Raw`` text.

A ``Case`` says what a correct backend must do with it: answer with the frame's message id
(or ``-1`` when none can be read), with a CALLRESULT or a CALLERROR, and, when the input is
invalid whatever its position, with one of ``codes``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Raw:
    """JSON text inserted verbatim (may be invalid JSON on purpose)."""

    text: str


@dataclass
class Case:
    frame: str | bytes
    kind: str                      # generator family, for the per-family figures
    reply_id: str | None           # id the answer must carry; None: no answer expected
    codes: frozenset[str] | None = None  # allowed CALLERROR codes; None: any but InternalError
    result_ok: bool = True         # a CALLRESULT is acceptable
    notes: dict[str, Any] = field(default_factory=dict)


def dump(value: Any) -> str:
    """Serialise with ``Raw`` pass-through; containers are shallow here (no deep recursion)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def _now(offset_s: float = 0.0) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- valid templates -------------------------------------------------------------------------
def _sampled_201(r: random.Random) -> dict[str, Any]:
    return {"timestamp": _now(-r.randint(0, 3600)), "sampledValue": [
        {"value": round(r.uniform(0, 500), 1), "measurand": "Energy.Active.Import.Register",
         "unitOfMeasure": {"unit": "kWh", "multiplier": 0}},
        {"value": round(r.uniform(0, 400000), 1), "measurand": "Power.Active.Import",
         "unitOfMeasure": {"unit": "W"}}]}


def templates_201(r: random.Random) -> list[tuple[str, dict[str, Any]]]:
    evse = r.randint(0, 2)
    tx = f"TX{r.randint(1, 20)}"
    return [
        ("BootNotification", {"reason": "PowerUp", "chargingStation": {
            "model": "MCS-1", "vendorName": "mwcharge", "serialNumber": "SN1"}}),
        ("Heartbeat", {}),
        ("StatusNotification", {"timestamp": _now(), "connectorStatus": "Available",
                                "evseId": evse, "connectorId": 1}),
        ("Authorize", {"idToken": {"idToken": "TAG1", "type": "ISO14443"}}),
        ("TransactionEvent", {"eventType": r.choice(["Started", "Updated", "Ended"]),
                              "timestamp": _now(), "triggerReason": "MeterValuePeriodic",
                              "seqNo": r.randint(0, 1000),
                              "transactionInfo": {"transactionId": tx,
                                                  "chargingState": "Charging"},
                              "evse": {"id": 1, "connectorId": 1},
                              "idToken": {"idToken": "TAG1", "type": "ISO14443"},
                              "meterValue": [_sampled_201(r)]}),
        ("MeterValues", {"evseId": evse, "meterValue": [_sampled_201(r)]}),
        ("DataTransfer", {"vendorId": r.choice(["org.mwcharge", "com.other"]),
                          "messageId": "m", "data": {"a": [1, 2, {"b": "c"}]}}),
        ("NotifyReport", {"requestId": r.randint(0, 99), "generatedAt": _now(), "seqNo": 0,
                          "reportData": [{"component": {"name": "EVSE", "evse": {"id": 1}},
                                          "variable": {"name": "Power"},
                                          "variableAttribute": [{"value": "600000"}]}]}),
        ("SecurityEventNotification", {"type": "StartupOfTheDevice", "timestamp": _now()}),
        ("FirmwareStatusNotification", {"status": "Installed"}),
        ("LogStatusNotification", {"status": "Uploaded"}),
        ("NotifyChargingLimit", {"chargingLimit": {"chargingLimitSource": "EMS"}}),
    ]


def templates_16(r: random.Random) -> list[tuple[str, dict[str, Any]]]:
    conn = r.randint(0, 2)
    return [
        ("BootNotification", {"chargePointVendor": "mwcharge", "chargePointModel": "MCS-1"}),
        ("Heartbeat", {}),
        ("StatusNotification", {"connectorId": conn, "errorCode": "NoError",
                                "status": "Available", "timestamp": _now()}),
        ("Authorize", {"idTag": "TAG1"}),
        ("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 1000,
                              "timestamp": _now(-r.randint(60, 7200))}),
        ("StopTransaction", {"meterStop": r.randint(1000, 90000), "timestamp": _now(),
                             "transactionId": r.randint(1, 30), "reason": "Local",
                             "transactionData": [{"timestamp": _now(), "sampledValue": [
                                 {"value": str(r.randint(0, 90000)), "unit": "Wh"}]}]}),
        ("MeterValues", {"connectorId": conn, "transactionId": r.randint(1, 30),
                         "meterValue": [{"timestamp": _now(), "sampledValue": [
                             {"value": str(r.randint(0, 90000)), "unit": "Wh",
                              "measurand": "Energy.Active.Import.Register"}]}]}),
        ("DataTransfer", {"vendorId": "org.mwcharge", "data": "x"}),
        ("FirmwareStatusNotification", {"status": "Installed"}),
        ("DiagnosticsStatusNotification", {"status": "Uploaded"}),
    ]


# --- hostile values --------------------------------------------------------------------------
# (value, codes that must answer it wherever it sits, or None when it depends on the place)
def _deep(n: int, opener: str = "[", closer: str = "]") -> Raw:
    return Raw(opener * n + closer * n)


def _deep_obj(n: int) -> Raw:
    return Raw('{"a":' * n + "1" + "}" * n)


FORMAT = frozenset({"FormatViolation", "FormationViolation"})
TYPE = frozenset({"TypeConstraintViolation"})
PROPERTY = frozenset({"PropertyConstraintViolation"})


def hostile_values(r: random.Random) -> list[tuple[Any, frozenset[str] | None]]:
    return [
        (Raw("NaN"), FORMAT), (Raw("Infinity"), FORMAT), (Raw("-Infinity"), FORMAT),
        (Raw("1e400"), FORMAT), (Raw("-1e400"), FORMAT),
        (2**63, TYPE), (-(2**63) - 1, TYPE), (2**64 + r.randint(0, 99), TYPE),
        (10**30, TYPE), (2**31, TYPE),
        (Raw('"\\ud800"'), FORMAT), (Raw('"\\udfff x"'), FORMAT),
        (_deep(r.choice([40, 200, 900, 1000, 5000, 20000])), FORMAT),
        (_deep_obj(r.choice([40, 900, 3000])), FORMAT),
        ("x" * r.choice([0, 1, 37, 1000, 20000]), None),
        ("ü€𝄞\u0000", None), (None, None), (True, None), (-1, None), (0.1, None),
        (1e308, None), ([], None), ({}, None), ("0001-01-01T00:00:00+14:00", None),
        ("9999-12-31T23:59:59-14:00", None), ("not-a-date", None),
        (r.randint(-(2**31), 2**31 - 1), None),
    ]


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [path] if path else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _leaves(v, (*path, i))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def _delete(obj: Any, path: tuple[Any, ...]) -> None:
    for p in path[:-1]:
        obj = obj[p]
    if isinstance(obj, dict):
        del obj[path[-1]]


# --- the generator ---------------------------------------------------------------------------
def csms_case(r: random.Random, i: int, version: str) -> Case:
    """One hostile frame for a station connection of ``version`` ("2.0.1" or "1.6")."""
    mid = f"f{i}"
    pick = r.random()
    tpl = templates_201(r) if version == "2.0.1" else templates_16(r)
    action, payload = r.choice(tpl)
    if pick < 0.45:  # a hostile value at a random place of a valid payload
        value, codes = r.choice(hostile_values(r))
        leaves = _leaves(payload)
        if leaves:
            where = r.choice(leaves)
            _set(payload, where, value)
            if where[-1] == "multiplier" and codes == TYPE:  # range-checked before type
                codes = TYPE | PROPERTY
        else:
            payload["x"] = value
        return Case(dump([2, mid, action, payload]), "hostile_value", mid, codes,
                    result_ok=codes is None)
    if pick < 0.55:  # special fields: multiplier, ids, seqNo beyond storage
        field_value = r.choice([2**63, 10**20, 2**31, -(2**31) - 1])
        if version == "2.0.1":
            p = templates_201(r)[4][1]
            target = r.choice(["multiplier", "seqNo", "evseId", "connectorId"])
            if target == "multiplier":
                field_value = r.choice([309, 400, -400, 25, field_value])
                p["meterValue"][0]["sampledValue"][0]["unitOfMeasure"]["multiplier"] = field_value
            elif target == "seqNo":
                p["seqNo"] = field_value
            else:
                p["evse"]["id" if target == "evseId" else "connectorId"] = field_value
            return Case(dump([2, mid, "TransactionEvent", p]), "big_number", mid,
                        frozenset({"TypeConstraintViolation", "PropertyConstraintViolation"}),
                        result_ok=False)
        p = {"connectorId": field_value, "errorCode": "NoError", "status": "Available"}
        return Case(dump([2, mid, "StatusNotification", p]), "big_number", mid,
                    frozenset({"TypeConstraintViolation", "PropertyConstraintViolation"}),
                    result_ok=False)
    if pick < 0.62:  # a required key removed or an unknown one added
        leaves = [p for p in _leaves(payload) if not isinstance(p[-1], int)]
        if leaves and r.random() < 0.5:
            _delete(payload, r.choice(leaves))
        else:
            payload[r.choice(["zzz", "évil", "x" * 50])] = 1
        return Case(dump([2, mid, action, payload]), "shape", mid)
    if pick < 0.70:  # unknown or odd action names
        name = r.choice(["NoSuchAction", "x" * r.randint(1, 500), "Héartbeat", "",
                         f"A{r.randint(0, 10**9)}", "__proto__", "Heartbeat\u0000"])
        return Case(dump([2, mid, name, {}]), "unknown_action", mid,
                    frozenset({"NotImplemented", "NotSupported"}), result_ok=False)
    if pick < 0.78:  # deep nesting: whole frame, or inside a payload whose id is readable
        n = r.choice([100, 999, 1000, 3000, 10000, 30000])
        if r.random() < 0.5:
            return Case(_deep(n).text, "deep_frame", "-1", frozenset({"RpcFrameworkError"}),
                        result_ok=False)
        data = _deep(n, "[", "]") if r.random() < 0.5 else _deep_obj(min(n, 8000))
        frame = dump([2, mid, "DataTransfer", {"vendorId": "org.mwcharge", "data": data}])
        return Case(frame, "deep_payload", mid, FORMAT, result_ok=False)
    if pick < 0.90:  # broken framing
        variants: list[tuple[str | bytes, str | None, frozenset[str] | None]] = [
            ("not json", "-1", frozenset({"RpcFrameworkError"})),
            ("", "-1", frozenset({"RpcFrameworkError"})),
            ("[]", "-1", frozenset({"RpcFrameworkError"})),
            ('{"a":1}', "-1", frozenset({"RpcFrameworkError"})),
            (dump([2, 5, "Heartbeat", {}]), "-1", frozenset({"RpcFrameworkError"})),
            (dump([2, "x" * 37, "Heartbeat", {}]), "-1", frozenset({"RpcFrameworkError"})),
            (dump([2, mid, "Heartbeat"]), mid, frozenset({"RpcFrameworkError"})),
            (dump([2, mid, "Heartbeat", []]), mid, frozenset({"RpcFrameworkError"})),
            (dump([9, mid, "Heartbeat", {}]), mid, frozenset({"MessageTypeNotSupported"})),
            (dump([Raw("NaN"), mid, "Heartbeat", {}]), "-1", None),
            (dump([2, mid, "Heartbeat", Raw("{")]), mid, None),
            (b"\xff\xfe\x00garbage", "-1", frozenset({"RpcFrameworkError"})),
            (dump([2, mid, "Heartbeat", {}]).encode(), mid, None),  # binary frame, valid JSON
            (dump([3, mid, {}]), None, None),          # unsolicited CALLRESULT: ignored
            (dump([4, mid, "GenericError", "", {}]), None, None),  # unsolicited CALLERROR
        ]
        frame, reply, codes = r.choice(variants)
        return Case(frame, "framing", reply, codes, result_ok=codes is None)
    # the rest: valid CALLs (some state built, so later hostile ones hit real rows)
    return Case(dump([2, mid, action, payload]), "valid", mid)


# --- REST bodies -----------------------------------------------------------------------------
REST_ROUTES: list[tuple[str, str, dict[str, Any] | list[Any] | None]] = [
    ("POST", "/api/v1/stations", {"id": "NEW1", "security_profile": 0, "approved": True,
                                  "rated_power_w": 22000.0}),
    ("PUT", "/api/v1/stations/{sid}/rating", {"rated_power_w": 22000.0}),
    ("POST", "/api/v1/tokens", {"id_token": "T1", "type": "ISO14443", "status": "Accepted",
                                "expiry": "2030-01-01T00:00:00Z", "group_id": "G"}),
    ("POST", "/api/v1/stations/{sid}/charging-profile", {"evse_id": 1, "charging_profile": {
        "id": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": [{
            "id": 1, "startSchedule": "2030-01-01T00:00:00Z", "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 350000.0}]}]}}),
    ("POST", "/api/v1/stations/{sid}/charging-profile/clear", {"profile_id": 1}),
    ("POST", "/api/v1/stations/{sid}/composite-schedule", {"evse_id": 1, "duration": 60}),
    ("POST", "/api/v1/stations/{sid}/remote-start", {"id_token": "T1", "evse_id": 1}),
    ("POST", "/api/v1/stations/{sid}/remote-stop", {"transaction_id": "TX1"}),
    ("POST", "/api/v1/stations/{sid}/variables/set", [{"component": "OCPPCommCtrlr",
                                                       "variable": "HeartbeatInterval",
                                                       "value": "300"}]),
    ("POST", "/api/v1/stations/{sid}/reset", {"type": "OnIdle"}),
    ("POST", "/api/v1/stations/{sid}/trigger-message", {"requested_message": "Heartbeat",
                                                        "evse_id": 1}),
    ("POST", "/api/v1/stations/{sid}/unlock", {"evse_id": 1, "connector_id": 1}),
    ("POST", "/api/v1/stations/{sid}/call/SetChargingProfile", {"evseId": 1, "chargingProfile": {
        "id": 2, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative", "chargingSchedule": [{
            "id": 2, "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 100.0}]}]}}),
    ("GET", "/api/v1/transactions?limit=5&offset={int}", None),
    ("GET", "/api/v1/transactions/{int}", None),
    ("GET", "/api/v1/stations/{sid}/messages?limit=5&offset={int}", None),
    ("GET", "/api/v1/transactions?since={date}&until={date}", None),
]


@dataclass
class RestCase:
    method: str
    path: str
    body: bytes | None
    kind: str
    headers: dict[str, Any] = field(default_factory=dict)
    must_reject: bool = False  # the input is invalid wherever it sits: 4xx, never sent


def rest_case(r: random.Random, station_id: str) -> RestCase:
    method, path, body = r.choice(REST_ROUTES)
    hostile_int = r.choice([0, 1, -1, 2**31, 2**63, 2**64, 10**30, 7])
    hostile_date = r.choice(["0001-01-01T00:00:00%2B14:00", "9999-12-31T23:59:59-14:00",
                             "garbage", "2026-02-30", "%00", "2026-01-01T00:00:00Z"])
    path = (path.replace("{sid}", station_id).replace("{int}", str(hostile_int))
            .replace("{date}", hostile_date))
    if body is None:
        return RestCase(method, path, None, "query")
    body = json.loads(json.dumps(body))
    pick = r.random()
    if pick < 0.6:
        value, codes = r.choice(hostile_values(r))
        leaves = _leaves(body)
        if leaves:
            _set(body, r.choice(leaves), value)
        reject = codes is not None and codes != TYPE  # ints < 2^63 may be legal REST ints
        if codes == TYPE and isinstance(value, int) and abs(value) >= 2**63:
            reject = True
        return RestCase(method, path, dump(body).encode("utf-8", "surrogatepass"),
                        "hostile_value", must_reject=reject)
    if pick < 0.75:
        raw = r.choice([b"", b"not json", b"[" * 5000, b"{" * 3, b"\xff\xfe", b"null",
                        b"[]", b'{"a":NaN}', b"1e400"])
        return RestCase(method, path, raw, "broken_body")
    if pick < 0.85:  # hostile Authorization headers
        header = r.choice([b"Bearer \xc3\xa9\xff", b"Bearer " + b"x" * 5000, b"Basic ???",
                           b"Bearer", "Bearer ü".encode()])
        return RestCase(method, path, dump(body).encode(), "auth",
                        headers={"Authorization": header})
    return RestCase(method, path, dump(body).encode(), "valid")


def handshake_headers(r: random.Random) -> list[tuple[bytes, bytes]]:
    """Hostile Authorization headers for the websocket handshake."""
    return [(b"Authorization", r.choice([
        b"Basic \xc3\xa9\xc3\xa9", b"Basic \xff\xfe\xfd", b"Basic ====", b"Basic " + b"A" * 5000,
        b"Basic " + __import__("base64").b64encode(b"\xff\xfe:\xff"), b"Basic", b"Bearer x",
        b"basic " + __import__("base64").b64encode("CS1:pässwörd".encode()),
    ]))]
