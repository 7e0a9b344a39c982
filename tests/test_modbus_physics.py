"""Pure simulator physics, stepped deterministically (no sockets)."""

from __future__ import annotations

import math

import pytest

from power.modbus_map import MatrixFault, ModuleFault, ModuleStatus
from sim.modules import ModuleParams
from sim.physics import ConstantVoltageLoad, GunLoad, StationPhysics


def _run(ph: StationPhysics, seconds: float, step: float = 0.001) -> None:
    for _ in range(round(seconds / step)):
        ph.step(step)


def _charge(ph: StationPhysics, m: int, g: int, amps: float, volts: float = 800.0) -> None:
    """Command module m onto gun g at ``amps`` with the physics API (like the Modbus layer)."""
    assert ph.matrix.write_coils(ph.t, m * ph.guns + g, [True])
    mod = ph.modules[m]
    assert mod.write_holding(ph.t, voltage_setpoint_v=volts, current_limit_a=amps, enable=1,
                             watchdog_ms=0, fault_reset=0) is None


def test_efficiency_curve_about_96_percent_at_mid_load() -> None:
    p = ModuleParams()
    assert p.efficiency(20_000) == pytest.approx(0.96, abs=0.003)
    assert 0.95 < p.efficiency(40_000) < 0.96
    assert p.efficiency(4_000) < p.efficiency(20_000)


def test_current_follows_setpoint_with_first_order_lag() -> None:
    ph = StationPhysics(1, 1)
    _charge(ph, 0, 0, 50.0)
    while not ph.matrix.closed[0]:  # the contactor closes after 15 ms
        ph.step(0.0005)
    _run(ph, 0.010, 0.0005)  # one time constant after the ramp started
    i = ph.modules[0].current_a
    assert (1 - math.exp(-1)) * 50 == pytest.approx(i, abs=1.5)
    _run(ph, 0.1)
    assert ph.modules[0].current_a == pytest.approx(50.0, abs=0.01)
    assert ph.modules[0].voltage_v == pytest.approx(600.0 + 50.0 * 0.01, abs=0.01)


def test_current_capped_by_power_and_cv_foldback() -> None:
    ph = StationPhysics(1, 1, loads=[ConstantVoltageLoad(900.0, 0.0)])
    _charge(ph, 0, 0, 100.0, volts=1000.0)
    _run(ph, 0.2)
    assert ph.modules[0].current_a == pytest.approx(40_000 / 900.0, rel=1e-3)
    # Setpoint at the battery voltage: no current flows (constant-voltage mode).
    ph.modules[0].voltage_setpoint_v = 900.0
    _run(ph, 0.2)
    assert ph.modules[0].current_a < 0.01


def test_coolant_steady_state_and_lagging_internal_temperature() -> None:
    p = ModuleParams(internal_heat_capacity_j_per_k=300.0)  # fast, to reach steady state
    ph = StationPhysics(1, 1, p, chiller_c=25.0)
    _charge(ph, 0, 0, 50.0)
    _run(ph, 0.1, 0.001)
    internal_early = ph.modules[0].internal_c
    _run(ph, 60.0, 0.05)
    mod = ph.modules[0]
    mcp = p.coolant_flow_lpm / 60.0 * p.coolant_heat_capacity_j_per_l_k
    assert mod.coolant_out_c == pytest.approx(25.0 + mod.losses_w / mcp, abs=0.05)
    assert mod.internal_c > internal_early
    assert mod.internal_c == pytest.approx(mod.coolant_out_c + mod.losses_w / 150.0, abs=0.1)


def test_derating_is_linear_between_55_and_75_c() -> None:
    ph = StationPhysics(1, 1)
    mod = ph.modules[0]
    for temp, expect in ((50.0, 100.0), (55.0, 100.0), (65.0, 50.0), (75.0, 0.0), (78.0, 0.0)):
        mod.internal_c = temp
        mod.step(1e-6, ph.t, None, 25.0)
        assert mod.available_current_a == pytest.approx(expect, abs=0.01), temp
    mod.internal_c = 65.0
    mod.step(1e-6, ph.t, None, 25.0)
    assert mod.status & ModuleStatus.DERATING


def test_pump_failure_heats_up_and_derates() -> None:
    p = ModuleParams(internal_heat_capacity_j_per_k=1500.0)
    ph = StationPhysics(1, 1, p)
    _charge(ph, 0, 0, 100.0)
    _run(ph, 1.0, 0.01)
    before = ph.modules[0].internal_c
    ph.set_pump_failure()
    _run(ph, 120.0, 0.05)
    mod = ph.modules[0]
    assert mod.internal_c > before + 20
    assert mod.coolant_out_c > 40
    assert mod.available_current_a < 100.0
    assert mod.current_a <= mod.available_current_a + 0.5


def test_overtemperature_trips_and_reset_needs_cool_down() -> None:
    ph = StationPhysics(1, 1)
    mod = ph.modules[0]
    mod.internal_c = 81.0
    ph.step(0.001)
    assert mod.fault_code == ModuleFault.OVER_TEMPERATURE
    assert mod.status & ModuleStatus.OVER_TEMPERATURE and mod.status & ModuleStatus.FAULT
    mod.reset_fault()
    assert mod.faulted  # still hot
    mod.internal_c = 40.0
    mod.reset_fault()
    assert not mod.faulted


def test_watchdog_switches_output_off_until_reenabled() -> None:
    ph = StationPhysics(1, 1)
    mod = ph.modules[0]
    assert mod.write_holding(ph.t, voltage_setpoint_v=700, current_limit_a=10, enable=1,
                             watchdog_ms=100, fault_reset=0) is None
    _run(ph, 0.09)
    assert mod.output_on
    _run(ph, 0.02)
    assert not mod.output_on and mod.watchdog_expired
    # A setpoint write alone does not restart the output; enable = 1 does.
    mod.write_holding(ph.t, voltage_setpoint_v=700, current_limit_a=10, enable=0,
                      watchdog_ms=100, fault_reset=0)
    assert not mod.output_on
    mod.write_holding(ph.t, voltage_setpoint_v=700, current_limit_a=10, enable=1,
                      watchdog_ms=100, fault_reset=0)
    assert mod.output_on and not mod.watchdog_expired


def test_write_holding_refuses_nonsense() -> None:
    mod = StationPhysics(1, 1).modules[0]
    kw = dict(voltage_setpoint_v=700.0, current_limit_a=10.0, enable=1, watchdog_ms=0,
              fault_reset=0)
    assert "voltage" in (mod.write_holding(0.0, **{**kw, "voltage_setpoint_v": math.nan}) or "")
    assert "current" in (mod.write_holding(0.0, **{**kw, "current_limit_a": 500.0}) or "")
    assert "enable" in (mod.write_holding(0.0, **{**kw, "enable": 7}) or "")


def test_interlock_and_break_before_make() -> None:
    ph = StationPhysics(2, 2)
    mx = ph.matrix
    assert mx.write_coils(ph.t, 0, [True])  # module 0 -> gun 0
    assert not mx.write_coils(ph.t, 1, [True])  # module 0 -> gun 1 refused
    assert mx.fault_word & MatrixFault.INTERLOCK_REFUSED
    assert mx.write_coils(ph.t, 0, [False])  # open, but feedback not yet open ...
    assert not mx.fault_word & MatrixFault.INTERLOCK_REFUSED
    _run(ph, 0.05)  # (it closed after 15 ms, opened 10 ms after the coil dropped)
    assert mx.write_coils(ph.t, 1, [True])
    assert mx.write_coils(ph.t, 2, [True])  # module 1 -> gun 0 is independent


def test_multi_coil_write_moving_module_is_refused_while_closed() -> None:
    ph = StationPhysics(1, 2)
    assert ph.matrix.write_coils(ph.t, 0, [True])
    _run(ph, 0.05)
    # Open gun 0 and close gun 1 in one request: feedback still closed on gun 0 -> refused.
    assert not ph.matrix.write_coils(ph.t, 0, [False, True])
    assert ph.matrix.coils == [True, False]


def test_welded_contact_stays_closed_and_sets_fault_bit() -> None:
    ph = StationPhysics(1, 2)
    assert ph.matrix.write_coils(ph.t, 0, [True])
    _run(ph, 0.05)
    ph.set_welded(0, 0)
    ph.matrix.write_coils(ph.t, 0, [False])
    _run(ph, 0.05)
    assert ph.matrix.closed[0]
    assert ph.matrix.fault_word & MatrixFault.WELDED_CONTACT
    assert not ph.matrix.write_coils(ph.t, 1, [True])  # still closed on gun 0


def test_hot_switching_is_logged() -> None:
    ph = StationPhysics(1, 1)
    _charge(ph, 0, 0, 50.0)
    _run(ph, 0.2)
    assert ph.hot_switches() == []  # closed at zero current
    ph.matrix.write_coils(ph.t, 0, [False])  # opened under load
    _run(ph, 0.05)
    hot = ph.hot_switches()
    assert len(hot) == 1 and not hot[0].closed and hot[0].current_a > 40


def test_meter_integrates_energy() -> None:
    ph = StationPhysics(1, 1, loads=[ConstantVoltageLoad(600.0, 0.0)])
    _charge(ph, 0, 0, 60.0)
    _run(ph, 0.5, 0.001)
    e0 = ph.meters[0].energy_wh
    _run(ph, 36.0, 0.01)
    assert ph.meters[0].energy_wh - e0 == pytest.approx(360.0, rel=1e-3)  # 36 kW·36 s
    assert ph.meters[0].power_w == pytest.approx(36_000, rel=1e-3)


def test_pluggable_load() -> None:
    class Battery:
        def __init__(self) -> None:
            self.v = 500.0

        def voltage_at(self, current_a: float, dt: float) -> float:
            self.v += current_a * dt * 0.01
            return self.v

    bat = Battery()
    assert isinstance(bat, GunLoad)
    ph = StationPhysics(1, 1, loads=[bat])
    _charge(ph, 0, 0, 100.0)
    _run(ph, 1.0, 0.01)
    assert bat.v > 500.5


def test_control_commands() -> None:
    ph = StationPhysics(2, 2)
    assert ph.apply_command(5, 0xFFFF, 0) is None  # pump failure, all
    assert all(m.flow_factor == 0 for m in ph.modules)
    assert ph.apply_command(3, 1, 42) is None
    assert ph.modules[1].fault_code == 42
    assert ph.apply_command(1, 7, 0) is not None  # no module 7
    assert ph.apply_command(99, 0, 0) is not None
