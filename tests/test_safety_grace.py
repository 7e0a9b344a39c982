"""The safety monitor's grace after a lowered limit (issue 17, peak shaving): a measured value
is judged against the old limit fading to the new one over the modules' response time, never
against nothing, and a value above that envelope is still a violation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cycle_fixtures import make_config, rig, small_truck

from controller.cycle import CycleMemory, StationParams
from controller.limits import STATION, Limit
from controller.safety import SafetyMonitor, fading_limit
from power.matrix import MatrixState
from power.meters import MeterState
from power.modbus_driver import HardwareSnapshot
from power.modbus_map import ModuleStatus
from power.modules import ModuleRating, ModuleState
from sim.modules import ModuleParams

M, G = 4, 2
GRACE = 0.06
OK = int(ModuleStatus.READY | ModuleStatus.OUTPUT_ON)


def test_fading_limit_fades_linearly_from_the_old_to_the_new_limit() -> None:
    steps = [(0.0, 1_000.0), (1.0, 600.0)]
    assert fading_limit(steps, 1.0, GRACE) == pytest.approx(1_000.0)
    assert fading_limit(steps, 1.03, GRACE) == pytest.approx(800.0)
    assert fading_limit(steps, 1.06, GRACE) == pytest.approx(600.0)
    assert fading_limit(steps, 5.0, GRACE) == 600.0  # after the grace: the new one alone
    assert fading_limit(steps, 0.9, GRACE) == pytest.approx(1_000.0)  # never above the old


def test_fading_limit_increases_count_at_once_and_decreases_add_up() -> None:
    assert fading_limit([(0.0, 600.0), (1.0, 1_000.0)], 1.0, GRACE) == 1_000.0
    # two decreases 30 ms apart: both drops fade, each from its own send time
    steps = [(0.0, 1_000.0), (1.0, 800.0), (1.03, 500.0)]
    assert fading_limit(steps, 1.03, GRACE) == pytest.approx(500.0 + 300.0 + 100.0)
    assert fading_limit(steps, 1.06, GRACE) == pytest.approx(500.0 + 150.0)
    assert fading_limit(steps, 1.09, GRACE) == pytest.approx(500.0)
    # an infinite (no) cap lowered to a finite one: no limit only within the grace
    assert fading_limit([(0.0, math.inf), (1.0, 600.0)], 1.01, GRACE) == math.inf
    assert fading_limit([(0.0, math.inf), (1.0, 600.0)], 1.07, GRACE) == 600.0
    assert fading_limit([(0.0, 1_000.0), (1.0, 600.0)], 1.0, 0.0) == 600.0  # no grace
    assert fading_limit([], 1.0, GRACE) == math.inf


def _memory(t: float, cap_w: float, gun_a: float = 1_000.0) -> CycleMemory:
    return CycleMemory(t=t, applied_a=np.zeros(M), gun_limit_a=np.full(G, gun_a),
                       station_cap_w=cap_w)


def _snap(t: float, power_w: float, gun_a: float = 0.0) -> HardwareSnapshot:
    """Every meter fresh at ``t``, the station power split evenly over the guns."""
    rating = ModuleRating(40_000.0, 100.0, 150.0, 1000.0)
    mods = tuple(ModuleState(i, True, None, t, voltage_v=700.0, current_a=0.0,
                             coolant_in_c=25.0, coolant_out_c=30.0, internal_c=40.0,
                             available_current_a=100.0, status=OK, fault_code=0,
                             rating=rating) for i in range(M))
    grid = np.zeros((M, G), dtype=bool)
    mx = MatrixState(M, G, True, None, t, grid, grid.copy())
    meters = tuple(MeterState(g, True, None, t, 800.0, gun_a, power_w / G, 0.0)
                   for g in range(G))
    return HardwareSnapshot(mods, mx, meters, t, t + 0.002)


def _monitor(cap_before: float, cap_after: float, sent_at: float,
             gun_before: float = 1_000.0, gun_after: float = 1_000.0) -> SafetyMonitor:
    mon = SafetyMonitor(StationParams.from_config(make_config(M, G)), grace_s=GRACE)
    mon.remember(_memory(sent_at - 0.1, cap_before, gun_before))
    mon.sent(sent_at - 0.1 + 0.005)
    mon.remember(_memory(sent_at - 0.02, cap_after, gun_after))  # decided 20 ms before
    mon.sent(sent_at)
    return mon


def test_the_incident_power_is_judged_against_the_fading_cap() -> None:
    # issue 17: "station power 836.8 kW > cap 576 kW" 30 ms after a woken cycle lowered the
    # cap from 1,000 kW. Against the fading cap (788 kW at 30 ms, +3 % +1 kW) it is still too
    # much: the modules had not followed as fast as a 60 ms response promises.
    found = _monitor(1_000_000.0, 576_000.0, 10.0).check(_snap(10.03, 836_800.0))
    assert [v.rule for v in found] == ["station_power"]
    assert "cap 788.0 kW" in found[0].message
    # what a module with a 10 ms time constant gives at 30 ms: well inside
    assert _monitor(1_000_000.0, 576_000.0, 10.0).check(_snap(10.03, 597_000.0)) == []
    # just under and just above the envelope (788 kW · 1.03 + 1 kW = 812.6 kW)
    assert _monitor(1_000_000.0, 576_000.0, 10.0).check(_snap(10.03, 811_000.0)) == []
    assert _monitor(1_000_000.0, 576_000.0, 10.0).check(_snap(10.03, 815_000.0)) != []


def test_the_grace_ends_and_is_measured_from_the_send_not_the_decision() -> None:
    # right after the send the old cap still counts (the decision was 20 ms earlier)
    assert _monitor(1_000_000.0, 576_000.0, 10.0).check(_snap(10.0, 990_000.0)) == []
    # after the grace the new cap counts alone: 600 kW > 576 kW · 1.03 + 1 kW
    found = _monitor(1_000_000.0, 576_000.0, 10.0).check(_snap(10.061, 600_000.0))
    assert [v.rule for v in found] == ["station_power"]
    assert "cap 576.0 kW" in found[0].message
    assert _monitor(1_000_000.0, 576_000.0, 10.0).check(_snap(10.061, 590_000.0)) == []
    # one period on (the old rule let the previous cycle's cap count here): a violation
    assert _monitor(1_000_000.0, 576_000.0, 10.0).check(_snap(10.1, 700_000.0)) != []


def test_a_gun_limit_decrease_fades_the_same_way() -> None:
    mon = _monitor(math.inf, math.inf, 5.0, gun_before=800.0, gun_after=400.0)
    assert mon.check(_snap(5.03, 0.0, gun_a=590.0)) == []  # ≤ 600 A (+3 % + 2 A)
    mon = _monitor(math.inf, math.inf, 5.0, gun_before=800.0, gun_after=400.0)
    found = mon.check(_snap(5.03, 0.0, gun_a=640.0))
    assert {v.rule for v in found} == {"gun_current"}
    mon = _monitor(math.inf, math.inf, 5.0, gun_before=800.0, gun_after=400.0)
    assert mon.check(_snap(5.07, 0.0, gun_a=420.0)) != []


def test_old_steps_are_forgotten_once_faded() -> None:
    mon = SafetyMonitor(StationParams.from_config(make_config(M, G)), grace_s=GRACE)
    for i in range(40):
        mon.remember(_memory(i * 0.1, 1_000_000.0 - i * 1000.0))
        mon.sent(i * 0.1 + 0.005)
    assert len(mon._mem) <= 2


async def _charging_rig_decrease(tau_s: float) -> tuple[list[str], list[float], float]:
    """Two trucks at full power on a simulated clock, the grid cap halved, then 10 ms steps
    (the modules' current time constant ``tau_s``): the violations and station powers seen."""
    params = ModuleParams(current_tau_s=tau_s)
    async with rig([small_truck("A", target_soc_pct=95.0),
                    small_truck("B", target_soc_pct=95.0)],
                   module_params=params) as r:
        for t in r.trucks:
            t.plug_in()
        await r.until(lambda rec: rec.station_power_w > 250_000.0, max_cycles=400)
        await r.step(5)  # steady
        assert r.station.violations == 0
        high = r.records[-1].station_power_w
        low = high / 2
        now = r.clock.t
        r.station.limits.set(STATION, "grid", Limit(low, "grid", now, now + 60))
        r.dt = 0.01
        n0 = len(r.records)
        await r.step(15)
        bad = [v for rec in r.records[n0:] for v in rec.violations]
        return bad, [rec.station_power_w for rec in r.records[n0:]], low


async def test_modules_that_follow_within_the_response_time_raise_nothing() -> None:
    bad, powers, low = await _charging_rig_decrease(0.010)
    assert bad == []
    assert powers[1] > low * 1.05  # the meters did show the fall in progress
    assert powers[-1] <= low * 1.001  # and then the new cap


async def test_modules_slower_than_the_response_time_are_a_violation() -> None:
    # a 100 ms module is ten times slower than the configured 60 ms grace allows
    bad, _powers, _low = await _charging_rig_decrease(0.100)
    assert any(v.startswith("station_power") for v in bad), bad
