"""What the live view shows, built from the station's last :class:`CycleRecord` and its
:class:`LimitBook` at push time (never inside the cycle).

Why a separate module: the page, ``mwc status`` and the tests read the same JSON document, so
its shape lives in one place. Guns and modules are numbered from 1 here, as on the cabinet
labels, in OCPP and in ``mwc doctor`` (the cycle's records are 0-based).

The per-cycle part (:meth:`LiveState.observe`) only keeps a reference to the newest record
and appends session events to a bounded deque: a few hundred nanoseconds, nothing blocks.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any

from controller.limits import STATION, Limit, LimitKey, gun
from controller.records import CycleRecord, GunRecord
from controller.session import ENERGY_STATES, GunState, SessionEvent
from controller.station import CycleEvent

if TYPE_CHECKING:
    from controller.station import Station, StationEvent

MAX_EVENTS = 30


def _num(x: float | None, nd: int = 1) -> float | None:
    """JSON has no NaN/inf: a missing measurement is null."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), nd)


def _expires_in(lim: Limit, now: float) -> float | None:
    return None if lim.expires_at is None else round(max(0.0, lim.expires_at - now), 1)


def _limits(lims: list[Limit], now: float, nd: int = 1) -> list[dict[str, Any]]:
    return [{"source": lim.source, "value": _num(lim.value, nd),
             "expires_in_s": _expires_in(lim, now), "detail": lim.detail} for lim in lims]


def _find(lims: list[Limit], source: str) -> Limit | None:
    for lim in lims:
        if lim.source == source:
            return lim
    return None


class LiveState:
    """Station observer plus the snapshot builder of the live view."""

    def __init__(self, station: Station, history_s: float = 300.0, rate_hz: float = 4.0
                 ) -> None:
        self.station = station
        self.record: CycleRecord | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.history: deque[list[Any]] = deque(maxlen=max(10, int(history_s * rate_hz)))
        self._start_energy: dict[int, float] = {}
        self._last_binding: dict[int, str] = {}
        self._event_seq = 0

    # ------------------------------------------------------------------ in the cycle
    def observe(self, event: StationEvent) -> None:
        """Station observer: keep the newest record; note session events. Never blocks."""
        if isinstance(event, CycleEvent):
            self.record = event.record
        elif isinstance(event, SessionEvent) and event.kind == "state_changed":
            self._event(event.gun, f"{event.previous.value if event.previous else '-'} → "
                        f"{event.state.value}" + (f" ({event.reason})" if event.reason else ""))
        elif event.kind == "module_fault":  # the fault-reset policy's steps
            m = getattr(event, "module", -1)
            why = getattr(event, "reason", "") or f"code {getattr(event, 'code', '?')}"
            self._event(None, f"module {m + 1}: {getattr(event, 'action', '?')} ({why})")

    def _event(self, g: int | None, text: str) -> None:
        self._event_seq += 1
        wall = self.record.wall_time if self.record is not None else ""
        self.events.append({"id": self._event_seq, "wall_time": wall,
                            "gun": None if g is None else g + 1, "text": text})

    # ------------------------------------------------------------------ at push time
    def snapshot(self) -> dict[str, Any] | None:
        """The JSON document of the newest record (None before the first cycle); also
        appends one point to the power history."""
        rec = self.record
        if rec is None:
            return None
        st = self.station
        now = st.clock()
        cfg = st.config
        rated_a = cfg.modules.rated_current_a
        thr = cfg.station.switch_threshold_a
        st_lims = st.limits.in_force(STATION, now)
        cap_lim = _find(st_lims, rec.cap_source)
        guns = []
        for g in rec.guns:
            guns.append(self._gun(g, now))
        fed = self._matrix(len(rec.modules), len(rec.guns))
        alloc = [[m.gun + 1] if m.gun >= 0 else [] for m in rec.modules]
        closed, commanded = fed if fed is not None else (alloc, alloc)  # no feedback: plan
        mods = []
        for m in rec.modules:
            mods.append({
                "closed": closed[m.module], "commanded": commanded[m.module],
                "n": m.module + 1, "gun": m.gun + 1 if m.gun >= 0 else 0,
                "current_a": _num(m.current_a), "setpoint_a": _num(m.setpoint_a),
                "available_a": _num(m.available_a), "inlet_c": _num(m.inlet_c),
                "outlet_c": _num(m.outlet_c), "internal_c": _num(m.internal_c),
                "derated": m.available and m.available_a < rated_a - 0.5,
                "fault": None if m.available else (m.reason or "unavailable"),
                "draining": bool(math.isfinite(m.current_a) and abs(m.current_a) > thr
                                 and m.setpoint_a <= 0.0),
            })
        point = self.sample()
        return {
            "station_id": cfg.station.id, "seq": rec.seq, "wall_time": rec.wall_time,
            "work_ms": _num(rec.work_ms, 2), "violations": list(rec.violations),
            "station": {
                "power_w": _num(rec.station_power_w, 0), "cap_w": _num(rec.station_cap_w, 0),
                "cap_source": rec.cap_source,
                "cap_expires_in_s": None if cap_lim is None else _expires_in(cap_lim, now),
                "headroom_w": _num(rec.station_cap_w - rec.station_power_w, 0)
                if math.isfinite(rec.station_power_w) else None,
                "limits": _limits(st_lims, now, 0),
            },
            "guns": guns, "modules": mods, "events": list(self.events), "point": point,
        }

    def sample(self) -> list[Any] | None:
        """Append the newest record's power point to the chart history (the pusher calls it
        every tick, page open or not, so a page opened later sees the last minutes)."""
        rec = self.record
        if rec is None:
            return None
        point = [rec.wall_time, _num(rec.station_power_w, 0), _num(rec.station_cap_w, 0),
                 *(_num(g.power_w, 0) for g in rec.guns)]
        if not self.history or self.history[-1][0] != rec.wall_time:
            self.history.append(point)
        return point

    def _matrix(self, m_n: int, g_n: int) -> tuple[list[list[int]], list[list[int]]] | None:
        """Per module, the guns (from 1) whose contactor is closed (auxiliary-contact
        feedback) and commanded (coil), from the hardware's last poll; None when the driver
        keeps no poll (the page then shows the allocation)."""
        snap = getattr(self.station.hw, "last", None)
        mat = getattr(snap, "matrix", None)
        if mat is None or getattr(mat.closed, "shape", None) != (m_n, g_n):
            return None
        fb, coil = mat.closed.tolist(), mat.commanded.tolist()
        return ([[g + 1 for g in range(g_n) if fb[m][g]] for m in range(m_n)],
                [[g + 1 for g in range(g_n) if coil[m][g]] for m in range(m_n)])

    def _gun(self, g: GunRecord, now: float) -> dict[str, Any]:
        lims = self.station.limits.in_force(gun(g.gun), now)
        request = next((lim for lim in lims if lim.key is LimitKey.EV_REQUEST), None)
        ev_max = next((lim for lim in lims if lim.key is LimitKey.EV_MAX), None)
        bound = _find(lims, g.binding_source)
        if g.binding == "STATION":
            bound = _find(self.station.limits.in_force(STATION, now), g.binding_source)
        state = GunState(g.state)
        if state in ENERGY_STATES:
            self._start_energy.setdefault(g.gun, g.energy_wh)
        elif state is not GunState.FINISHING:
            self._start_energy.pop(g.gun, None)
        start = self._start_energy.get(g.gun)
        key = f"{g.binding}/{g.binding_source}"
        if state in ENERGY_STATES and self._last_binding.get(g.gun) != key:
            if g.gun in self._last_binding:
                self._event(g.gun, f"now bound by {g.binding} ({g.binding_source})")
            self._last_binding[g.gun] = key
        return {
            "n": g.gun + 1, "state": g.state, "voltage_v": _num(g.voltage_v),
            "current_a": _num(g.current_a), "power_w": _num(g.power_w, 0),
            "setpoint_a": _num(g.setpoint_a), "energy_wh": _num(g.energy_wh, 0),
            "session_energy_wh": None if start is None else _num(g.energy_wh - start, 0),
            "soc_pct": _num(g.soc_pct), "request_a": None if request is None
            else _num(request.value), "ev_max_a": None if ev_max is None
            else _num(ev_max.value),
            "binding": g.binding, "binding_source": g.binding_source,
            "binding_value": None if bound is None else _num(bound.value),
            "binding_expires_in_s": None if bound is None else _expires_in(bound, now),
            "limits": _limits(lims, now), "modules": [m + 1 for m in g.modules],
        }
