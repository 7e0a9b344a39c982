"""The first check of every frame from the backend, before the ``ocpp`` library sees it.

Why: the library parses with :func:`json.loads` (NaN and Infinity accepted, no depth limit,
integers of any size) and its schemas have no ranges; a NaN limit, a 5,000-deep array or a
profile id of 2^63 used to reach the handlers (or kill the receive loop). :func:`check_frame`
parses once, bounded, and says what is wrong with the field's path as the backend spelled it,
so :class:`~controller.ocpp.common.FrameGuard` can answer the CALL with the CallError of OCPP-J
(Part 4 §4.2.3, §4.3):

- not JSON, NaN/Infinity (not JSON either), nested deeper than :data:`MAX_DEPTH` →
  ``FormatViolation`` (``RpcFrameworkError`` with message id ``"-1"`` when the id cannot be
  read);
- a number that is not finite as a double, an integer outside the 32-bit range of OCPP's
  ``integer``, or a field of :data:`FIELD_RULES` out of its range → ``PropertyConstraintViolation``.

The check is pure and allocation-bounded (an iterative walk, at most one pass per node).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

#: Deepest nesting a frame may have. The deepest OCPP 2.0.1 message (a NotifyReport with
#: customData) is under 10 levels; 32 leaves room for vendor customData.
MAX_DEPTH = 32
INT32 = (-(2 ** 31), 2 ** 31 - 1)
_MAX_INT_DIGITS = 20  # longer integer literals are not parsed at all (CPython limits 4,300)

#: Ranges of numeric fields wherever they occur in a CALL from the backend (camelCase names
#: of OCPP 2.0.1 and 1.6): (lowest, highest) inclusive; None: no bound on that side.
FIELD_RULES: dict[str, tuple[float | None, float | None]] = {
    "limit": (0.0, None), "minChargingRate": (0.0, None), "duration": (0, None),
    "startPeriod": (0, None), "evseId": (0, None), "connectorId": (0, None),
    "numberPhases": (1, 3), "phaseToUse": (1, 3), "id": (0, None),
    "chargingProfileId": (0, None), "remoteStartId": (None, None), "requestId": (None, None),
    "interval": (0, None), "retries": (0, None), "retryInterval": (0, None),
}

_PEEK = re.compile(r'\A\s*\[\s*(\d{1,3})\s*,\s*("(?:[^"\\]|\\.){0,64}")')


@dataclass(frozen=True, slots=True)
class FrameError:
    """What to answer: the message id (``"-1"`` when unreadable), code and description;
    ``msg_type`` is the frame's type (2 CALL, 3/4 a response, None: unknown)."""

    uid: str
    code: str
    text: str
    msg_type: int | None


class _NotJson:
    """A parsed NaN/Infinity literal or an over-long integer, found by the walk."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _constant(name: str) -> _NotJson:
    return _NotJson(name)


def _int(text: str) -> int | _NotJson:
    digits = text.lstrip("-")
    return _NotJson(text[:24] + "...") if len(digits) > _MAX_INT_DIGITS else int(text)


def peek(raw: str) -> tuple[int | None, str | None]:
    """(message type, message id) read from the start of an unparsable frame."""
    m = _PEEK.match(raw)
    if m is None:
        return None, None
    try:
        uid = json.loads(m.group(2))
    except ValueError:
        uid = None
    return int(m.group(1)), uid if isinstance(uid, str) else None


def _show(value: Any) -> str:
    text = value.text if isinstance(value, _NotJson) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _field_error(path: str, key: str, value: Any) -> tuple[str, str] | None:
    """(code, text) for one leaf value; None when it is acceptable."""
    if isinstance(value, _NotJson):
        if value.text.lstrip("-") in ("NaN", "Infinity"):
            return "FormatViolation", f"{path}: {value.text} is not a JSON number"
        return "PropertyConstraintViolation", (
            f"{path}: {_show(value)} is outside the 32-bit integer range")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "PropertyConstraintViolation", f"{path}: number out of the range of a decimal"
    if isinstance(value, int) and not INT32[0] <= value <= INT32[1]:
        return "PropertyConstraintViolation", (
            f"{path}: {_show(value)} is outside the 32-bit integer range")
    rule = FIELD_RULES.get(key)
    if rule is not None:
        lo, hi = rule
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            want = f">= {lo:g}" if hi is None else (
                f"<= {hi:g}" if lo is None else f"in {lo:g}..{hi:g}")
            return "PropertyConstraintViolation", f"{path}: {_show(value)} must be {want}"
    return None


def walk(payload: Any, root: str = "") -> tuple[str, str] | None:
    """The first fault in ``payload`` (depth, numbers, field ranges) as (code, text)."""
    stack: list[tuple[str, str, Any, int]] = [(root, "", payload, 0)]
    while stack:
        path, key, value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return "FormatViolation", f"{path or 'payload'}: nested deeper than {MAX_DEPTH}"
        if isinstance(value, dict):
            for k, v in value.items():
                stack.append((f"{path}.{k}" if path else str(k), str(k), v, depth + 1))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                stack.append((f"{path}[{i}]", key, v, depth + 1))
        else:
            bad = _field_error(path or "payload", key, value)
            if bad is not None:
                return bad
    return None


def check_frame(raw: str | bytes) -> tuple[list[Any] | None, FrameError | None]:
    """The parsed frame, or what to answer instead (never raises on any input)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, FrameError("-1", "RpcFrameworkError", "frame is not UTF-8 text", None)
    try:
        msg = json.loads(raw, parse_constant=_constant, parse_int=_int)
    except RecursionError:
        return None, _unreadable(raw, f"nested deeper than {MAX_DEPTH}")
    except ValueError as exc:
        return None, _unreadable(raw, f"invalid JSON: {exc}")
    if not isinstance(msg, list) or not msg or msg[0] not in (2, 3, 4) or isinstance(
            msg[0], bool):
        return None, FrameError("-1", "RpcFrameworkError",
                                "not an OCPP-J message (expected [2|3|4, id, ...])", None)
    kind = int(msg[0])
    uid = msg[1] if len(msg) > 1 and isinstance(msg[1], str) else None
    if uid is None or len(uid) > 36:
        return None, FrameError("-1", "RpcFrameworkError",
                                "message id missing, not a string or over 36 characters", kind)
    if kind == 2 and (len(msg) != 4 or not isinstance(msg[2], str)
                      or not isinstance(msg[3], dict)):
        return None, FrameError(uid, "FormatViolation",
                                "CALL must be [2, \"<id>\", \"<Action>\", {payload}]", kind)
    bad = walk(msg[3] if kind == 2 else msg[2:])
    if bad is not None:
        return None, FrameError(uid, bad[0], bad[1], kind)
    return msg, None


def _unreadable(raw: str, why: str) -> FrameError:
    kind, uid = peek(raw)
    if kind == 2 and uid is not None and len(uid) <= 36:
        return FrameError(uid, "FormatViolation", why, kind)
    return FrameError("-1", "RpcFrameworkError", why, kind)
