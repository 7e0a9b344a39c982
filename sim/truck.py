"""Simulated heavy truck: battery pack, charging curve and vehicle link.

``TruckSim`` is both sides of the charging cable in one object:
- the electrical load of its gun in the module simulator (``sim.physics.GunLoad``): a battery
  voltage source behind an internal resistance, terminal voltage ``OCV(SoC) + I·R``, whose
  state of charge integrates the energy it receives;
- the vehicle as the controller sees it through the SECC (``controller.vehicle.VehicleLink``):
  plugged, EV maximum current and voltage, present request, SoC, stop request.

The charging curve is the one the published figures fit (see shared/domain-facts.md): a
constant-current phase at the EV maximum (bounded by a C-rate) up to ``cc_until_soc_pct``
(about 75 %), then a linear taper down to ``taper_floor`` of that current at 100 %; the truck
asks to stop at its target SoC. Open-circuit voltage rises with SoC from ``ocv_empty_v`` to
``ocv_full_v``: steeply over the first 10 % (a fifth of the range), linearly after (packs are
steep at the ends; a linear middle keeps the model simple and monotonic).

Time comes from the injected clock only through ``read_at``; energy integrates over the
``dt`` the physics passes to ``voltage_at``, so a simulated clock runs it at any speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from controller.clock import Monotonic
from controller.vehicle import VehicleStatus


@dataclass(frozen=True, slots=True)
class TruckParams:
    """One truck. Defaults: a 600 kWh, 800 V-class MCS truck (eActros 600-like)."""

    name: str = "truck"
    capacity_kwh: float = 600.0
    ocv_empty_v: float = 680.0
    ocv_full_v: float = 820.0
    r_internal_ohm: float = 0.02
    ev_max_current_a: float = 1500.0
    ev_max_voltage_v: float = 1000.0
    max_c_rate: float = 2.0
    cc_until_soc_pct: float = 75.0
    taper_floor: float = 0.15
    start_soc_pct: float = 20.0
    target_soc_pct: float = 80.0
    id_token: str = "TRUCK-A"

    def __post_init__(self) -> None:
        problems = []
        if self.capacity_kwh <= 0:
            problems.append(f"capacity_kwh must be > 0, got {self.capacity_kwh}")
        if not 0 < self.ocv_empty_v < self.ocv_full_v <= self.ev_max_voltage_v:
            problems.append(
                "need 0 < ocv_empty_v < ocv_full_v <= ev_max_voltage_v, got "
                f"{self.ocv_empty_v}, {self.ocv_full_v}, {self.ev_max_voltage_v}"
            )
        if self.r_internal_ohm < 0 or self.ev_max_current_a <= 0 or self.max_c_rate <= 0:
            problems.append("r_internal_ohm >= 0, ev_max_current_a > 0, max_c_rate > 0")
        if not 0 <= self.start_soc_pct <= 100 or not 0 < self.target_soc_pct <= 100:
            problems.append("start_soc_pct in 0..100 and target_soc_pct in (0, 100]")
        if not 0 < self.cc_until_soc_pct <= 100 or not 0 <= self.taper_floor <= 1:
            problems.append("cc_until_soc_pct in (0, 100] and taper_floor in 0..1")
        if problems:
            raise ValueError(f"truck {self.name!r}: " + "; ".join(problems))


# Trucks of shared/domain-facts.md, for scenarios.
PRESETS: dict[str, TruckParams] = {
    "eactros600": TruckParams(name="eActros 600", capacity_kwh=621.0, ev_max_current_a=1500.0),
    "man_mcs": TruckParams(
        name="MAN MCS", capacity_kwh=480.0, ocv_empty_v=620.0, ocv_full_v=780.0,
        ev_max_current_a=1000.0,
    ),
    "ccs_truck": TruckParams(
        name="CCS truck", capacity_kwh=540.0, ocv_empty_v=600.0, ocv_full_v=760.0,
        ev_max_current_a=500.0, ev_max_voltage_v=920.0,
    ),
}


class TruckSim:
    """A truck at a gun: ``GunLoad`` for the module simulator, ``VehicleLink`` for the station."""

    def __init__(self, params: TruckParams | None = None,
                 clock: Monotonic = time.monotonic) -> None:
        self.params = params or TruckParams()
        self._clock = clock
        self.soc_pct = self.params.start_soc_pct
        self.energy_wh = 0.0  # energy into the battery terminals
        self.plugged = False
        self.charging = False  # the station said start
        self._stop_requested = False
        self.current_a = 0.0  # last current the physics passed in
        self.available_a = 0.0  # what the station last said it can give
        self.available_v = 0.0

    # --- the battery -------------------------------------------------------------------

    def ocv_v(self) -> float:
        """Open-circuit voltage at the present SoC (steeper below 10 %)."""
        p = self.params
        s = min(max(self.soc_pct, 0.0), 100.0) / 100.0
        knee = 0.1  # the first 10 % of SoC cover 20 % of the voltage range
        shape = 0.2 * s / knee if s < knee else 0.2 + 0.8 * (s - knee) / (1 - knee)
        return p.ocv_empty_v + (p.ocv_full_v - p.ocv_empty_v) * shape

    def terminal_v(self, current_a: float) -> float:
        return self.ocv_v() + current_a * self.params.r_internal_ohm

    def voltage_at(self, current_a: float, dt: float) -> float:
        """GunLoad: terminal voltage while ``current_a`` flows in for ``dt`` s (integrates)."""
        current = max(current_a, 0.0) if self.plugged else 0.0
        self.current_a = current
        v = self.terminal_v(current)
        if current > 0.0 and dt > 0.0:
            stored_wh = self.ocv_v() * current * dt / 3600.0  # I²R is lost as heat
            self.energy_wh += v * current * dt / 3600.0
            self.soc_pct = min(100.0, self.soc_pct + stored_wh / (self.params.capacity_kwh * 10))
        return v if self.plugged else 0.0

    # --- the charging curve ---------------------------------------------------------------

    def max_current_a(self) -> float:
        """The battery's own limit now: CC up to the knee, then a linear taper."""
        p = self.params
        c_limit = p.max_c_rate * p.capacity_kwh * 1000.0 / p.ocv_full_v
        i_cc = min(p.ev_max_current_a, c_limit)
        if self.soc_pct <= p.cc_until_soc_pct:
            return i_cc
        frac = (self.soc_pct - p.cc_until_soc_pct) / max(100.0 - p.cc_until_soc_pct, 1e-9)
        return i_cc * max(p.taper_floor, 1.0 - (1.0 - p.taper_floor) * frac)

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested or self.soc_pct >= self.params.target_soc_pct

    def request_a(self) -> float:
        if not self.plugged or not self.charging or self.stop_requested:
            return 0.0
        return self.max_current_a()

    # --- arrivals and departures ----------------------------------------------------------

    def plug_in(self) -> None:
        self.plugged = True
        self._stop_requested = False

    def unplug(self) -> None:
        self.plugged = False
        self.charging = False
        self.current_a = 0.0

    def request_stop(self) -> None:
        """The driver (or the truck) ends the session early."""
        self._stop_requested = True

    # --- VehicleLink ----------------------------------------------------------------------

    def status(self) -> VehicleStatus:
        p = self.params
        if not self.plugged:
            return VehicleStatus(plugged=False, read_at=self._clock())
        return VehicleStatus(
            plugged=True,
            ev_max_current_a=p.ev_max_current_a,
            ev_max_voltage_v=p.ev_max_voltage_v,
            target_voltage_v=min(p.ev_max_voltage_v, p.ocv_full_v + 30.0),
            present_voltage_v=self.terminal_v(self.current_a),
            request_a=self.request_a(),
            soc_pct=round(self.soc_pct, 3),
            stop_requested=self.stop_requested,
            id_token=p.id_token,
            read_at=self._clock(),
        )

    def start(self) -> None:
        if self.plugged:
            self.charging = True

    def stop(self) -> None:
        self.charging = False

    def set_available(self, current_a: float, voltage_v: float) -> None:
        self.available_a = current_a
        self.available_v = voltage_v
