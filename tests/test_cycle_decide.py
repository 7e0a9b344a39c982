"""The pure decision core on hand-made snapshots: no sockets, no simulator."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from cycle_fixtures import make_config

from controller.cycle import (
    CycleInputs,
    CycleMemory,
    StationParams,
    install_static_limits,
    vehicle_limits,
)
from controller.decide import decide
from controller.limits import LimitBook
from controller.session import GunSession, GunState
from controller.vehicle import VehicleStatus
from power.modbus_driver import HardwareSnapshot, MatrixState, MeterState, ModuleRating, ModuleState

RATING = ModuleRating(40_000.0, 100.0, 150.0, 1000.0)
OK = 0b11  # ready, output on
CFG = make_config(modules=4, guns=2)
P = StationParams.from_config(CFG)
EV = VehicleStatus(plugged=True, ev_max_current_a=400, ev_max_voltage_v=1000,
                   target_voltage_v=850, present_voltage_v=790, request_a=400, soc_pct=50,
                   id_token="T", read_at=10.0)


def snapshot(currents: list[float], closed: list[int], commanded: list[int] | None = None,
             gun_amps: tuple[float, float] = (0.0, 0.0)) -> HardwareSnapshot:
    mods = tuple(ModuleState(i, True, None, 10.0, voltage_v=790.0, current_a=c,
                             coolant_in_c=25, coolant_out_c=26, internal_c=30,
                             available_current_a=100.0, status=OK, rating=RATING)
                 for i, c in enumerate(currents))
    def grid(guns: list[int]) -> np.ndarray:
        a = np.zeros((4, 2), dtype=bool)
        for m, g in enumerate(guns):
            if g >= 0:
                a[m, g] = True
        return a
    mx = MatrixState(4, 2, True, None, 10.0, grid(closed),
                     grid(commanded if commanded is not None else closed))
    meters = tuple(MeterState(g, True, None, 10.0, 790.0, gun_amps[g], 790.0 * gun_amps[g], 0.0)
                   for g in range(2))
    return HardwareSnapshot(mods, mx, meters, 10.0, 10.0)


def inputs(snap: HardwareSnapshot, sessions: tuple[GunSession, ...],
           vehicles: tuple[VehicleStatus, ...] = (EV, VehicleStatus(read_at=10.0)),
           memory: CycleMemory | None = None, **kw: object) -> CycleInputs:
    book = LimitBook()
    install_static_limits(book, CFG)
    for g, v in enumerate(vehicles):
        vehicle_limits(book, g, v, 1.0)
    return CycleInputs(seq=1, now=10.0, wall_time="t", snapshot=snap, vehicles=vehicles,
                       sessions=sessions, limits=book,
                       memory=memory or CycleMemory(t=9.9, applied_a=np.zeros(4)),
                       **kw)  # type: ignore[arg-type]


CHARGING = (GunSession(0, GunState.CHARGING, since=0.0, transaction=True), GunSession(1))


def test_a_loaded_module_is_drained_before_its_contactor_opens() -> None:
    finishing = (GunSession(0, GunState.FINISHING, since=9.0), GunSession(1))
    d = decide(inputs(snapshot([50.0, 50.0, 0.0, 0.0], [0, 0, -1, -1]), finishing), P)
    assert d.commands.opens == []  # 50 A: no contactor may move
    assert all(a == 0.0 for _, _, a in d.commands.decreases)
    d = decide(inputs(snapshot([3.0, 0.5, 0.0, 0.0], [0, 0, -1, -1]), finishing), P)
    assert sorted(d.commands.opens) == [(0, 0), (1, 0)]  # measured ≤ 5 A: open now


def test_break_before_make_and_no_current_before_feedback() -> None:
    # module 0 still closed on gun 1 (feedback), gun 0 wants every module
    d = decide(inputs(snapshot([0.0] * 4, [1, -1, -1, -1], commanded=[-1, -1, -1, -1]),
                      CHARGING), P)
    assert all(m != 0 for m, _ in d.commands.closes)  # not while closed elsewhere
    assert {m for m, _ in d.commands.closes} == {1, 2, 3}
    assert all(a == 0.0 for _, _, a in d.commands.increases)  # no feedback yet: no current
    assert d.record.guns[0].setpoint_a == 0.0


def test_increases_follow_the_ramp_and_decreases_are_immediate() -> None:
    snap = snapshot([0.0] * 4, [0, 0, 0, 0])
    d = decide(inputs(snap, CHARGING), P)
    assert abs(sum(a for _, _, a in d.commands.increases) - 100.0) < 1e-6  # 1000 A/s × 0.1 s
    assert all(v == 850.0 for _, v, _ in d.commands.increases)  # the EV target voltage
    prev = CycleMemory(t=9.9, applied_a=np.full(4, 90.0))
    low = replace(EV, request_a=100.0)
    d = decide(inputs(snap, CHARGING, vehicles=(low, VehicleStatus(read_at=10.0)),
                      memory=prev), P)
    assert abs(d.record.guns[0].setpoint_a - 100.0) < 1e-6  # 360 → 100 A at once
    assert d.commands.increases == []


def test_emergency_zeroes_everything_and_faults_every_gun() -> None:
    snap = snapshot([50.0] * 4, [0, 0, 0, 0], gun_amps=(200.0, 0.0))
    d = decide(inputs(snap, CHARGING, memory=CycleMemory(t=9.9, applied_a=np.full(4, 50.0)),
                      emergency="emergency stop: test"), P)
    assert all(a == 0.0 for _, _, a in d.commands.decreases) and d.commands.increases == []
    assert d.commands.opens == []  # still carrying current: contactors wait
    assert [s.state for s in d.sessions] == [GunState.FAULTED, GunState.FAULTED]
    assert d.commands.vehicle_stop == [0, 1]
    assert [e.reason for e in d.events if e.kind == "charging_stopped"] == ["EmergencyStop"]


def test_record_explains_the_binding_limit() -> None:
    snap = snapshot([0.0] * 4, [0, 0, 0, 0])
    d = decide(inputs(snap, CHARGING, memory=CycleMemory(t=9.9, applied_a=np.full(4, 50.0))), P)
    g0 = d.record.guns[0]
    assert g0.binding == "POOL" and g0.binding_source == "pool"  # 4 × ~50 A < 400 A
    assert g0.modules == (0, 1, 2, 3) and d.record.cap_source in ("grid:fallback",
                                                                  "station_max:config")
