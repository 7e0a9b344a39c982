"""Fail-safe pieces on their own (issue 14): the stale-data rule in the safety monitor and
the module view, the fault-reset policy, log folding, and a comm-caused gun fault clearing
itself — the last against the real Modbus simulators on a simulated clock."""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

import numpy as np
from cycle_fixtures import make_config, rig, small_truck

from controller.clock import SimClock
from controller.cycle import StationParams, module_view
from controller.logfold import DeviceErrorFolder, HardwareSummary
from controller.logs import LibraryFold
from controller.module_faults import ModuleFaultPolicy
from controller.safety import SafetyMonitor
from controller.session import GunState
from power.matrix import MatrixState
from power.meters import MeterState
from power.modbus_driver import HardwareSnapshot
from power.modbus_map import ModuleStatus
from power.modules import ModuleRating, ModuleState

M, G = 4, 2
RATING = ModuleRating(40_000.0, 100.0, 150.0, 1000.0)
OK = int(ModuleStatus.READY | ModuleStatus.OUTPUT_ON)


def _mod(i: int, amps: float, available: bool = True, reason: str | None = None,
         status: int = OK, code: int = 0) -> ModuleState:
    return ModuleState(i, available, reason, 0.0, voltage_v=700.0, current_a=amps,
                       coolant_in_c=25.0, coolant_out_c=30.0, internal_c=40.0,
                       available_current_a=100.0, status=status, fault_code=code,
                       rating=RATING)


def _snap(amps: list[float], closed: list[tuple[int, int]], *, mods_ok: bool = True,
          matrix_ok: bool = True, reason: str | None = None) -> HardwareSnapshot:
    grid = np.zeros((M, G), dtype=bool)
    for m, g in closed:
        grid[m, g] = True
    mods = tuple(_mod(i, a, mods_ok, None if mods_ok else "no answer") for i, a in
                 enumerate(amps))
    mx = MatrixState(M, G, matrix_ok, reason if matrix_ok else "no answer", 0.0, grid,
                     grid.copy())
    meters = tuple(MeterState(g, False, "no answer", 0.0) for g in range(G))
    return HardwareSnapshot(mods, mx, meters, 0.0, 0.0)


def _params() -> StationParams:
    return StationParams.from_config(make_config(M, G))


# ----------------------------------------------------------------------- stale data
def test_no_hot_switch_judged_on_pre_outage_currents() -> None:
    mon = SafetyMonitor(_params())
    assert mon.check(_snap([90.0] * M, [(0, 0), (1, 0), (2, 1), (3, 1)])) == []
    # everything silent (a killed simulator), then back: fresh process, coils open, 0 A
    assert mon.check(_snap([90.0] * M, [(0, 0), (1, 0), (2, 1), (3, 1)], mods_ok=False,
                           matrix_ok=False)) == []
    assert mon.check(_snap([0.0] * M, [])) == []
    assert mon.by_rule["hot_switch"] == 0


def test_a_switch_between_fresh_polls_at_load_is_still_a_violation() -> None:
    mon = SafetyMonitor(_params())
    mon.check(_snap([90.0] * M, [(0, 0)]))
    found = mon.check(_snap([90.0] * M, []))
    assert [v.rule for v in found] == ["hot_switch"]


def test_stale_matrix_poll_is_not_a_baseline() -> None:
    mon = SafetyMonitor(_params())
    mon.check(_snap([90.0] * M, [(0, 0)]))
    assert mon.check(_snap([90.0] * M, [(0, 0)], reason="stale: timeout")) == []
    assert mon.check(_snap([0.0] * M, [])) == []


def test_unknown_current_cannot_be_switched() -> None:
    p = _params()
    lost = _snap([0.0] * M, [], mods_ok=False)
    mv = module_view(lost, p)
    assert (mv.current_a > p.switch_threshold_a).all()  # 0 A last-known is not "low"
    assert (mv.max_a == 0).all()  # and not counted as available
    stale = replace_reason(_snap([0.0] * M, []), "stale: one missed poll")
    mv = module_view(stale, p)
    assert (mv.current_a > p.switch_threshold_a).all()
    assert math.isnan(stale.modules[0].known_current_a)


def replace_reason(snap: HardwareSnapshot, reason: str) -> HardwareSnapshot:
    from dataclasses import replace

    return replace(snap, modules=tuple(replace(m, reason=reason) for m in snap.modules))


# ----------------------------------------------------------------------- fault policy
FAULT = OK | int(ModuleStatus.FAULT)


def test_fault_reset_waits_backoff_then_probes_while_latched() -> None:
    pol = ModuleFaultPolicy(1, tries=3, backoff_s=1.0)
    resets, ev = pol.step([_mod(0, 0.0, status=FAULT, code=5)], 0.0)
    assert resets == [] and [e.action for e in ev] == ["faulted"]
    assert pol.step([_mod(0, 0.0, status=FAULT, code=5)], 0.9)[0] == []
    assert pol.step([_mod(0, 0.0, status=FAULT, code=5)], 1.0)[0] == [0]
    assert pol.step([_mod(0, 0.0, status=FAULT, code=5)], 1.5)[0] == []
    assert pol.step([_mod(0, 0.0, status=FAULT, code=5)], 2.0)[0] == [0]  # a probe
    # unreachable: not judged, no reset
    assert pol.step([_mod(0, 0.0, False, "lost", status=FAULT, code=5)], 9.0)[0] == []
    resets, ev = pol.step([_mod(0, 0.0)], 9.1)
    assert [e.action for e in ev] == ["cleared"] and ev[0].tries == 1
    assert pol.given_up == []


def test_no_reset_while_the_cause_is_visible() -> None:
    pol = ModuleFaultPolicy(1, backoff_s=0.5)
    hot = FAULT | int(ModuleStatus.OVER_TEMPERATURE)
    for t in range(10):
        assert pol.step([_mod(0, 0.0, status=hot, code=1)], float(t))[0] == []
    assert pol.step([_mod(0, 0.0, status=FAULT, code=1)], 10.0)[0] == [0]


def test_module_that_keeps_faulting_is_given_up_with_backoff() -> None:
    pol = ModuleFaultPolicy(1, tries=3, backoff_s=1.0, window_s=60.0)
    t, waits, events = 0.0, [], []
    for _ in range(4):
        events += pol.step([_mod(0, 0.0, status=FAULT, code=5)], t)[1]
        t0 = t
        while True:
            t += 0.25
            resets, ev = pol.step([_mod(0, 0.0, status=FAULT, code=5)], t)
            events += ev
            if resets or pol.given_up:
                break
            assert t < t0 + 100
        if pol.given_up:
            break
        waits.append(t - t0)
        t += 0.25
        events += pol.step([_mod(0, 0.0)], t)[1]  # the reset cleared it ...
        t += 1.0  # ... and it faults again soon
    assert waits == [1.0, 2.0, 4.0]
    assert pol.given_up == [0]
    assert any(e.action == "gave_up" for e in events)
    assert pol.step([_mod(0, 0.0, status=FAULT, code=5)], t + 50)[0] == []  # no more resets
    assert [e.action for e in pol.forget(0, t + 51)] == ["forgotten"]
    assert pol.step([_mod(0, 0.0, status=FAULT, code=5)], t + 51)[0] == [0]


def test_zero_tries_never_resets() -> None:
    pol = ModuleFaultPolicy(1, tries=0)
    _r, ev = pol.step([_mod(0, 0.0, status=FAULT, code=5)], 0.0)
    assert [e.action for e in ev] == ["faulted", "gave_up"]
    assert pol.step([_mod(0, 0.0, status=FAULT, code=5)], 100.0)[0] == []


# ----------------------------------------------------------------------- log folding
class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    info = warning


def test_device_errors_fold_to_one_line_per_device_per_interval() -> None:
    log, clock = _Log(), SimClock(0.0)
    fold = DeviceErrorFolder(log, 10.0, clock)
    for _ in range(300):  # 30 s of 10 Hz cycles, 48 modules silent
        for m in range(48):
            fold.error(f"module {m}", "connect refused")
        fold.flush()
        clock.t += 0.1
    per_device = [kw for e, kw in log.lines if kw["device"] == "module 7"]
    assert 3 <= len(per_device) <= 4, per_device
    assert log.lines[0][0] == "device error"
    repeated = [kw for e, kw in log.lines if e == "device errors repeated"]
    assert repeated and repeated[0]["count"] >= 99
    assert len(log.lines) <= 48 * 4


def test_station_summary_line() -> None:
    log, clock = _Log(), SimClock(0.0, wall_start=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    summ = HardwareSummary(log, 10.0, clock, wall=clock.wall)
    down = _snap([0.0] * M, [], mods_ok=False, matrix_ok=False)
    for _ in range(200):
        summ.update(down)
        clock.t += 0.1
    lines = [kw["summary"] for e, kw in log.lines if e == "hardware unreachable"]
    assert len(lines) == 2
    assert f"{M} of {M} modules unreachable since 2026-01-01T00:00:00Z" in lines[0]
    assert "matrix unreachable" in lines[0]
    summ.update(_snap([0.0] * M, []))
    assert log.lines[-1][0] == "hardware reachable" or "meters" in summ.last_line


def test_library_warnings_fold() -> None:
    f = LibraryFold(10.0)

    def rec(port: int, t: float, name: str = "pymodbus.logging") -> logging.LogRecord:
        r = logging.LogRecord(name, logging.WARNING, __file__, 1,
                              "Failed to connect ('127.0.0.1', %d)", (port,), None)
        r.created = t
        return r

    passed = [f.filter(rec(15020 + i % 48, i * 0.01)) for i in range(480)]
    assert sum(passed) == 1
    late = rec(15020, 11.0)
    assert f.filter(late) and "479 more like this" in late.getMessage()
    assert f.filter(rec(1, 0.0, name="controller.station"))


# ----------------------------------------------------------------------- comm-caused fault
async def test_comm_caused_gun_fault_clears_when_devices_answer() -> None:
    async with rig([small_truck("A", target_soc_pct=99.0)], modules=4,
                   finishing_timeout_s=1.0) as r:
        r.trucks[0].plug_in()
        await r.until(lambda rec: rec.guns[0].state == "Charging" and rec.guns[0].current_a > 50)
        r.trucks[0].request_stop()
        await r.sim.stop()  # the hardware goes silent as the session finishes
        await r.until(lambda rec: rec.guns[0].state == "Faulted", 100)
        assert r.station.recovery.comm_faults  # marked as caused by lost communication
        await r.step(10)
        assert r.station.sessions[0].state is GunState.FAULTED  # not while still silent
        await r.sim.start()
        await r.until(lambda rec: rec.guns[0].state != "Faulted", 50)
        cleared = [e for e in r.events if getattr(e, "kind", "") == "state_changed"
                   and getattr(e, "reason", "") == "fault cleared"]
        assert cleared
        r.assert_safe()


def test_module_fault_events_go_out_on_the_mqtt_events_topic() -> None:
    import json

    from controller.module_faults import ModuleFaultEvent
    from controller.mqtt import MqttConfig, MqttConnection
    from controller.telemetry import TelemetryPublisher

    tp = TelemetryPublisher(MqttConnection(MqttConfig(port=1), "ST1"))  # never connected
    tp.observe(ModuleFaultEvent(7, 1.0, "gave_up", 5, 3, "faulted again after 3 resets"))
    (ev,) = [json.loads(p) for p in tp._events]
    assert ev["kind"] == "module_fault" and ev["module"] == 7 and ev["action"] == "gave_up"
    assert ev["code"] == 5 and ev["tries"] == 3
