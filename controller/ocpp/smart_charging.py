"""Smart charging (K01–K08): charging profiles, the composite schedule, limits for the cycle.

Profiles are validated by the K01 rules (:meth:`Profiles.validate`), persisted in the
``profiles`` table and combined per EVSE into a composite schedule: the highest stack level
of each purpose wins, a TxProfile of the running transaction overrides the TxDefaultProfile
(an EVSE's own TxDefaultProfile beats one on EVSE 0 at equal level), and the
ChargingStationMaxProfile caps the station. :meth:`Profiles.apply` writes the limit of the
current period into the :class:`LimitBook` under key ``"ocpp"`` (source ``"OCPP"``): the
station scope in W, each gun in A, each expiring at the end of its current period.
W → A uses the gun's measured voltage (its maximum voltage while none is measured).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from controller.limits import STATION, Limit, LimitBook, gun

KEY = "ocpp"
SOURCE = "OCPP"
HORIZON_S = 3600.0  # an open-ended period is re-evaluated at least this often
_PERIOD = {"Daily": timedelta(days=1), "Weekly": timedelta(days=7)}


def _dt(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None


class Profiles:
    """The installed charging profiles of the station and what they mean now."""

    def __init__(self, db: sqlite3.Connection, guns: int, max_voltage: list[float],
                 max_stack_level: int = 9, max_periods: int = 24) -> None:
        self.db, self.guns, self.max_voltage = db, guns, max_voltage
        self.max_stack, self.max_periods = max_stack_level, max_periods
        self.voltage: list[float] = list(max_voltage)  # last measured, for W → A
        self.tx: dict[int, tuple[str, datetime]] = {}  # evse → (transactionId, start)
        db.execute("CREATE TABLE IF NOT EXISTS profiles (id INTEGER PRIMARY KEY, evse INTEGER,"
                   " data TEXT)")
        db.commit()
        self.items: dict[int, tuple[int, dict[str, Any]]] = {
            int(i): (int(e), json.loads(d)) for i, e, d in
            db.execute("SELECT id, evse, data FROM profiles")}

    # ------------------------------------------------------------------ K01 validation
    def validate(self, evse: int, p: dict[str, Any]) -> str | None:
        """Why the profile is rejected (None: it is valid)."""
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
            if any(q["limit"] < 0 for q in periods):
                return "limit must be >= 0"
        vf, vt = _dt(p.get("valid_from")), _dt(p.get("valid_to"))
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
        """Write the current period of every scope into ``book`` (key ``"ocpp"``)."""
        def put(scope: str, got: tuple[float, str, datetime, int] | None, want: str,
                evse: int, conv: Callable[[float, str], float]) -> None:
            if got is None:
                book.clear(scope, KEY)
                return
            value, unit, end, pid = got
            left = max(0.0, (end - wall).total_seconds())
            lim = Limit(max(0.0, conv(value, unit)), SOURCE, now, now + left,
                        f"profile {pid} ({value:g} {unit}) until {end.isoformat()}")
            old = book.get(scope, KEY)
            if old is None or (old.value, old.expires_at, old.detail) != (
                    lim.value, lim.expires_at, lim.detail):
                book.set(scope, KEY, lim)

        put(STATION, self.station_limit(wall), "W", 0,
            lambda v, u: self.to_unit(v, u, "W", 0))
        for e in range(1, self.guns + 1):
            put(gun(e - 1), self.evse_limit(e, wall), "A", e,
                lambda v, u, e=e: self.to_unit(v, u, "A", e))  # type: ignore[misc]

    def composite(self, evse: int, start: datetime, duration: int, unit: str
                  ) -> list[dict[str, Any]]:
        """chargingSchedulePeriod list of GetCompositeSchedule over [start, start+duration)."""
        end = start + timedelta(seconds=duration)
        t = start
        out: list[dict[str, Any]] = []
        while t < end and len(out) < 1000:
            cands = [self.station_limit(t)]
            if evse > 0:
                cands.append(self.evse_limit(evse, t))
            present = [c for c in cands if c is not None]
            nxt = min([c[2] for c in present] + [end])
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
