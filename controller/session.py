"""The gun session state machine: one pure transition function per gun and cycle.

    Available → Preparing (plugged, waiting for authorization) → CableCheck (isolation test,
    simulated) → PreCharge (match the battery voltage at ≤ 2 A) → Charging ⇄ SuspendedEVSE /
    SuspendedEV → Finishing (current ≤ 5 A, contactors open, vehicle unplugged) → Available;
    Faulted from any state, with the reason (sticky until ``clear_fault``).

The vehicle link (``VehicleStatus.read_at``): a status older than ``vehicle_timeout_s`` is
*stale* — the gun gets no current (the cycle's vehicle limits expire to 0 A) and a running
transaction waits in SuspendedEVSE, resuming when a fresh status comes; only an explicit
unplug reading, or a link silent for longer than ``vehicle_silence_s`` (*lost*), ends the
session as ``EVDisconnected``. A late or missed read must not strand a truck.

:func:`step` is pure: the cycle passes what it measured and decided (:class:`GunInputs`) and
gets the next :class:`GunSession` plus the events to publish. The power side (which modules,
how much current) is the allocator's; the session only says how much the gun may ask for
(:func:`demand_a`) and whether it keeps its contactors (:func:`wants_power`).

OCPP: each state maps onto exactly one OCPP 1.6 connector status (CableCheck and PreCharge
are phases of OCPP's "Preparing") and one OCPP 2.0.1 status ("Occupied" between Available
and Faulted).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from controller.config import StationSection
from controller.vehicle import VehicleStatus


class GunState(enum.StrEnum):
    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CABLE_CHECK = "CableCheck"
    PRECHARGE = "PreCharge"
    CHARGING = "Charging"
    SUSPENDED_EVSE = "SuspendedEVSE"
    SUSPENDED_EV = "SuspendedEV"
    FINISHING = "Finishing"
    FAULTED = "Faulted"

    @property
    def ocpp16(self) -> str:
        """OCPP 1.6 ChargePointStatus."""
        if self in (GunState.CABLE_CHECK, GunState.PRECHARGE):
            return "Preparing"
        return self.value

    @property
    def ocpp201(self) -> str:
        """OCPP 2.0.1 ConnectorStatusEnumType."""
        if self in (GunState.AVAILABLE, GunState.FAULTED):
            return self.value
        return "Occupied"


#: States in which a transaction is running (energy may flow).
ENERGY_STATES = frozenset({GunState.CHARGING, GunState.SUSPENDED_EV, GunState.SUSPENDED_EVSE})
#: States in which the gun keeps (and may get) modules.
POWER_STATES = ENERGY_STATES | {GunState.PRECHARGE}


class StopReason(enum.StrEnum):
    """Why a transaction ended (OCPP 2.0.1 ReasonEnumType names)."""

    EV_DISCONNECTED = "EVDisconnected"
    STOPPED_BY_EV = "StoppedByEV"
    EMERGENCY_STOP = "EmergencyStop"
    LOCAL = "Local"
    REMOTE = "Remote"
    TIMEOUT = "Timeout"
    OTHER = "Other"


@dataclass(frozen=True, slots=True)
class SessionTiming:
    """The configured times and thresholds the state machine uses."""

    # Defaults are the configuration model's ([station], written once, there).
    cable_check_s: float = StationSection.default_of("cable_check_s")
    precharge_tolerance_v: float = StationSection.default_of("precharge_tolerance_v")
    precharge_timeout_s: float = StationSection.default_of("precharge_timeout_s")
    finishing_timeout_s: float = StationSection.default_of("finishing_timeout_s")
    suspend_after_s: float = StationSection.default_of("suspend_after_s")
    #: cable check and finishing: "current below" (the switch threshold)
    low_current_a: float = StationSection.default_of("switch_threshold_a")
    free_charging: bool = StationSection.default_of("free_charging")
    #: link silent this long: the vehicle counts as gone
    vehicle_silence_s: float = StationSection.default_of("vehicle_silence_s")


#: Reason of the pause while the vehicle link is silent (SuspendedEVSE), and of the resume.
LINK_SILENT = "vehicle link silent"
LINK_BACK = "vehicle link back"


@dataclass(frozen=True, slots=True)
class GunSession:
    """The state of one gun; replaced (never mutated) by :func:`step`."""

    gun: int
    state: GunState = GunState.AVAILABLE
    since: float = 0.0
    reason: str | None = None
    id_token: str | None = None
    authorized: bool = False
    transaction: bool = False  # energy transfer started and not yet reported stopped
    starved_since: float | None = None
    energy_start_wh: float = 0.0


@dataclass(frozen=True, slots=True)
class GunInputs:
    """What one cycle knows about a gun, for the state machine."""

    vehicle: VehicleStatus
    vehicle_fresh: bool  # the status is recent enough to act on (else: stale, no current)
    meter_voltage_v: float  # NaN when the meter is unavailable
    meter_current_a: float
    energy_wh: float
    closed_modules: int  # contactors closed onto this gun (feedback)
    allocated_a: float  # allocator's gun current this cycle
    pool_starved: bool  # allocator bound the gun by POOL or STATION
    auth: bool | None = None  # authorization result, None while pending
    stop: str | None = None  # station-side stop request (Remote, Local, ...)
    fault: str | None = None  # emergency stop or persistent safety violation
    clear_fault: bool = False
    vehicle_lost: bool = False  # the link has been silent longer than vehicle_silence_s


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """Something observers care about (``kind``: state_changed, authorized, charging_started,
    charging_stopped)."""

    kind: str
    gun: int
    t: float
    state: GunState
    previous: GunState | None = None
    reason: str | None = None
    id_token: str | None = None
    energy_wh: float | None = None


def demand_a(session: GunSession, vehicle: VehicleStatus, precharge_a: float) -> float:
    """What this gun may ask of the allocator in its state (A)."""
    if session.state is GunState.PRECHARGE:
        return precharge_a
    if session.state in (GunState.CHARGING, GunState.SUSPENDED_EVSE):
        return max(0.0, vehicle.request_a)
    return 0.0


def wants_power(session: GunSession) -> bool:
    """True while the gun keeps its contactors; otherwise its modules are released."""
    return session.state in POWER_STATES


def _go(s: GunSession, new: GunState, now: float, reason: str | None,
        events: list[SessionEvent], **changes: object) -> GunSession:
    events.append(SessionEvent("state_changed", s.gun, now, new, s.state, reason, s.id_token))
    return replace(s, state=new, since=now, reason=reason, starved_since=None, **changes)  # type: ignore[arg-type]


def _stop_tx(s: GunSession, now: float, reason: str, energy_wh: float,
             events: list[SessionEvent]) -> GunSession:
    if not s.transaction:
        return s
    events.append(SessionEvent("charging_stopped", s.gun, now, s.state, None, reason, s.id_token,
                               max(0.0, energy_wh - s.energy_start_wh)))
    return replace(s, transaction=False)


def step(s: GunSession, inp: GunInputs, now: float, timing: SessionTiming
         ) -> tuple[GunSession, list[SessionEvent]]:
    """The gun's next session state and the events of the transition (pure)."""
    ev: list[SessionEvent] = []
    v = inp.vehicle
    fresh = inp.vehicle_fresh
    lost = inp.vehicle_lost  # silent past vehicle_silence_s: gone
    present = v.plugged and not lost  # no explicit unplug read, link not given up
    plugged = v.plugged and fresh  # enough to begin a session
    energy = inp.energy_wh if inp.energy_wh == inp.energy_wh else s.energy_start_wh
    state = s.state

    if inp.fault is not None:
        if state is GunState.FAULTED:
            return s, ev
        reason = (StopReason.EMERGENCY_STOP if inp.fault.startswith("emergency")
                  else StopReason.OTHER)
        s = _stop_tx(s, now, reason, energy, ev)
        return _go(s, GunState.FAULTED, now, inp.fault, ev), ev

    if state is GunState.FAULTED:
        if inp.clear_fault:
            return _go(s, GunState.AVAILABLE, now, "fault cleared", ev, authorized=False,
                       id_token=None), ev
        return s, ev

    if state is GunState.AVAILABLE:
        if plugged:
            s = replace(s, id_token=v.id_token, authorized=False)
            return _go(s, GunState.PREPARING, now, "vehicle plugged", ev), ev
        return s, ev

    if state in (GunState.PREPARING, GunState.CABLE_CHECK) and not present:
        return _go(s, GunState.AVAILABLE, now, StopReason.EV_DISCONNECTED, ev,
                   authorized=False, id_token=None), ev

    if state is GunState.PREPARING:
        if inp.stop is not None:
            return s, ev
        # an explicit refusal (also: an inoperative gun) wins over free charging
        ok = True if timing.free_charging and inp.auth is not False else inp.auth
        if ok:
            ev.append(SessionEvent("authorized", s.gun, now, state, None,
                                   "free charging" if timing.free_charging else None, s.id_token))
            return _go(s, GunState.CABLE_CHECK, now, "authorized", ev, authorized=True), ev
        if ok is False and s.reason != "not authorized":
            return replace(s, reason="not authorized"), ev
        return s, ev

    if state is GunState.CABLE_CHECK:
        if abs(_num(inp.meter_current_a)) >= timing.low_current_a:
            return _go(s, GunState.FAULTED, now,
                       f"cable check: {inp.meter_current_a:.1f} A flowing", ev), ev
        if inp.stop is not None:
            return _go(s, GunState.FINISHING, now, inp.stop, ev), ev
        if now - s.since >= timing.cable_check_s and fresh:
            return _go(s, GunState.PRECHARGE, now, "cable check passed (simulated)", ev), ev
        return s, ev

    if state is GunState.PRECHARGE:
        if not present or inp.stop is not None or v.stop_requested:
            pre_why = (StopReason.EV_DISCONNECTED if not present else inp.stop
                       or StopReason.STOPPED_BY_EV)
            return _go(s, GunState.FINISHING, now, pre_why, ev), ev
        matched = (fresh and inp.closed_modules > 0
                   and abs(_num(inp.meter_voltage_v) - v.present_voltage_v)
                   <= timing.precharge_tolerance_v)
        if matched:
            ev.append(SessionEvent("charging_started", s.gun, now, GunState.CHARGING, None,
                                   None, s.id_token, 0.0))
            return _go(s, GunState.CHARGING, now, "pre-charge done", ev, transaction=True,
                       energy_start_wh=energy), ev
        if now - s.since >= timing.precharge_timeout_s:
            return _go(s, GunState.FAULTED, now, "pre-charge timeout: voltage not matched", ev), ev
        return s, ev

    if state in ENERGY_STATES:
        why: str | None = None
        if not present:  # an unplug reading, or the link silent past vehicle_silence_s
            why = StopReason.EV_DISCONNECTED
        elif inp.stop is not None:
            why = inp.stop
        elif fresh and v.stop_requested:
            why = StopReason.STOPPED_BY_EV
        if why is not None:
            s = _stop_tx(s, now, why, energy, ev)
            return _go(s, GunState.FINISHING, now, why, ev), ev
        if not fresh:  # a late or missed read: pause at 0 A, keep the session
            if state is GunState.SUSPENDED_EVSE and s.reason == LINK_SILENT:
                return s, ev
            return _go(s, GunState.SUSPENDED_EVSE, now, LINK_SILENT, ev), ev
        if state is GunState.SUSPENDED_EVSE and s.reason == LINK_SILENT:
            back = (GunState.CHARGING if v.request_a > 0.0 else GunState.SUSPENDED_EV)
            return _go(s, back, now, LINK_BACK, ev), ev
        if v.request_a <= 0.0:
            if state is GunState.CHARGING and now - s.since < timing.suspend_after_s:
                return s, ev  # just started: the vehicle's first request is not in yet
            if state is not GunState.SUSPENDED_EV:
                return _go(s, GunState.SUSPENDED_EV, now, "vehicle requests 0 A", ev), ev
            return s, ev
        starved = inp.pool_starved and inp.allocated_a < 1.0
        if state is GunState.SUSPENDED_EV:
            return _go(s, GunState.CHARGING, now, "vehicle requests current", ev), ev
        if state is GunState.SUSPENDED_EVSE:
            if not starved:
                return _go(s, GunState.CHARGING, now, "power available", ev), ev
            return s, ev
        if starved:
            since = s.starved_since if s.starved_since is not None else now
            if now - since >= timing.suspend_after_s:
                return _go(s, GunState.SUSPENDED_EVSE, now, "no power available", ev), ev
            return replace(s, starved_since=since), ev
        return (replace(s, starved_since=None) if s.starved_since is not None else s), ev

    if state is GunState.FINISHING:
        idle = abs(_num(inp.meter_current_a)) <= timing.low_current_a and inp.closed_modules == 0
        if idle and not present:
            return _go(s, GunState.AVAILABLE, now, s.reason, ev, authorized=False,
                       id_token=None), ev
        if not idle and now - s.since >= timing.finishing_timeout_s:
            return _go(s, GunState.FAULTED, now, "finishing: current did not fall / contactors "
                       "did not open", ev), ev
        return s, ev
    return s, ev


def _num(x: float) -> float:
    return 0.0 if x != x else x
