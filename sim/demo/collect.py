"""What the demo keeps of a run: per-cycle series from the records, sessions, markers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.demo.scenario import Scenario


@dataclass
class Session:
    gun: int
    token: str | None
    start_t: float
    start_meter_wh: float = float("nan")  # the gun meter's register, as the station polled it
    stop_t: float | None = None
    stop_meter_wh: float | None = None
    reason: str | None = None


@dataclass
class Collector:
    scenario: Scenario
    physics: Any
    t: list[float] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)
    cap_w: list[float] = field(default_factory=list)
    cap_source: list[str] = field(default_factory=list)
    grid_kw: list[float] = field(default_factory=list)
    storage_kw: list[float] = field(default_factory=list)
    gun_current: list[list[float]] = field(default_factory=list)
    gun_setpoint: list[list[float]] = field(default_factory=list)
    gun_power: list[list[float]] = field(default_factory=list)
    gun_soc: list[list[float]] = field(default_factory=list)
    gun_state: list[list[str]] = field(default_factory=list)
    gun_binding: list[list[str]] = field(default_factory=list)
    gun_modules: list[list[int]] = field(default_factory=list)
    mod_temp: list[np.ndarray] = field(default_factory=list)
    mod_avail: list[np.ndarray] = field(default_factory=list)
    mod_set: list[np.ndarray] = field(default_factory=list)
    mod_gun: list[np.ndarray] = field(default_factory=list)
    record_violations: list[str] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    markers: list[dict[str, Any]] = field(default_factory=list)
    fault_modules: list[tuple[float, int, str]] = field(default_factory=list)
    _t0: float | None = None
    _open: dict[int, Session] = field(default_factory=dict)
    _pending: list[tuple[Session, str]] = field(default_factory=list)

    def rel(self, t_station: float) -> float:
        return t_station - (self._t0 if self._t0 is not None else t_station)

    def observe(self, ev: Any) -> None:
        """Station observer: sessions from charging_started / charging_stopped."""
        kind = getattr(ev, "kind", "")
        if kind == "charging_started":
            s = Session(ev.gun, ev.id_token, self.rel(ev.t))
            self._open[ev.gun] = s
            self.sessions.append(s)
            self._pending.append((s, "start"))
        elif kind == "charging_stopped" and ev.gun in self._open:
            s = self._open.pop(ev.gun)
            s.stop_t = self.rel(ev.t)
            s.reason = ev.reason
            self._pending.append((s, "stop"))

    def add(self, rec: Any, elapsed: float, feed: Any) -> None:
        if self._t0 is None:
            self._t0 = rec.t - elapsed
        for s, which in self._pending:  # the register in the cycle of the start / stop
            if which == "start":
                s.start_meter_wh = rec.guns[s.gun].energy_wh
            else:
                s.stop_meter_wh = rec.guns[s.gun].energy_wh
        self._pending.clear()
        self.t.append(elapsed)
        self.power_w.append(rec.station_power_w)
        self.cap_w.append(rec.station_cap_w)
        self.cap_source.append(rec.cap_source)
        self.grid_kw.append(float("nan") if feed.lost else feed.limit_kw)
        self.storage_kw.append(0.0 if feed.lost else feed.storage_kw)
        self.gun_current.append([g.current_a for g in rec.guns])
        self.gun_setpoint.append([g.setpoint_a for g in rec.guns])
        self.gun_power.append([g.power_w for g in rec.guns])
        self.gun_soc.append([g.soc_pct if g.soc_pct is not None else float("nan")
                             for g in rec.guns])
        self.gun_state.append([g.state for g in rec.guns])
        self.gun_binding.append([f"{g.binding}:{g.binding_source}" for g in rec.guns])
        self.gun_modules.append([len(g.modules) for g in rec.guns])
        mods = rec.modules
        self.mod_temp.append(np.array([m.internal_c for m in mods]))
        self.mod_avail.append(np.array([m.available_a if m.available else 0.0 for m in mods]))
        self.mod_set.append(np.array([m.setpoint_a for m in mods]))
        self.mod_gun.append(np.array([m.gun for m in mods]))
        self.record_violations.extend(rec.violations)

    # ---- arrays for the report -----------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "t": np.array(self.t), "power_kw": np.array(self.power_w) / 1000.0,
            "cap_kw": np.array(self.cap_w) / 1000.0, "grid_kw": np.array(self.grid_kw),
            "storage_kw": np.array(self.storage_kw),
            "current": np.array(self.gun_current).reshape(len(self.t), -1),
            "setpoint": np.array(self.gun_setpoint).reshape(len(self.t), -1),
            "soc": np.array(self.gun_soc).reshape(len(self.t), -1),
            "temp": np.array(self.mod_temp), "avail": np.array(self.mod_avail),
            "mod_set": np.array(self.mod_set), "mod_gun": np.array(self.mod_gun),
        }
