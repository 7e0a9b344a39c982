"""The gun session state machine, as a pure function (no hardware)."""

from __future__ import annotations

from dataclasses import replace

from controller.session import (
    GunInputs,
    GunSession,
    GunState,
    SessionTiming,
    demand_a,
    step,
    wants_power,
)
from controller.vehicle import VehicleStatus

T = SessionTiming(cable_check_s=0.5, free_charging=True)
EV = VehicleStatus(plugged=True, ev_max_current_a=1500, ev_max_voltage_v=1000,
                   target_voltage_v=850, present_voltage_v=700, request_a=800, soc_pct=50,
                   id_token="TOK", read_at=0.0)


def inputs(**kw: object) -> GunInputs:
    base: dict[str, object] = dict(vehicle=EV, vehicle_fresh=True, meter_voltage_v=700.0,
                                   meter_current_a=0.0, energy_wh=100.0, closed_modules=0,
                                   allocated_a=800.0, pool_starved=False)
    base.update(kw)
    return GunInputs(**base)  # type: ignore[arg-type]


def run(s: GunSession, inp: GunInputs, t: float, timing: SessionTiming = T) -> GunSession:
    new, _ = step(s, inp, t, timing)
    return new


def test_full_session_walks_every_state_and_emits_transaction_events() -> None:
    s = GunSession(0)
    events = []
    seq = [
        (inputs(), 0.0, GunState.PREPARING),
        (inputs(), 0.1, GunState.CABLE_CHECK),
        (inputs(), 0.3, GunState.CABLE_CHECK),
        (inputs(), 0.7, GunState.PRECHARGE),
        (inputs(closed_modules=1, meter_voltage_v=690.0), 0.8, GunState.CHARGING),
        (inputs(vehicle=replace(EV, request_a=0.0)), 2.5, GunState.SUSPENDED_EV),
        (inputs(), 2.6, GunState.CHARGING),
        (inputs(vehicle=replace(EV, stop_requested=True), energy_wh=900.0), 3.0,
         GunState.FINISHING),
        (inputs(vehicle=VehicleStatus(plugged=False)), 3.1, GunState.AVAILABLE),
    ]
    for inp, t, want in seq:
        s, ev = step(s, inp, t, T)
        events += ev
        assert s.state is want, (t, s)
    kinds = [e.kind for e in events]
    assert kinds.count("authorized") == 1 and kinds.count("charging_started") == 1
    stopped = [e for e in events if e.kind == "charging_stopped"]
    assert len(stopped) == 1 and stopped[0].reason == "StoppedByEV"
    assert stopped[0].energy_wh == 800.0 and stopped[0].id_token == "TOK"


def test_ocpp_status_mapping() -> None:
    assert GunState.CABLE_CHECK.ocpp16 == GunState.PRECHARGE.ocpp16 == "Preparing"
    assert GunState.SUSPENDED_EVSE.ocpp16 == "SuspendedEVSE"
    assert GunState.CHARGING.ocpp201 == "Occupied" and GunState.FAULTED.ocpp201 == "Faulted"
    assert {s.ocpp16 for s in GunState} == {"Available", "Preparing", "Charging",
                                            "SuspendedEVSE", "SuspendedEV", "Finishing",
                                            "Faulted"}


def test_authorization_callback_gates_the_cable_check() -> None:
    t = replace(T, free_charging=False)
    s = run(GunSession(0), inputs(), 0.0, t)
    assert s.state is GunState.PREPARING
    assert run(s, inputs(auth=None), 0.1, t).state is GunState.PREPARING
    rejected = run(s, inputs(auth=False), 0.1, t)
    assert rejected.state is GunState.PREPARING and rejected.reason == "not authorized"
    assert run(s, inputs(auth=True), 0.2, t).state is GunState.CABLE_CHECK


def test_faults_from_any_state_are_sticky_until_cleared() -> None:
    charging = GunSession(0, GunState.CHARGING, since=0.0, transaction=True,
                          energy_start_wh=0.0)
    s, ev = step(charging, inputs(fault="emergency stop: button"), 1.0, T)
    assert s.state is GunState.FAULTED and s.reason == "emergency stop: button"
    assert [e.reason for e in ev if e.kind == "charging_stopped"] == ["EmergencyStop"]
    assert run(s, inputs(), 2.0).state is GunState.FAULTED
    assert run(s, inputs(clear_fault=True), 3.0).state is GunState.AVAILABLE
    for state in GunState:
        assert run(GunSession(0, state), inputs(fault="x"), 1.0).state is GunState.FAULTED


def test_cable_check_fails_on_current_and_precharge_times_out() -> None:
    cc = GunSession(0, GunState.CABLE_CHECK, since=0.0)
    assert run(cc, inputs(meter_current_a=8.0), 0.1).state is GunState.FAULTED
    pc = GunSession(0, GunState.PRECHARGE, since=0.0)
    far = inputs(closed_modules=1, meter_voltage_v=500.0)
    assert run(pc, far, 5.0).state is GunState.PRECHARGE
    assert run(pc, far, 10.0).state is GunState.FAULTED


def test_suspended_evse_after_being_starved_and_back() -> None:
    s = GunSession(0, GunState.CHARGING, since=0.0, transaction=True)
    starved = inputs(allocated_a=0.0, pool_starved=True)
    s = run(s, starved, 5.0)
    assert s.state is GunState.CHARGING and s.starved_since == 5.0
    s = run(s, starved, 6.0)
    assert s.state is GunState.SUSPENDED_EVSE
    assert run(s, inputs(), 6.1).state is GunState.CHARGING


def test_stale_link_unplug_and_station_stop_end_the_transaction() -> None:
    s = GunSession(0, GunState.CHARGING, since=0.0, transaction=True)
    cases = [(inputs(vehicle_fresh=False, vehicle_lost=True), "EVDisconnected"),
             (inputs(vehicle=VehicleStatus(plugged=False)), "EVDisconnected"),
             (inputs(stop="Remote"), "Remote")]
    for inp, reason in cases:
        new, ev = step(s, inp, 1.0, T)
        assert new.state is GunState.FINISHING and not new.transaction
        assert [e.reason for e in ev if e.kind == "charging_stopped"] == [reason]


def test_finishing_waits_for_low_current_open_contactors_and_unplug() -> None:
    f = GunSession(0, GunState.FINISHING, since=0.0)
    gone = VehicleStatus(plugged=False)
    assert run(f, inputs(vehicle=gone, meter_current_a=40.0), 0.1).state is GunState.FINISHING
    assert run(f, inputs(vehicle=gone, closed_modules=1), 0.1).state is GunState.FINISHING
    assert run(f, inputs(), 0.1).state is GunState.FINISHING  # still plugged
    assert run(f, inputs(vehicle=gone), 0.1).state is GunState.AVAILABLE
    assert run(f, inputs(meter_current_a=40.0), 6.0).state is GunState.FAULTED


def test_demand_and_power_by_state() -> None:
    assert demand_a(GunSession(0, GunState.PRECHARGE), EV, 2.0) == 2.0
    assert demand_a(GunSession(0, GunState.CHARGING), EV, 2.0) == 800.0
    assert demand_a(GunSession(0, GunState.FINISHING), EV, 2.0) == 0.0
    assert wants_power(GunSession(0, GunState.SUSPENDED_EV))
    assert not wants_power(GunSession(0, GunState.FINISHING))
