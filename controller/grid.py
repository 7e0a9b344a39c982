"""Grid limits from the site's energy manager (MQTT) into the station's :class:`LimitBook`.

The energy manager publishes how much power the station may draw (``docs/mqtt.md``,
``docs/schemas/grid-limit.schema.json``). Each accepted payload becomes ONE station-scope
limit in watts, ``max(0, limit_kw + storage_kw - site_load_kw) * 1000``, under key ``"grid"``
(station topic) or ``"grid_site"`` (the optional site-wide topic); the book takes the minimum
with ``"station_max"`` and every other station limit, so with both topics the more restrictive
valid limit binds. Each key has the configured fallback, which applies whenever its limit is
missing or expired — so a configured site topic that goes silent also brings the fallback.

Why a pure function (:func:`evaluate`): everything that decides whether a payload changes the
cap (parsing, ranges, staleness, duplicates, expiry arithmetic) is tested without a broker
and cannot crash the shell; :class:`GridLimitSource` only feeds it bytes and clocks and
writes the result into the book.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from controller import logs
from controller.clock import Monotonic, WallSeconds
from controller.config import MqttConfig
from controller.limits import STATION, Limit, LimitBook, LimitKey, install_grid_fallback
from controller.mqtt import EventSink, MqttConnection

KEY = LimitKey.GRID
SITE_KEY = LimitKey.GRID_SITE

_REQUIRED = ("id", "limit_kw", "valid_for_s", "issued_at", "source")
_OPTIONAL = ("storage_kw", "site_load_kw")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_MAX_TEXT = 128
#: Largest power a kW field may carry (1 GW): far above any grid connection, and the sum of
#: the fields stays a finite number of watts.
MAX_KW = 1_000_000.0


@dataclass(frozen=True, slots=True)
class PayloadRules:
    """Bounds beyond the schema's, from the configuration."""

    max_valid_for_s: float = 86_400.0
    max_clock_skew_s: float = 5.0
    max_payload_bytes: int = 4096

    @classmethod
    def from_config(cls, config: MqttConfig) -> PayloadRules:
        return cls(config.max_valid_for_s, config.max_clock_skew_s, config.max_payload_bytes)


@dataclass(frozen=True, slots=True)
class GridPayload:
    """A well-formed grid limit message (kW, seconds; ``issued_at`` in wall seconds)."""

    id: str
    limit_kw: float
    valid_for_s: float
    issued_at: float
    source: str
    storage_kw: float = 0.0
    site_load_kw: float = 0.0

    @property
    def cap_w(self) -> float:
        return max(0.0, (self.limit_kw + self.storage_kw - self.site_load_kw) * 1000.0)

    def detail(self) -> str:
        return (f"limit {self.limit_kw:g} kW + storage {self.storage_kw:g} kW"
                f" - site {self.site_load_kw:g} kW")


@dataclass(frozen=True, slots=True)
class Accepted:
    payload: GridPayload
    limit: Limit
    key: str = KEY


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a payload changed nothing; ``reason`` names the field and the value."""

    reason: str
    field: str | None = None
    id: str | None = None


class RecentIds:
    """The ids of the last ``size`` applied payloads (duplicates are rejected)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item: str) -> None:
        self._ids[item] = None
        self._ids.move_to_end(item)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)


class _Bad(Exception):
    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _reject_constant(name: str) -> float:
    raise _Bad(None, f"payload is not valid JSON: {name} is not a number")


def _number(obj: dict[str, Any], name: str, *, positive: bool,
            hi: float = math.inf) -> float:
    value = obj[name]
    rule = "a number > 0" if positive else "a number >= 0"
    if math.isfinite(hi):
        rule += f" and <= {hi:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(name, f"{name} = {_show(value)}: must be {rule}")
    try:
        v = float(value)
    except OverflowError:  # an integer beyond any double
        raise _Bad(name, f"{name} = {_show(value)}: must be {rule}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0) or v > hi:
        raise _Bad(name, f"{name} = {_show(value)}: must be {rule}")
    return v


def _text(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT:
        raise _Bad(name, f"{name} = {_show(value)}: must be a non-empty string of at most "
                         f"{_MAX_TEXT} characters")
    return value


def _time(obj: dict[str, Any], name: str) -> float:
    value = obj[name]
    bad = _Bad(name, f"{name} = {_show(value)}: must be an RFC 3339 time with a time zone, "
                     "e.g. \"2026-11-27T17:00:00Z\"")
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise bad
    try:
        t = dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00")).timestamp()
        dt.datetime.fromtimestamp(t, dt.UTC)  # a UTC time in datetime's range (years 1..9999)
    except (ValueError, OverflowError, OSError):  # hour 25; year 1 at +14:00 is year 0 in UTC
        raise bad from None
    return t


def parse_payload(raw: bytes, rules: PayloadRules = PayloadRules()) -> GridPayload:
    """The payload's fields, checked against the schema; raises ``_Bad`` with the reason."""
    if len(raw) > rules.max_payload_bytes:
        raise _Bad(None, f"payload is {len(raw)} bytes, more than {rules.max_payload_bytes}")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise _Bad(None, "payload is not UTF-8 text") from None
    except ValueError as exc:
        raise _Bad(None, f"payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise _Bad(None, "payload is not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise _Bad(None, f"payload must be a JSON object, got {type(obj).__name__} "
                         f"{_show(obj)}")
    for name in _REQUIRED:
        if name not in obj:
            raise _Bad(name, f"{name}: missing (required: {', '.join(_REQUIRED)})")
    unknown = sorted(set(obj) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise _Bad(unknown[0], f"{unknown[0]} = {_show(obj[unknown[0]])}: unknown field "
                               f"(allowed: {', '.join(_REQUIRED + _OPTIONAL)})")
    payload = GridPayload(
        id=_text(obj, "id"),
        limit_kw=_number(obj, "limit_kw", positive=False, hi=MAX_KW),
        valid_for_s=_number(obj, "valid_for_s", positive=True),
        issued_at=_time(obj, "issued_at"),
        source=_text(obj, "source"),
        storage_kw=(_number(obj, "storage_kw", positive=False, hi=MAX_KW)
                    if "storage_kw" in obj else 0.0),
        site_load_kw=(_number(obj, "site_load_kw", positive=False, hi=MAX_KW)
                      if "site_load_kw" in obj else 0.0),
    )
    if payload.valid_for_s > rules.max_valid_for_s:
        raise _Bad("valid_for_s", f"valid_for_s = {_show(obj['valid_for_s'])}: must be at most "
                                  f"{rules.max_valid_for_s:g} (configured max_valid_for_s)")
    return payload


def evaluate(raw: bytes, now_wall: float, now_mono: float, recent: RecentIds,
             rules: PayloadRules = PayloadRules(), key: str = KEY) -> Accepted | Rejected:
    """Decide what one payload does: the limit to set, or why it changes nothing.

    Pure: ``recent`` is only read (the caller adds the id once the limit is applied).
    The expiry is the payload's wall-clock end converted to the monotonic clock, and never
    later than ``valid_for_s`` from now (a publisher clock running ahead buys no extra time).
    """
    try:
        p = parse_payload(raw, rules)
    except _Bad as bad:
        return Rejected(bad.reason, bad.field,
                        _peek_id(raw) if len(raw) <= rules.max_payload_bytes else None)
    if p.id in recent:
        return Rejected(f"id = {_show(p.id)}: duplicate, a payload with this id was already "
                        "applied", "id", p.id)
    age = now_wall - p.issued_at
    if age >= p.valid_for_s:
        return Rejected(f"issued_at = {_show(_iso(p.issued_at))}: stale, issued {age:.1f} s ago "
                        f"with valid_for_s {p.valid_for_s:g}", "issued_at", p.id)
    if -age > rules.max_clock_skew_s:
        return Rejected(f"issued_at = {_show(_iso(p.issued_at))}: {-age:.1f} s in the future "
                        f"(allowed clock skew {rules.max_clock_skew_s:g} s)", "issued_at", p.id)
    remaining = min(p.valid_for_s, p.valid_for_s - age)
    limit = Limit(value=p.cap_w, source=f"{key}:{p.source}:{p.id}",
                  issued_at=now_mono, expires_at=now_mono + remaining, detail=p.detail())
    return Accepted(p, limit, key)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def _peek_id(raw: bytes) -> str | None:
    """The id of a rejected payload when one can be read, for the event."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError, _Bad):
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return value[:_MAX_TEXT] if isinstance(value, str) else None


class GridLimitSource:
    """Subscribes the grid topics on ``connection`` and keeps the book's grid keys current.

    Construct before ``connection.run()`` starts; run :meth:`run` as a task to report
    expiries (the book itself falls back on expiry without any help).
    """

    def __init__(self, book: LimitBook, connection: MqttConnection, *, fallback_w: float,
                 events: EventSink | None = None, mono: Monotonic = time.monotonic,
                 wall: WallSeconds = time.time) -> None:
        cfg = connection.config
        self.book = book
        self.events = events
        self.rules = PayloadRules.from_config(cfg)
        self._mono = mono
        self._wall = wall
        self._log = logs.get_logger("mwc.grid", station_id=connection.station_id)
        self.topics: dict[str, LimitKey] = {cfg.topic("grid_limit", connection.station_id): KEY}
        if cfg.topics.site_limit is not None:
            self.topics[cfg.topic("site_limit", connection.station_id)] = SITE_KEY
        self.recent = {key: RecentIds(cfg.recent_ids) for key in self.topics.values()}
        self.accepted = 0
        self.rejected = 0
        self._reported_expiry: dict[str, float] = {}
        for key in self.topics.values():
            install_grid_fallback(book, fallback_w, key)
        for topic in self.topics:
            connection.subscribe(topic, self.handle, qos=1)

    def handle(self, topic: str, raw: bytes) -> Accepted | Rejected:
        """One message: evaluate, then apply to the book or report the rejection."""
        key = self.topics.get(topic, KEY)
        now_wall, now_mono = self._wall(), self._mono()
        try:
            result: Accepted | Rejected = evaluate(raw, now_wall, now_mono, self.recent[key],
                                                   self.rules, key)
        except Exception as exc:  # a bug of ours: still reported, the limit stays as it was
            self._log.exception("grid_limit_evaluation_failed", topic=topic)
            result = Rejected(f"payload could not be evaluated: {type(exc).__name__}: "
                              f"{str(exc)[:120]}", None, None)
        if isinstance(result, Rejected):
            self.rejected += 1
            self._log.warning("grid_limit_rejected", topic=topic, reason=result.reason,
                              id=result.id)
            self._emit("grid_limit_rejected", topic=topic, reason=result.reason,
                       field=result.field, id=result.id)
            return result
        previous = self.book.get(STATION, key)
        was = previous.value if previous is not None and previous.active(now_mono) else None
        self.book.set(STATION, key, result.limit)
        self.recent[key].add(result.payload.id)
        self._reported_expiry.pop(key, None)
        self.accepted += 1
        expires_in = (result.limit.expires_at or now_mono) - now_mono
        self._log.info("grid_limit_applied", key=key, id=result.payload.id,
                       limit_w=result.limit.value, previous_w=was,
                       expires_in_s=round(expires_in, 3), detail=result.limit.detail)
        self._emit("grid_limit_changed", key=key, id=result.payload.id,
                   source=result.limit.source, limit_w=result.limit.value, previous_w=was,
                   expires_in_s=round(expires_in, 3), detail=result.limit.detail)
        return result

    def check_expiry(self) -> list[str]:
        """Report each grid limit that has run out since the last check (once per limit)."""
        now = self._mono()
        expired: list[str] = []
        for key in self.topics.values():
            lim = self.book.get(STATION, key)
            if lim is None or lim.expires_at is None or lim.active(now):
                continue
            if self._reported_expiry.get(key) == lim.expires_at:
                continue
            self._reported_expiry[key] = lim.expires_at
            expired.append(key)
            fallback = self.book.effective(STATION, now)
            self._log.warning("grid_limit_expired", key=key, source=lim.source,
                              station_cap_w=fallback.value, cap_source=fallback.binding.source)
            self._emit("grid_limit_expired", key=key, source=lim.source,
                       station_cap_w=fallback.value, cap_source=fallback.binding.source)
        return expired

    async def run(self, period_s: float = 0.1) -> None:
        """Check for expiries every ``period_s`` until cancelled."""
        while True:
            self.check_expiry()
            await asyncio.sleep(period_s)

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.event(kind, **fields)
