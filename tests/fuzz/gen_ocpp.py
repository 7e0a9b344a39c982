"""Seeded generators of hostile OCPP-J frames and JSON payloads (for the station client and
for ``ocpp_server``): malformed JSON, deep nesting, numbers beyond a double or beyond 32 bits,
NaN/Infinity (not JSON), wrong types, oversize strings, impossible dates, mutated valid
payloads. Everything comes from one ``random.Random``, so a seed replays a failure exactly.

Each generated CALL carries what a correct receiver answers (:class:`Case`): the frame text,
its message id (None when the id is deliberately unreadable) and the set of acceptable
answers — ``"result"`` for a CALLRESULT or a CallError code. Mutations whose correct answer
depends on the receiver's own rules accept any CALLRESULT or any CallError but InternalError.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Every CallError code of Part 4 except InternalError (a bug of ours) — and the 1.6 spellings.
ANY_CLEAN = frozenset({
    "result", "FormatViolation", "FormationViolation", "GenericError", "NotImplemented",
    "NotSupported", "OccurrenceConstraintViolation", "OccurenceConstraintViolation",
    "PropertyConstraintViolation", "ProtocolError", "RpcFrameworkError", "SecurityError",
    "TypeConstraintViolation", "MessageTypeNotSupported"})
FORMAT = frozenset({"FormatViolation", "FormationViolation"})


class Raw:
    """A JSON fragment written verbatim by :func:`dumps` (NaN, 1e400, 5,000 brackets)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:30]!r})"


def dumps(obj: Any) -> str:
    """JSON text of ``obj`` with every :class:`Raw` fragment inserted as written."""
    raws: list[str] = []

    def enc(o: Any) -> Any:
        if isinstance(o, Raw):
            raws.append(o.text)
            return f"\x00RAW{len(raws) - 1}\x00"
        if isinstance(o, dict):
            return {k: enc(v) for k, v in o.items()}
        if isinstance(o, list):
            return [enc(v) for v in o]
        return o

    text = json.dumps(enc(obj), separators=(",", ":"))
    for i, r in enumerate(raws):
        text = text.replace(json.dumps(f"\x00RAW{i}\x00"), r, 1)
    return text


def deep(n: int, rng: random.Random | None = None) -> Raw:
    """``n`` levels of nesting (arrays, or objects and arrays mixed)."""
    if rng is None or rng.random() < 0.5:
        return Raw("[" * n + "]" * n)
    opens = "".join(rng.choice(("[", '{"a":')) for _ in range(n))
    closes = "".join("]" if c == "[" else "}" for c in reversed(opens.replace('{"a":', "{")))
    return Raw(opens + "0" + closes)


NOT_JSON_NUMBERS = (Raw("NaN"), Raw("Infinity"), Raw("-Infinity"))
HUGE_NUMBERS = (Raw("1e400"), Raw("-1e400"), Raw("1" * 400 + ".5"))
BIG_INTS = (2 ** 31, 2 ** 63, 2 ** 64 + 7, -(2 ** 31) - 1, -(2 ** 63), 10 ** 30)
ODD_NUMBERS = (-1, -0.0, 0, 1e308, -1e308, 5e-324, 0.1, 2 ** 31 - 1, 1.5, 3.0)
BAD_DATES = ("not-a-date", "garbage", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
             "2026-02-30T00:00:00Z", "2026-01-01T25:00:00Z", "2026-01-01", "", "T",
             "2026-01-01T00:00:00", "+275760-09-13T00:00:00Z", "2026-01-01T00:00:00+99:00")
ODD_STRINGS = ("", " ", "\u0000", "\ud800", "é" * 50, "x" * 41, "x" * 1001, "x" * 70_000,
               "<script>", "Accepted\n", "ÿ" * 36, "%s%n", "../../etc/passwd")


def hostile_value(rng: random.Random) -> Any:
    """One value a field should never accept (or at least never crash on)."""
    pick = rng.randrange(9)
    if pick == 0:
        return rng.choice(NOT_JSON_NUMBERS)
    if pick == 1:
        return rng.choice(HUGE_NUMBERS)
    if pick == 2:
        return rng.choice(BIG_INTS)
    if pick == 3:
        return rng.choice(ODD_NUMBERS)
    if pick == 4:
        return rng.choice(BAD_DATES)
    if pick == 5:
        return rng.choice(ODD_STRINGS)
    if pick == 6:
        return rng.choice((None, True, False, [], {}, [1, 2], {"x": 1}, [[[]]]))
    if pick == 7:
        return deep(rng.choice((33, 100, 900, 1000, 5000)), rng)
    return {"nested": [hostile_value(rng)]}


def _paths(obj: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*at, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*at, i))
    return out


def _copy(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return obj


def mutate(rng: random.Random, payload: dict[str, Any]) -> tuple[Any, str]:
    """A mutated copy of ``payload`` and what was done (for a failure message)."""
    p = _copy(payload)
    paths = [x for x in _paths(p) if x]
    op = rng.randrange(5)
    if op == 0 or not paths:
        key = rng.choice(("unknownField", "customData", "x" * 60, ""))
        p[key] = hostile_value(rng)
        return p, f"added {key[:20]!r}"
    path = rng.choice(paths)
    if op == 1:
        parent = p
        for q in path[:-1]:
            parent = parent[q]
        del parent[path[-1]]
        return p, f"deleted {path}"
    if op == 2:
        leaf = rng.choice([x for x in paths if not isinstance(_get(p, x), dict | list)] or paths)
        return _set(p, leaf, hostile_value(rng)), f"replaced {leaf}"
    if op == 3:
        return _set(p, path, hostile_value(rng)), f"replaced {path}"
    return _set(p, path, rng.choice(([], {}, "", 0))), f"emptied {path}"


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _insert(rng: random.Random, payload: dict[str, Any], value: Any) -> tuple[Any, str]:
    """``payload`` with ``value`` at a random place (a leaf replaced, or a new field)."""
    p = _copy(payload)
    leaves = [x for x in _paths(p) if x and not isinstance(_get(p, x), dict | list)]
    if leaves and rng.random() < 0.8:
        path = rng.choice(leaves)
        return _set(p, path, value), f"{path} = {value!r}"
    p["customData"] = {"vendorId": "fuzz", "v": value}
    return p, f"customData.v = {value!r}"


@dataclass(frozen=True, slots=True)
class Case:
    """One frame for the receiver and the answers a correct one may give."""

    frame: str | bytes
    uid: str | None  # None: the id cannot be read (the answer carries "-1")
    expect: frozenset[str]
    what: str


class Generator:
    """Hostile CALLs built from valid ``templates`` (action → payload factory)."""

    def __init__(self, templates: dict[str, Callable[[random.Random], dict[str, Any]]],
                 seed: int) -> None:
        self.templates = templates
        self.rng = random.Random(seed)
        self.n = 0

    def uid(self) -> str:
        self.n += 1
        return f"fz{self.n}-{self.rng.randrange(10 ** 6)}"

    def case(self) -> Case:
        """The next case; the mix favours payload faults over frame faults."""
        rng = self.rng
        action = rng.choice(sorted(self.templates))
        payload = self.templates[action](rng)
        uid = self.uid()
        kind = rng.choices(("valid", "mutated", "nan", "huge", "bigint", "deep", "frame",
                            "unreadable", "unknown", "binary"),
                           (10, 40, 8, 5, 8, 8, 8, 5, 4, 4))[0]
        if kind == "valid":
            return Case(dumps([2, uid, action, payload]), uid, frozenset({"result"}),
                        f"valid {action}")
        if kind == "mutated":
            p, what = mutate(rng, payload)
            return Case(dumps([2, uid, action, p]), uid, ANY_CLEAN, f"{action}: {what}")
        if kind in ("nan", "huge", "bigint", "deep"):
            value = {"nan": lambda: rng.choice(NOT_JSON_NUMBERS),
                     "huge": lambda: rng.choice(HUGE_NUMBERS),
                     "bigint": lambda: rng.choice(BIG_INTS[:5]),
                     "deep": lambda: deep(rng.choice((40, 500, 999, 1000, 5000)), rng)}[kind]()
            p, what = _insert(rng, payload, value)
            expect = FORMAT if kind in ("nan", "deep") else frozenset(
                {"PropertyConstraintViolation"})
            return Case(dumps([2, uid, action, p]), uid, expect, f"{action}: {what}")
        if kind == "frame":
            return self._bad_frame(uid, action, payload)
        if kind == "unreadable":
            frame = rng.choice(("not json{", "", "[", "{}", "[2]", "null", "[]", "[9,\"x\"]",
                                "[2,5,\"Heartbeat\",{}]", "[2,null,\"Heartbeat\",{}]",
                                dumps([2, "x" * 37, action, payload]),
                                "[" * 5000 + "]" * 5000, "\"" + "a" * 1000))
            return Case(frame, None, frozenset({"RpcFrameworkError"}), f"unreadable {frame[:30]!r}")
        if kind == "unknown":
            name = rng.choice(("FooBar", "", "x" * 200, "Heartbeat ", "__init__", "route_map"))
            return Case(dumps([2, uid, name, payload]), uid,
                        frozenset({"NotImplemented", "NotSupported"}), f"action {name[:20]!r}")
        return Case(dumps([2, uid, action, payload]).encode(), uid, frozenset({"result"}),
                    f"binary frame {action}")

    def _bad_frame(self, uid: str, action: str, payload: dict[str, Any]) -> Case:
        """A CALL whose id is readable but whose frame is wrong (FormatViolation)."""
        rng = self.rng
        text = dumps([2, uid, action, payload])
        head = f'[2,"{uid}",'
        choice = rng.randrange(5)
        if choice == 0:
            frame = text[:rng.randrange(len(head) + 1, len(text))]  # truncated after the id
        elif choice == 1:
            frame = dumps([2, uid, action])  # no payload
        elif choice == 2:
            frame = dumps([2, uid, action, payload, "extra"])
        elif choice == 3:
            frame = dumps([2, uid, action, [payload]])  # payload not an object
        else:
            frame = head + '"' + action + '",{"a":}]'
        return Case(frame, uid, FORMAT, f"bad frame {frame[:40]!r}")


# ------------------------------------------------------------------ valid CSMS → station CALLs
def _profile201(rng: random.Random) -> dict[str, Any]:
    purpose = rng.choice(("TxDefaultProfile", "ChargingStationMaxProfile"))
    unit = rng.choice(("A", "W"))
    return {"id": rng.randrange(1, 50), "stackLevel": rng.randrange(0, 10),
            "chargingProfilePurpose": purpose, "chargingProfileKind": "Absolute",
            "chargingSchedule": [{"id": 1, "chargingRateUnit": unit,
                                  "startSchedule": "2026-01-05T08:00:00Z",
                                  "chargingSchedulePeriod": [
                                      {"startPeriod": 0, "limit": float(rng.randrange(1, 900))},
                                      {"startPeriod": 600, "limit": 100.5}]}]}


def templates201(guns: int = 2) -> dict[str, Callable[[random.Random], dict[str, Any]]]:
    """Valid OCPP 2.0.1 CALLs a CSMS sends to a station (no Reset: it ends the link)."""
    def evse(rng: random.Random) -> int:
        return rng.randrange(1, guns + 1)

    def set_profile(rng: random.Random) -> dict[str, Any]:
        p = _profile201(rng)
        e = 0 if p["chargingProfilePurpose"] == "ChargingStationMaxProfile" else evse(rng)
        return {"evseId": e, "chargingProfile": p}

    var = ({"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
           {"component": {"name": "SmartChargingCtrlr"},
            "variable": {"name": "LimitChangeSignificance"}},
           {"component": {"name": "TxCtrlr"}, "variable": {"name": "EVConnectionTimeOut"}})
    values = {"HeartbeatInterval": "60", "LimitChangeSignificance": "0.1",
              "EVConnectionTimeOut": "30"}

    def set_vars(rng: random.Random) -> dict[str, Any]:
        v = rng.choice(var)
        return {"setVariableData": [{**_copy(v), "attributeValue":
                                     values[v["variable"]["name"]]}]}

    return {
        "SetChargingProfile": set_profile,
        "GetCompositeSchedule": lambda r: {"duration": r.randrange(0, 86_400),
                                           "evseId": r.randrange(0, guns + 1)},
        "ClearChargingProfile": lambda r: {"chargingProfileId": r.randrange(1, 50)},
        "GetChargingProfiles": lambda r: {"requestId": r.randrange(1000),
                                          "chargingProfile": {"chargingProfilePurpose":
                                                              "TxDefaultProfile"}},
        "SetVariables": set_vars,
        "GetVariables": lambda r: {"getVariableData": [_copy(r.choice(var))]},
        "GetBaseReport": lambda r: {"requestId": r.randrange(1000),
                                    "reportBase": "ConfigurationInventory"},
        "ChangeAvailability": lambda r: {"operationalStatus": "Operative",
                                         "evse": {"id": evse(r)}},
        "RequestStopTransaction": lambda r: {"transactionId": f"tx-{r.randrange(100)}"},
        "TriggerMessage": lambda r: {"requestedMessage": r.choice(
            ("Heartbeat", "StatusNotification")), "evse": {"id": evse(r)}},
        "UnlockConnector": lambda r: {"evseId": evse(r), "connectorId": 1},
        "DataTransfer": lambda r: {"vendorId": "com.example", "data": {"n": r.random()}},
        "ClearCache": lambda r: {},
        "GetTransactionStatus": lambda r: {},
    }


def templates16(guns: int = 2) -> dict[str, Callable[[random.Random], dict[str, Any]]]:
    """Valid OCPP 1.6J CALLs a central system sends to a charge point (no Reset)."""
    def conn(rng: random.Random) -> int:
        return rng.randrange(1, guns + 1)

    def set_profile(rng: random.Random) -> dict[str, Any]:
        purpose = rng.choice(("TxDefaultProfile", "ChargePointMaxProfile"))
        return {"connectorId": 0 if purpose == "ChargePointMaxProfile" else conn(rng),
                "csChargingProfiles": {
                    "chargingProfileId": rng.randrange(1, 50), "stackLevel": rng.randrange(10),
                    "chargingProfilePurpose": purpose, "chargingProfileKind": "Absolute",
                    "chargingSchedule": {"chargingRateUnit": rng.choice(("A", "W")),
                                         "startSchedule": "2026-01-05T08:00:00Z",
                                         "chargingSchedulePeriod": [
                                             {"startPeriod": 0,
                                              "limit": float(rng.randrange(1, 900))}]}}}

    keys = {"HeartbeatInterval": "60", "MeterValueSampleInterval": "30",
            "LocalPreAuthorize": "true", "CpoName": "fuzz"}
    return {
        "ChangeConfiguration": lambda r: dict(zip(("key", "value"), r.choice(
            sorted(keys.items())), strict=True)),
        "GetConfiguration": lambda r: {"key": [r.choice(sorted(keys))]},
        "SetChargingProfile": set_profile,
        "ClearChargingProfile": lambda r: {"id": r.randrange(1, 50)},
        "GetCompositeSchedule": lambda r: {"connectorId": r.randrange(0, guns + 1),
                                           "duration": r.randrange(0, 86_400)},
        "RemoteStopTransaction": lambda r: {"transactionId": r.randrange(1, 100)},
        "TriggerMessage": lambda r: {"requestedMessage": r.choice(
            ("Heartbeat", "StatusNotification")), "connectorId": conn(r)},
        "ChangeAvailability": lambda r: {"connectorId": conn(r), "type": "Operative"},
        "UnlockConnector": lambda r: {"connectorId": conn(r)},
        "DataTransfer": lambda r: {"vendorId": "com.example", "data": "x"},
        "ClearCache": lambda r: {},
    }
