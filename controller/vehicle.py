"""The vehicle link: what the charging communication controller tells the station.

In a real cabinet an SECC (ISO 15118-20 / DIN 70121) talks to the truck; the simulator
(``sim/truck.py``) stands in for both. The control cycle sees only this interface.

Contract:
- ``status()`` never blocks and never raises: it returns the latest known state, with the
  time it was read (``read_at``). ``plugged=False`` means the SECC *said* so; a link that
  cannot read keeps its last status and lets ``read_at`` age — the station pauses the gun
  at 0 A when it is older than ``station.vehicle_timeout_s`` and ends the session only
  when it is older than ``station.vehicle_silence_s`` (never on one late read).
- Commands (``start``, ``stop``, ``set_available``) never block either; they are carried out
  by the link's own I/O. ``set_available`` is sent every cycle while charging (DIN 70121
  expects a CurrentDemand answer within 25 ms, which is the SECC's job, not the cycle's).
- Currents in amperes, voltages in volts, state of charge in percent (None if unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class VehicleStatus:
    """A snapshot of one gun's vehicle."""

    plugged: bool = False
    ev_max_current_a: float = 0.0
    ev_max_voltage_v: float = 0.0
    target_voltage_v: float = 0.0
    present_voltage_v: float = 0.0
    request_a: float = 0.0
    soc_pct: float | None = None
    stop_requested: bool = False
    id_token: str | None = None
    read_at: float = 0.0


@runtime_checkable
class VehicleLink(Protocol):
    """One gun's link to its vehicle (see the module docstring for the contract)."""

    def status(self) -> VehicleStatus: ...

    def start(self) -> None:
        """The station is ready to deliver energy (after cable check and pre-charge)."""

    def stop(self) -> None:
        """The station ends the energy transfer (vehicle will see current ramp to 0)."""

    def set_available(self, current_a: float, voltage_v: float) -> None:
        """What the station can give now (EVSEPresentCurrent/-Voltage, EVSEMaxCurrent)."""
