"""Smart charging (K01–K08): charging profiles, the composite schedule, limits for the cycle.

Profiles are validated by the K01 rules (:meth:`Profiles.validate`), persisted in the
``profiles`` table and combined per EVSE into a composite schedule: the highest stack level
of each purpose wins, a TxProfile of the running transaction overrides the TxDefaultProfile
(an EVSE's own TxDefaultProfile beats one on EVSE 0 at equal level), and the
ChargingStationMaxProfile caps the station. :meth:`Profiles.apply` writes the limit of the
current period into the :class:`LimitBook` under key ``"ocpp"`` (source ``"OCPP"``): the
station scope in W, each gun in A, each expiring at the end of its current period, with a
fallback of min(this period, next period) while the schedule goes on (a late write of the
next period never lifts the limit above the profile).
W → A uses the gun's measured voltage (its maximum voltage while none is measured).
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from controller import logs
from controller.limits import STATION, Limit, LimitBook, gun
from controller.ocpp import storage

KEY = "ocpp"
SOURCE = "OCPP"
HORIZON_S = 3600.0  # an open-ended period is re-evaluated at least this often
_PERIOD = {"Daily": timedelta(days=1), "Weekly": timedelta(days=7)}


def _dt(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None


#: Dates a profile may carry (UTC). Beyond them the schedule arithmetic (periods, recurrence,
#: duration up to 2^31 s) could leave ``datetime``'s range.
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)
MAX_ID = 2 ** 31 - 1


def _time_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not a usable dateTime (RFC 3339 with an offset, 1970..9000)."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"{name} must be an RFC 3339 dateTime string"
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return f"{name} = {value[:40]!r} is not an RFC 3339 dateTime"
    if t.tzinfo is None:
        return f"{name} = {value[:40]!r} has no UTC offset"
    try:
        ok = EARLIEST <= t.astimezone(UTC) < LATEST
    except (OverflowError, ValueError):
        ok = False
    return None if ok else f"{name} = {value[:40]!r} is outside 1970..9000"


def _int_problem(name: str, value: Any, lo: int, hi: int = MAX_ID) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        return f"{name} = {str(value)[:40]} must be an integer in {lo}..{hi}"
    return None


def _num_problem(name: str, value: Any) -> str | None:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value < 0):
        return f"{name} = {str(value)[:40]} must be a finite number >= 0"
    return None


def shape_problem(evse: Any, p: Any, guns: int, max_periods: int) -> str | None:
    """Why ``p`` (snake_case, as handlers get it) cannot be a profile on ``evse`` whatever
    the station's state: types, ids, finite non-negative numbers, real dates. Used for new
    profiles and again for every persisted row at start-up."""
    if _int_problem("evseId", evse, 0, guns) is not None:
        return f"unknown EVSE {str(evse)[:20]}"
    if not isinstance(p, dict):
        return "chargingProfile must be an object"
    for name, key, lo in (("id", "id", 0), ("stackLevel", "stack_level", 0)):
        why = _int_problem(name, p.get(key), lo)
        if why:
            return why
    for name, key in (("validFrom", "valid_from"), ("validTo", "valid_to")):
        why = _time_problem(name, p.get(key))
        if why:
            return why
    if p.get("charging_profile_purpose") not in (
            "ChargingStationMaxProfile", "TxDefaultProfile", "TxProfile",
            "ChargingStationExternalConstraints"):
        return "unknown chargingProfilePurpose"
    if p.get("charging_profile_kind") not in ("Absolute", "Recurring", "Relative"):
        return "unknown chargingProfileKind"
    scheds = p.get("charging_schedule")
    if not isinstance(scheds, list) or not 1 <= len(scheds) <= 3:
        return "chargingSchedule must hold 1 to 3 schedules"
    for i, s in enumerate(scheds):
        if not isinstance(s, dict):
            return f"chargingSchedule[{i}] must be an object"
        why = (_time_problem(f"chargingSchedule[{i}].startSchedule", s.get("start_schedule"))
               or (None if s.get("duration") is None else _int_problem(
                   f"chargingSchedule[{i}].duration", s.get("duration"), 0))
               or (None if s.get("min_charging_rate") is None else _num_problem(
                   f"chargingSchedule[{i}].minChargingRate", s.get("min_charging_rate"))))
        if why:
            return why
        periods = s.get("charging_schedule_period")
        if not isinstance(periods, list) or not periods:
            return f"chargingSchedule[{i}].chargingSchedulePeriod must not be empty"
        if len(periods) > max_periods:
            return f"more than {max_periods} periods"
        for j, q in enumerate(periods):
            at = f"chargingSchedule[{i}].chargingSchedulePeriod[{j}]"
            if not isinstance(q, dict):
                return f"{at} must be an object"
            why = (_int_problem(f"{at}.startPeriod", q.get("start_period"), 0)
                   or _num_problem(f"{at}.limit", q.get("limit"))
                   or (None if q.get("number_phases") is None else _int_problem(
                       f"{at}.numberPhases", q.get("number_phases"), 1, 3)))
            if why:
                return why
    return None


class Profiles:
    """The installed charging profiles of the station and what they mean now."""

    def __init__(self, db: sqlite3.Connection, guns: int, max_voltage: list[float],
                 max_stack_level: int = 9, max_periods: int = 24) -> None:
        self.db, self.guns, self.max_voltage = db, guns, max_voltage
        self.max_stack, self.max_periods = max_stack_level, max_periods
        self.voltage: list[float] = list(max_voltage)  # last measured, for W → A
        self.tx: dict[int, tuple[str, datetime]] = {}  # evse → (transactionId, start)
        storage.migrate(db)
        self.items: dict[int, tuple[int, dict[str, Any]]] = {}
        self._load()

    def _load(self) -> None:
        """The persisted profiles, each validated again: a row that is not a valid profile
        (corrupt, or stored by an older version that let NaN or a bad date through) is
        deleted with an error event, never loaded into the limits."""
        log = logs.get_logger("mwc.ocpp.profiles")
        bad: list[Any] = []
        for i, e, d in self.db.execute("SELECT id, evse, data FROM profiles").fetchall():
            try:
                p = json.loads(d) if isinstance(d, str | bytes) else None
            except (ValueError, RecursionError):
                p = None
            why = "not JSON" if p is None else shape_problem(e, p, self.guns,
                                                              self.max_periods)
            if why is None and p is not None and p.get("id") != i:
                why = f"row id {i} differs from the profile id {p.get('id')}"
            if why is not None or not isinstance(p, dict):
                bad.append(i)
                log.error("persisted_profile_dropped", profile_id=str(i)[:40], evse=e,
                          reason=why)
                continue
            self.items[int(i)] = (int(e), p)
        if bad:
            with self.db:
                for i in bad:
                    self.db.execute("DELETE FROM profiles WHERE id IS ?", (i,))

    # ------------------------------------------------------------------ K01 validation
    def validate(self, evse: int, p: dict[str, Any]) -> str | None:
        """Why the profile is rejected (None: it is valid)."""
        why = shape_problem(evse, p, self.guns, self.max_periods)
        if why is not None:
            return why
        purpose, kind = p["charging_profile_purpose"], p["charging_profile_kind"]
        if purpose == "ChargingStationExternalConstraints":
            return "ChargingStationExternalConstraints cannot be set by the CSMS"
        if not 0 <= evse <= self.guns:
            return f"unknown EVSE {evse}"
        if purpose == "ChargingStationMaxProfile":
            if evse != 0:
                return "ChargingStationMaxProfile only on EVSE 0"
            if kind == "Relative":
                return "ChargingStationMaxProfile cannot be Relative"
        if purpose == "TxProfile":
            if evse == 0:
                return "TxProfile needs an EVSE > 0"
            running = self.tx.get(evse)
            if running is None:
                return "no transaction running on the EVSE"
            if p.get("transaction_id") not in (None, running[0]):
                return "transactionId does not match the running transaction"
        if not 0 <= p["stack_level"] <= self.max_stack:
            return f"stackLevel outside 0..{self.max_stack}"
        if kind in ("Absolute", "Recurring"):
            if any(s.get("start_schedule") is None for s in p["charging_schedule"]):
                return f"{kind} profile needs startSchedule"
        elif any(s.get("start_schedule") is not None for s in p["charging_schedule"]):
            return "Relative profile must not have startSchedule"
        if kind == "Recurring" and p.get("recurrency_kind") not in _PERIOD:
            return "Recurring profile needs recurrencyKind"
        for s in p["charging_schedule"]:
            periods = s["charging_schedule_period"]
            if s["charging_rate_unit"] not in ("A", "W"):
                return "chargingRateUnit must be A or W"
            if len(periods) > self.max_periods:
                return f"more than {self.max_periods} periods"
            if periods[0]["start_period"] != 0:
                return "first startPeriod must be 0"
            starts = [q["start_period"] for q in periods]
            if any(b <= a for a, b in itertools.pairwise(starts)):
                return "startPeriod values must increase"
        vf, vt = _dt(p.get("valid_from")), _dt(p.get("valid_to"))
        if vf is not None and vt is not None and vt <= vf:
            return "validTo must be after validFrom"
        for pid, (e, q) in self.items.items():
            if (pid != p["id"] and e == evse and q["stack_level"] == p["stack_level"]
                    and q["charging_profile_purpose"] == purpose
                    and _overlap(vf, vt, _dt(q.get("valid_from")), _dt(q.get("valid_to")))):
                return f"profile {pid} has the same purpose and stackLevel on this EVSE"
        return None

    def install(self, evse: int, p: dict[str, Any]) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?)",
                            (p["id"], evse, json.dumps(p)))
        self.items[int(p["id"])] = (evse, p)

    def clear(self, pid: int | None = None, evse: int | None = None, purpose: str | None = None,
              stack: int | None = None) -> int:
        gone = [i for i, (e, p) in self.items.items() if
                (pid is None or i == pid) and (evse is None or e == evse)
                and (purpose is None or p["charging_profile_purpose"] == purpose)
                and (stack is None or p["stack_level"] == stack)]
        with self.db:
            for i in gone:
                self.db.execute("DELETE FROM profiles WHERE id = ?", (i,))
                del self.items[i]
        return len(gone)

    def tx_ended(self, evse: int) -> None:
        """A transaction ended: its TxProfiles go with it (K01.FR.05 ... the tx is over)."""
        self.tx.pop(evse, None)
        self.clear(evse=evse, purpose="TxProfile")

    # ------------------------------------------------------------------ evaluation
    def _period(self, evse: int, p: dict[str, Any], t: datetime
                ) -> tuple[float, str, datetime] | None:
        """(limit, unit, end of the period) of the profile at ``t``; None when inactive."""
        vf, vt = _dt(p.get("valid_from")), _dt(p.get("valid_to"))
        if (vf and t < vf) or (vt and t >= vt):
            return None
        if p["charging_profile_purpose"] == "TxProfile":
            run = self.tx.get(evse)
            if run is None or p.get("transaction_id") not in (None, run[0]):
                return None
        s = p["charging_schedule"][0]
        start = _dt(s.get("start_schedule"))
        rec_end: datetime | None = None
        if p["charging_profile_kind"] == "Relative":
            start = self.tx[evse][1] if evse in self.tx else t
        elif p["charging_profile_kind"] == "Recurring" and start is not None:
            step = _PERIOD[p["recurrency_kind"]]
            if t >= start:
                start += step * ((t - start) // step)
            rec_end = start + step
        assert start is not None
        off = (t - start).total_seconds()
        dur = s.get("duration")
        if off < 0 or (dur is not None and off >= dur):
            return None
        periods = s["charging_schedule_period"]
        idx = max(i for i, q in enumerate(periods) if q["start_period"] <= off)
        ends = [x for x in (vt, rec_end) if x is not None]
        if idx + 1 < len(periods):
            ends.append(start + timedelta(seconds=periods[idx + 1]["start_period"]))
        if dur is not None:
            ends.append(start + timedelta(seconds=dur))
        end = min(ends, default=t + timedelta(seconds=HORIZON_S))
        return float(periods[idx]["limit"]), s["charging_rate_unit"], end

    def _best(self, evses: tuple[int, ...], purpose: str, t: datetime
              ) -> tuple[float, str, datetime, int] | None:
        found = []
        for pid, (e, p) in self.items.items():
            if e in evses and p["charging_profile_purpose"] == purpose:
                got = self._period(e, p, t)
                if got is not None:
                    found.append((p["stack_level"], e, got, pid))
        if not found:
            return None
        _lvl, _e, got, pid = max(found, key=lambda f: (f[0], f[1]))
        return (*got, pid)

    def evse_limit(self, evse: int, t: datetime) -> tuple[float, str, datetime, int] | None:
        """The EVSE's own limit at ``t`` (TxProfile over TxDefaultProfile)."""
        if evse in self.tx:
            best = self._best((evse,), "TxProfile", t)
            if best is not None:
                return best
        return self._best((0, evse), "TxDefaultProfile", t)

    def station_limit(self, t: datetime) -> tuple[float, str, datetime, int] | None:
        return self._best((0,), "ChargingStationMaxProfile", t)

    def to_unit(self, value: float, unit: str, want: str, evse: int) -> float:
        if unit == want:
            return value
        v = self.voltage[evse - 1] if evse > 0 else max(self.max_voltage)
        return value * v if want == "W" else value / v

    def apply(self, book: LimitBook, now: float, wall: datetime) -> None:
        """Write the current period of every scope into ``book`` (key ``"ocpp"``): a limit
        with the period's value that expires at the period's end, and — while the schedule
        goes on after it — the key's fallback, the lower of this period and the next. A
        write of the next period that comes late (a stalled loop, a restart) then never lets
        the gun or station run above the profile: the fallback applies, not "no limit". A
        profile that ends (or is cleared) leaves neither: OCPP without a profile sets no
        limit."""
        def put(scope: str, got: tuple[float, str, datetime, int] | None,
                after: tuple[float, str, datetime, int] | None,
                conv: Callable[[float, str], float]) -> None:
            if got is None:
                book.clear(scope, KEY)
                book.clear_fallback(scope, KEY)
                return
            value, unit, end, pid = got
            left = max(0.0, (end - wall).total_seconds())
            lim = Limit(max(0.0, conv(value, unit)), SOURCE, now, now + left,
                        f"profile {pid} ({value:g} {unit}) until {end.isoformat()}")
            old = book.get(scope, KEY)
            if old is None or (old.value, old.expires_at, old.detail) != (
                    lim.value, lim.expires_at, lim.detail):
                book.set(scope, KEY, lim)
            if after is None:
                book.clear_fallback(scope, KEY)
                return
            fallback = min(lim.value, max(0.0, conv(after[0], after[1])))
            detail = (f"profile {pid} after {end.isoformat()}: not above this period nor "
                      f"profile {after[3]}'s next ({after[0]:g} {after[1]})")
            had = book.fallback(scope, KEY)
            if had is None or (had.value, had.detail) != (fallback, detail):
                book.set_fallback(scope, KEY, Limit(fallback, f"{SOURCE}:fallback", now,
                                                    detail=detail))

        station = self.station_limit(wall)
        put(STATION, station, self.station_limit(station[2]) if station else None,
            lambda v, u: self.to_unit(v, u, "W", 0))
        for e in range(1, self.guns + 1):
            got = self.evse_limit(e, wall)
            put(gun(e - 1), got, self.evse_limit(e, got[2]) if got else None,
                lambda v, u, e=e: self.to_unit(v, u, "A", e))  # type: ignore[misc]

    def composite(self, evse: int, start: datetime, duration: int, unit: str,
                  local: tuple[tuple[float, str, datetime | None, datetime | None], ...] = ()
                  ) -> list[dict[str, Any]]:
        """chargingSchedulePeriod list of GetCompositeSchedule over [start, start+duration).
        ``local``: the station's own limits ``(value, "A" | "W", from, until)`` (None: open)
        — K08: the composite is that of all active schedules *and* the local limits — each
        capping the profiles' limit while it is in force."""
        end = start + timedelta(seconds=duration)
        t = start
        out: list[dict[str, Any]] = []
        while t < end and len(out) < 1000:
            cands = [self.station_limit(t)]
            if evse > 0:
                cands.append(self.evse_limit(evse, t))
            cands += [(v, u, until or end, -1) for v, u, since, until in local
                      if (since is None or since <= t) and (until is None or until > t)]
            present = [c for c in cands if c is not None]
            nxt = min([c[2] for c in present] + [end] + [
                since for _v, _u, since, _t in local if since is not None and since > t])
            if present:
                limit = min(self.to_unit(c[0], c[1], unit, evse) for c in present)
                off = int((t - start).total_seconds())
                if not out or out[-1]["limit"] != round(limit, 1):
                    out.append({"startPeriod": off, "limit": round(limit, 1)})
            t = max(nxt, t + timedelta(seconds=1))
        return out


def _overlap(a0: datetime | None, a1: datetime | None, b0: datetime | None,
             b1: datetime | None) -> bool:
    lo = [x for x in (a0, b0) if x is not None]
    hi = [x for x in (a1, b1) if x is not None]
    return not lo or not hi or max(lo) < min(hi)
