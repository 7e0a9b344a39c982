"""Checks every value that enters from outside must pass before anything else sees it.

JSON Schema (``validation.py``) checks shape and types, but not what breaks us later: Python
parses ``NaN``, ``Infinity`` and ``1e400`` as floats (not JSON, stored as NULL by SQLite),
integers of any size (SQLite stores at most 2^63 - 1), arbitrarily deep nesting (a recursion
error when the stored payload is read back), lone surrogates (not encodable as UTF-8) and
U+0000 (PostgreSQL text cannot hold it).
``parse_json`` and ``check_tree`` close those holes, for incoming frames (``session.py``) and
for what the REST API sends to a station (``Session.call_raw``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from typing import Any

MAX_DEPTH = 32  # deepest real OCPP payload is ~8 levels; DataTransfer data gets the rest
INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # OCPP 2.0.1 Part 2 §2.1: integer is 32 bit signed
MULTIPLIER_RANGE = (-24, 24)  # UnitOfMeasure.multiplier: the SI prefixes, yocto .. yotta

# OCPP strings are printable text; PostgreSQL cannot store U+0000 in text at all, so both
# engines refuse it here rather than one storing it and the other failing (InternalError).
_NUL = "string contains U+0000 (OCPP strings are printable text)"
_MID = re.compile(r'\s*\[\s*[234]\s*,\s*"([^"\\]{1,36})"')


class InvalidInput(ValueError):
    """A value from outside that we refuse; ``field`` names it (JSON path), ``kind`` says why.

    ``kind`` is the OCPP error family: ``type`` (TypeConstraintViolation), ``range``
    (PropertyConstraintViolation) or ``format`` (FormatViolation).
    """

    def __init__(self, field: str, kind: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.kind, self.message = field, kind, message


class NotJson(ValueError):
    """The frame is not strict JSON; ``message_id`` is what could be read of it, else "-1"."""

    def __init__(self, message_id: str, reason: str) -> None:
        super().__init__(reason)
        self.message_id, self.reason = message_id, reason


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of the float range")
    return value


def message_id_of(raw: str | bytes) -> str:
    """The messageId of a frame we could not parse, when its head is readable; else "-1"."""
    head = raw[:80].decode("utf-8", "replace") if isinstance(raw, bytes) else raw[:80]
    m = _MID.match(head)
    return m[1] if m else "-1"


def parse_json(raw: str | bytes) -> Any:
    """Strict JSON: no NaN/Infinity, finite floats only, bounded nesting; raises NotJson."""
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise NotJson(message_id_of(raw), f"JSON nested deeper than {MAX_DEPTH}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        reason = str(exc) if "JSON" in str(exc) or "range" in str(exc) else "not valid JSON"
        where = _locate(raw)
        raise NotJson(message_id_of(raw), f"{where}: {reason}"[:160] if where
                      else reason[:120]) from None


def _locate(raw: str | bytes) -> str | None:
    """Where a frame Python's lenient parser reads holds NaN/Infinity: the field's path."""
    try:
        value = json.loads(raw)
    except Exception:  # not even lenient JSON: nothing to point at
        return None
    if isinstance(value, list) and len(value) == 4 and isinstance(value[3], dict):
        value = value[3]  # a CALL: name the field inside its payload
    try:
        check_tree(value)
    except InvalidInput as exc:
        return exc.field
    return None


def _path(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "payload"


def _clean(value: Any) -> bool:
    """The hot path of ``check_tree`` (every CALL): True when nothing is wrong; no paths kept."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        t = type(node)
        if t is dict:
            if depth >= MAX_DEPTH:
                return False
            for k, v in node.items():
                if type(k) is not str or "\x00" in k or (k == "multiplier" and type(v) is int and
                                          not MULTIPLIER_RANGE[0] <= v <= MULTIPLIER_RANGE[1]):
                    return False
                push((v, depth + 1))
        elif t is list:
            if depth >= MAX_DEPTH:
                return False
            for v in node:
                push((v, depth + 1))
        elif t is int:
            if not INT_MIN <= node <= INT_MAX:
                return False
        elif t is float:
            if not math.isfinite(node):
                return False
        elif t is str:
            if "\x00" in node:
                return False
            if not node.isascii():
                try:
                    node.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif node is not None and t is not bool:
            return False  # subclasses and anything else: let the slow path judge
    return True


def check_tree(value: Any, root: str = "") -> None:
    """Raise InvalidInput for the first value we cannot store or compute with.

    Iterative (no recursion, whatever the depth): nesting deeper than ``MAX_DEPTH``, an
    integer outside 32 bits, a non-finite float, a string with lone surrogates or U+0000, a
    non-string key or one with U+0000, a ``multiplier`` outside ``MULTIPLIER_RANGE``.
    """
    if _clean(value):
        return
    stack: list[tuple[Any, list[str | int]]] = [(value, [root] if root else [])]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_DEPTH + (1 if root else 0):
            raise InvalidInput(_path(path), "format", f"nested deeper than {MAX_DEPTH}")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise InvalidInput(_path(path), "type", "object keys must be strings")
                if "\x00" in k:
                    raise InvalidInput(_path(path), "range", _NUL)
                if k == "multiplier" and isinstance(v, int) and not isinstance(v, bool) and \
                        not MULTIPLIER_RANGE[0] <= v <= MULTIPLIER_RANGE[1]:
                    raise InvalidInput(_path([*path, k]), "range",
                                       f"{v} is outside {MULTIPLIER_RANGE}")
                stack.append((v, [*path, k]))
        elif isinstance(node, list):
            stack.extend((v, [*path, i]) for i, v in enumerate(node))
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not INT_MIN <= node <= INT_MAX:
                raise InvalidInput(_path(path), "type",
                                   f"integer {str(node)[:24]} is outside 32 bits")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise InvalidInput(_path(path), "range", f"{node} is not a finite number")
        elif isinstance(node, str) and "\x00" in node:
            raise InvalidInput(_path(path), "range", _NUL)
        elif isinstance(node, str) and not node.isascii():
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput(_path(path), "format",
                                   "string is not valid Unicode (lone surrogate)") from None


def parse_timestamp(value: str) -> _dt.datetime:
    """An ISO 8601 timestamp as aware UTC; naive ones are UTC. ValueError if not one.

    Also refuses what parses but cannot be converted (``0001-01-01T00:00:00+14:00``).
    """
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("not an ISO 8601 date-time")
    dt = _dt.datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.UTC)
    try:
        return dt.astimezone(_dt.UTC)
    except OverflowError:
        raise ValueError("date-time out of range") from None


def is_timestamp(value: Any) -> bool:
    """The ``date-time`` format for the schema validator (lenient about zones)."""
    try:
        parse_timestamp(value)
    except (ValueError, TypeError):
        return False
    return True


_NON_NEGATIVE = frozenset({"limit", "duration", "minChargingRate", "numberPhases",
                           "startPeriod", "stackLevel"})
_DATES = frozenset({"startSchedule", "validFrom", "validTo", "expiryDateTime", "expiryDate",
                    "retrieveDateTime", "retrieveDate", "startTime", "stopTime", "timestamp"})


def check_outgoing(payload: Any) -> None:
    """What we send a station: ``check_tree`` plus the rules its schema cannot say.

    Charging limits, durations, periods and stack levels are never negative; date-times
    parse. Raises InvalidInput naming the first offending field.
    """
    check_tree(payload)
    stack: list[tuple[Any, str]] = [(payload, "payload")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                here = f"{path}.{k}"
                if k in _NON_NEGATIVE and isinstance(v, int | float) and \
                        not isinstance(v, bool) and v < 0:
                    raise InvalidInput(here, "range", f"{v} is negative")
                if k in _DATES and isinstance(v, str) and not is_timestamp(v):
                    raise InvalidInput(here, "format", f"{v[:40]!r} is not an ISO 8601 date-time")
                stack.append((v, here))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))


def check_sampled_values(meter_values: Any, root: str) -> None:
    """Every Raw sample is a finite number once scaled (1.6 sends decimal strings).

    SignedData samples are opaque and left alone; anything else that is no finite decimal
    (``"NaN"``, ``"1e400"``, ``"abc"``) is refused rather than stored as NULL.
    """
    if not isinstance(meter_values, list):
        return
    for i, mv in enumerate(meter_values):
        samples = mv.get("sampledValue") if isinstance(mv, dict) else None
        for j, s in enumerate(samples if isinstance(samples, list) else []):
            if not isinstance(s, dict) or s.get("format") == "SignedData" or "value" not in s:
                continue
            here = f"{root}[{i}].sampledValue[{j}].value"
            uom = s.get("unitOfMeasure")
            mult = uom.get("multiplier", 0) if isinstance(uom, dict) else 0
            try:
                value = float(s["value"]) * 10.0 ** int(mult)
            except (TypeError, ValueError, OverflowError):
                raise InvalidInput(here, "range", "is not a decimal number") from None
            if not math.isfinite(value):
                raise InvalidInput(here, "range", "is not a finite number")


def load_stored(text: str) -> tuple[Any, str | None]:
    """A stored JSON payload for reading back: (value, None), or (None, why) for a row that
    an older backend stored unchecked (too deep, NaN...): one bad row must not fail a list."""
    try:
        value = parse_json(text)
        check_tree(value)
    except (NotJson, InvalidInput) as exc:
        return None, f"stored payload unreadable: {exc}"[:200]
    return value, None
