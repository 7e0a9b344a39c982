"""Operator clear: the one entry point that acknowledges a latched gun fault.

A Faulted gun stays Faulted until someone who can see the cabinet says the cause is gone
(docs/control-cycle.md, "Operator clear"). Every way in calls :func:`clear_gun_fault`:
the backend (OCPP ChangeAvailability to Operative on the gun's EVSE / connector, 2.0.1 and
1.6), the cabinet PC (`mwc clear-fault --gun N` over the service's control socket,
``controller/control_socket.py``) and any later local UI (a "clear fault" button calls the
same function), so all of them behave and log alike.

The clear takes effect on the next control cycle: ``Station.clear_fault`` lifts the gun's
latch and the session goes Faulted → Available. If the cause is still there (a persistent
safety violation, the emergency stop), the gun faults again by itself — clearing is an
acknowledgement, not an override. The emergency stop has its own clear
(``Station.clear_emergency_stop``) and is not lifted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from controller import logs
from controller.session import GunSession, GunState

#: Who asked (logged with every clear, and shown by `mwc clear-fault`).
ClearSource = Literal["ocpp", "local", "web"]


class Clearable(Protocol):
    """What a clear needs of the station (``controller.station.Station`` has it)."""

    @property
    def sessions(self) -> tuple[GunSession, ...]: ...

    def clear_fault(self, gun: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ClearResult:
    """The outcome of one clear request, fit to show the operator as it is."""

    gun: int  # 0-based gun index (the station's); the operator's "gun N" is gun + 1
    cleared: bool  # a latched fault was acknowledged (the gun leaves Faulted next cycle)
    state: str  # the gun's session state when asked
    message: str

    def to_dict(self) -> dict[str, object]:
        return {"gun": self.gun + 1, "cleared": self.cleared, "state": self.state,
                "message": self.message}


class ClearError(ValueError):
    """A clear request that names no gun of this station."""


def clear_gun_fault(station: Clearable, gun: int, source: ClearSource) -> ClearResult:
    """Acknowledge gun ``gun``'s (0-based) fault if it is Faulted; a no-op otherwise.

    Raises :class:`ClearError` (the message names the gun and the valid range) for a gun the
    station does not have. Never raises for a gun that is not Faulted: the result says so.
    """
    sessions = station.sessions
    if not 0 <= gun < len(sessions):
        raise ClearError(f"gun {gun + 1} does not exist: this station has guns "
                         f"1..{len(sessions)}")
    s = sessions[gun]
    log = logs.get_logger("controller.operator")
    if s.state is not GunState.FAULTED:
        return ClearResult(gun, False, s.state.value,
                           f"gun {gun + 1} is {s.state.value}, not Faulted: nothing to clear")
    if s.reason is not None and s.reason.startswith("emergency"):
        return ClearResult(gun, False, s.state.value,
                           f"gun {gun + 1} is held by the emergency stop ({s.reason}); "
                           "clear the emergency stop instead")
    station.clear_fault(gun)
    log.warning("gun fault cleared by operator", gun=gun, source=source, fault=s.reason)
    return ClearResult(gun, True, s.state.value,
                       f"gun {gun + 1}: fault {s.reason!r} cleared ({source}); the gun "
                       "returns to Available on the next cycle unless the cause persists")


@runtime_checkable
class ModuleClearable(Protocol):
    """What a module clear needs of the station (``controller.station.Station`` has it)."""

    @property
    def module_count(self) -> int: ...

    @property
    def given_up_modules(self) -> list[int]: ...

    def forget_module_faults(self, module: int | None = None) -> None: ...


def clear_module_faults(station: ModuleClearable, module: int,
                        source: ClearSource) -> ClearResult:
    """Give module ``module`` (0-based) its fault resets back after the policy gave up on it
    (docs/control-cycle.md, "Latched module faults"). The module returns to the pool once
    a reset clears its latch; if the cause is still there it is given up again.
    The result's ``gun`` field carries the module index here."""
    if not 0 <= module < station.module_count:
        raise ClearError(f"module {module + 1} does not exist: this station has modules "
                         f"1..{station.module_count}")
    was = module in station.given_up_modules
    station.forget_module_faults(module)
    logs.get_logger("controller.operator").warning(
        "module fault history cleared by operator", module=module, source=source, given_up=was)
    state = "given up" if was else "in the fault policy"
    return ClearResult(module, was, state,
                       f"module {module + 1}: fault-reset history cleared ({source}); "
                       + ("it gets fault resets again" if was
                          else "it was not given up, nothing else changed"))
