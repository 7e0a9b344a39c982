"""The truck simulator: battery physics, charging curve, vehicle link."""

from __future__ import annotations

import itertools

import pytest

from controller.clock import SimClock
from controller.vehicle import VehicleLink
from sim.physics import GunLoad
from sim.truck import PRESETS, TruckParams, TruckSim


def test_truck_is_both_a_vehicle_link_and_a_gun_load() -> None:
    truck = TruckSim()
    assert isinstance(truck, VehicleLink)
    assert isinstance(truck, GunLoad)


def test_unplugged_truck_asks_for_nothing_and_shows_no_voltage() -> None:
    truck = TruckSim()
    assert truck.status().plugged is False
    assert truck.voltage_at(100.0, 1.0) == 0.0
    assert truck.soc_pct == truck.params.start_soc_pct


def test_constant_current_then_taper_then_stop_at_target() -> None:
    p = TruckParams(capacity_kwh=100.0, start_soc_pct=70.0, target_soc_pct=90.0,
                    ev_max_current_a=150.0)
    truck = TruckSim(p)
    truck.plug_in()
    truck.start()
    assert truck.request_a() == pytest.approx(150.0)  # CC phase below 75 %
    seen = []
    while not truck.status().stop_requested:
        req = truck.request_a()
        seen.append((truck.soc_pct, req))
        truck.voltage_at(req, 1.0)
    assert truck.soc_pct >= 90.0
    tapering = [r for s, r in seen if s > 76.0]
    assert tapering and all(b <= a for a, b in itertools.pairwise(tapering))
    assert tapering[-1] < 150.0 * 0.75
    assert truck.request_a() == 0.0


def test_energy_and_voltage_follow_the_battery_model() -> None:
    p = TruckParams(capacity_kwh=600.0, start_soc_pct=50.0, r_internal_ohm=0.02)
    truck = TruckSim(p)
    truck.plug_in()
    ocv = truck.ocv_v()
    v = truck.voltage_at(1000.0, 3600.0 / 1000)  # 1000 A for 3.6 s
    assert v == pytest.approx(ocv + 1000 * 0.02)
    assert truck.energy_wh == pytest.approx(v * 1000 * 3.6 / 3600)
    assert truck.soc_pct == pytest.approx(50.0 + ocv * 1.0 / 6000.0, rel=1e-9)


def test_ocv_rises_monotonically_with_soc() -> None:
    truck = TruckSim()
    last = 0.0
    for soc in range(0, 101, 2):
        truck.soc_pct = float(soc)
        v = truck.ocv_v()
        assert v > last
        last = v
    assert last == pytest.approx(truck.params.ocv_full_v)


def test_status_carries_the_clock_and_the_token() -> None:
    clock = SimClock(0.0)
    truck = TruckSim(PRESETS["man_mcs"], clock=clock)
    truck.plug_in()
    clock.t = 12.5
    st = truck.status()
    assert st.read_at == 12.5
    assert st.ev_max_current_a == 1000.0
    assert st.id_token == "TRUCK-A"
    truck.request_stop()
    assert truck.status().stop_requested


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="ocv_empty_v"):
        TruckParams(ocv_empty_v=900.0, ocv_full_v=800.0)
    with pytest.raises(ValueError, match="capacity_kwh"):
        TruckParams(capacity_kwh=0.0)
