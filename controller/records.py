"""What one control cycle did, as plain data: for telemetry, logs, the demo's report.

The control cycle yields one :class:`CycleRecord` per cycle; MQTT telemetry, OCPP meter values
and the demo read these records and nothing else of the cycle's internals. Every gun record
names the limit that bound it and that limit's source, so an allocation can be explained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class GunRecord:
    gun: int
    state: str  # the gun session state (controller/session.py), e.g. "Charging"
    current_a: float  # measured (meter)
    voltage_v: float  # measured (meter)
    power_w: float  # measured (meter)
    setpoint_a: float  # what the allocator gave this cycle
    binding: str  # power.allocator.Binding name, e.g. "STATION"
    binding_source: str  # source of the binding limit, e.g. "grid:mqtt:peak-17h"
    modules: tuple[int, ...]  # modules connected to this gun
    soc_pct: float | None = None
    energy_wh: float = 0.0  # meter register


@dataclass(frozen=True, slots=True)
class ModuleRecord:
    module: int
    gun: int  # -1: not connected
    current_a: float
    setpoint_a: float
    available_a: float  # derated maximum now
    inlet_c: float
    outlet_c: float
    internal_c: float
    available: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class CycleRecord:
    seq: int
    t: float  # controller monotonic clock
    wall_time: str  # RFC 3339, for humans and telemetry
    station_power_w: float  # measured: sum of the meters
    station_cap_w: float  # the cap given to the allocator
    cap_source: str  # source of the binding station limit
    guns: tuple[GunRecord, ...]
    modules: tuple[ModuleRecord, ...]
    work_ms: float  # time the cycle's work took
    overrun: bool = False
    violations: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
