"""Scenario files (TOML, ``sim/scenarios/``): the station, the grid, the trucks, the events.

The format is documented in ``docs/scenarios.md``. Everything is in simulated seconds from
the start of the run. :func:`load_scenario` accepts a path or the name of a bundled scenario.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sim.truck import PRESETS, TruckParams

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
DEFAULT = "default"

EVENT_KINDS = {
    "grid_limit": "the energy manager publishes a new limit (limit_kw or fraction, storage_kw)",
    "grid_normal": "the energy manager returns to the normal limit",
    "grid_signal_lost": "the energy manager stops publishing (the station falls back)",
    "grid_signal_restored": "the energy manager publishes again",
    "pump_failure": "a module's coolant pump fails (module = index or \"auto\")",
    "pump_restored": "the coolant flow of a module comes back",
    "module_fault": "a module latches a fault (module, code)",
    "module_fault_cleared": "the injected fault is cleared",
    "backend_offline": "the backend becomes unreachable",
    "backend_online": "the backend is reachable again",
    # process events: only the chaos runner (sim/demo/chaos.py, real processes) runs these
    "broker_restart": "the MQTT broker process is stopped and started again",
    "simulator_kill": "the Modbus simulator process is killed (SIGKILL)",
    "simulator_restart": "a new simulator process answers on the same ports",
    "controller_kill": "the controller process (mwc run) is killed (SIGKILL)",
    "controller_restart": "mwc run is started again with the same configuration",
}


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class StationSpec:
    id: str = "MWC-DEMO-1"
    modules: int = 48
    module_power_w: float = 40_000.0
    module_current_a: float = 100.0
    max_kw: float = 1920.0
    fallback_grid_kw: float = 720.0
    cable_rating_a: float = 1500.0
    ramp_a_per_s: float = 1000.0
    chiller_c: float = 25.0


@dataclass(frozen=True, slots=True)
class GridSpec:
    normal_kw: float = 1440.0
    storage_kw: float = 0.0
    cadence_s: float = 5.0
    valid_for_s: float = 30.0
    source: str = "sim-ems"


@dataclass(frozen=True, slots=True)
class TruckSpec:
    params: TruckParams
    gun: int
    arrive_s: float
    leave_at_target: bool = True


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float
    kind: str
    label: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    station: StationSpec
    grid: GridSpec
    trucks: tuple[TruckSpec, ...]
    events: tuple[Event, ...]
    dt_s: float = 1.0
    max_duration_s: float = 3600.0
    speed: float = 0.0  # simulated s per wall s; 0: as fast as the lockstep goes
    cap_window_s: float = 3.0  # the ramp-down window cap_respected allows after a cap drop
    fault_window_s: float = 30.0  # pool_reallocated_after_fault: time allowed to re-allocate
    path: str = ""

    @property
    def guns(self) -> int:
        return max((t.gun for t in self.trucks), default=1) + 1 if self.trucks else 2

    def shortened(self, factor: float) -> Scenario:
        """The same story with batteries and times scaled by ``factor`` (tests, CI); the
        currents stay the same (the C-rate limit is scaled back), thermal time constants too."""
        trucks = tuple(replace(t, arrive_s=t.arrive_s * factor, params=replace(
            t.params, capacity_kwh=t.params.capacity_kwh * factor,
            max_c_rate=t.params.max_c_rate / factor)) for t in self.trucks)  # same currents
        events = tuple(replace(e, at_s=e.at_s * factor) for e in self.events)
        return replace(self, trucks=trucks, events=events,
                       max_duration_s=self.max_duration_s * factor)


def _take(d: dict[str, Any], cls: Any, where: str) -> Any:
    known = set(cls.__dataclass_fields__)
    extra = set(d) - known
    if extra:
        raise ScenarioError(f"{where}: unknown keys {sorted(extra)} (known: {sorted(known)})")
    try:
        return cls(**d)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _truck(d: dict[str, Any], i: int) -> TruckSpec:
    d = dict(d)
    where = f"truck[{i}]"
    gun = int(d.pop("gun", i))
    arrive = float(d.pop("arrive_s", 0.0))
    leave = bool(d.pop("leave_at_target", True))
    preset = d.pop("preset", None)
    base = TruckParams()
    if preset is not None:
        if preset not in PRESETS:
            raise ScenarioError(f"{where}: unknown preset {preset!r} (known: {sorted(PRESETS)})")
        base = PRESETS[preset]
    d.setdefault("id_token", f"TRUCK-{d.get('name', chr(65 + i))}")
    known = set(TruckParams.__dataclass_fields__)
    if set(d) - known:
        raise ScenarioError(f"{where}: unknown keys {sorted(set(d) - known)}")
    try:
        params = replace(base, **d)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    return TruckSpec(params, gun, arrive, leave)


def _event(d: dict[str, Any], i: int) -> Event:
    d = dict(d)
    where = f"event[{i}]"
    if "at_s" not in d or "kind" not in d:
        raise ScenarioError(f"{where}: needs at_s and kind")
    kind = str(d.pop("kind"))
    if kind not in EVENT_KINDS:
        raise ScenarioError(f"{where}: unknown kind {kind!r} (known: {sorted(EVENT_KINDS)})")
    at = float(d.pop("at_s"))
    label = str(d.pop("label", kind.replace("_", " ")))
    return Event(at, kind, label, d)


def parse_scenario(data: dict[str, Any], name: str = "scenario", path: str = "") -> Scenario:
    data = dict(data)
    station = _take(dict(data.pop("station", {})), StationSpec, "[station]")
    grid = _take(dict(data.pop("grid", {})), GridSpec, "[grid]")
    trucks = tuple(_truck(t, i) for i, t in enumerate(data.pop("truck", [])))
    events = tuple(sorted((_event(e, i) for i, e in enumerate(data.pop("event", []))),
                          key=lambda e: e.at_s))
    if not trucks:
        raise ScenarioError("a scenario needs at least one [[truck]]")
    guns = {t.gun for t in trucks}
    if len(guns) != len(trucks) or min(guns) < 0:
        raise ScenarioError("each truck needs its own gun (0, 1, ...)")
    top: dict[str, Any] = {"name": name, "description": "", "dt_s": 1.0, "max_duration_s": 3600.0,
           "speed": 0.0, "cap_window_s": 3.0, "fault_window_s": 30.0}
    extra = set(data) - set(top)
    if extra:
        raise ScenarioError(f"unknown top-level keys {sorted(extra)}")
    top.update(data)
    sc = Scenario(name=str(top["name"]), description=str(top["description"]),
                  station=station, grid=grid, trucks=trucks, events=events,
                  dt_s=float(top["dt_s"]), max_duration_s=float(top["max_duration_s"]),
                  speed=float(top["speed"]), cap_window_s=float(top["cap_window_s"]),
                  fault_window_s=float(top["fault_window_s"]), path=path)
    if not 0.01 <= sc.dt_s <= 1.0:
        raise ScenarioError("dt_s must be within 0.01..1.0 (it is also the cycle period)")
    return sc


def scenario_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    return SCENARIO_DIR / f"{name_or_path}.toml"


def load_scenario(name_or_path: str = DEFAULT) -> Scenario:
    path = scenario_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
        raise ScenarioError(f"no scenario {name_or_path!r} (bundled: {known})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return parse_scenario(data, name=path.stem, path=str(path))


def bundled() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
