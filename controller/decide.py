"""The pure decision core of the control cycle: ``decide(inputs, params) -> Decision``.

No I/O, no clock: everything comes in through :class:`controller.cycle.CycleInputs`, so one
cycle can be replayed and tested on its own. Order of the work:

1. sessions step (:mod:`controller.session`) on the measured values and last cycle's
   allocation, so a stop or an unplug takes effect in the same cycle;
2. module availability and the limit combination (:mod:`controller.cycle`);
3. ``allocate`` (the target);
4. the applied setpoints: decreases immediately, increases within the ramp rate, current only
   on modules whose contactor feedback is closed on their gun, 0 for the safety monitor's cuts
   and under an emergency stop;
5. contactor changes only for modules *measured* at or below the threshold, break before make;
6. the explanation record.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from controller.cycle import (
    F8,
    I8,
    Commands,
    CycleInputs,
    CycleMemory,
    Decision,
    GunLimits,
    ModuleView,
    StationParams,
    gun_limits,
    module_view,
)
from controller.limits import STATION, LimitKey
from controller.records import CycleRecord, GunRecord, ModuleRecord
from controller.session import (
    ENERGY_STATES,
    GunInputs,
    GunSession,
    GunState,
    SessionEvent,
    demand_a,
    step,
    wants_power,
)
from power.allocator import Binding, allocate

_BINDING_NAMES = {int(b): b.name for b in Binding}


def _gun_voltage_setpoint(s: GunSession, inp: CycleInputs, g: int, p: StationParams,
                          module_max_v: float) -> float:
    """Module voltage setpoint for gun g: battery voltage in pre-charge, else the EV target."""
    v = inp.vehicles[g]
    if s.state is GunState.PRECHARGE:
        want = v.present_voltage_v
    else:
        want = v.target_voltage_v if v.target_voltage_v > 0 else v.ev_max_voltage_v
        if v.ev_max_voltage_v > 0:
            want = min(want, v.ev_max_voltage_v)
    return max(0.0, min(want, p.gun_max_voltage_v[g], module_max_v))


VOLTAGE_STEP_V = 10.0


def _quantize(v: float) -> float:
    """Gun voltage for the allocator, rounded *up* to 10 V: conservative for the power limits,
    since the battery voltage rises with the current (I x R) between two cycles."""
    return math.ceil(v / VOLTAGE_STEP_V) * VOLTAGE_STEP_V if v > 0 else 0.0


def _cover_pending(target: F8, live: npt.NDArray[np.bool_], next_gun: I8, mv: ModuleView,
                   volt: F8, g_n: int) -> F8:
    """Current planned on modules not yet closed onto their gun goes to the gun's live modules
    (within their capacity), so waiting for contactor feedback does not dip the gun."""
    out = np.where(live, target, 0.0)
    for g in range(g_n):
        on = next_gun == g
        missing = float(target[on & ~live].sum())
        if missing <= 1e-9:
            continue
        v = float(volt[g])
        cap = np.minimum(mv.max_a, mv.max_w / v) if v > 1.0 else mv.max_a.copy()
        room = np.where(on & live, np.maximum(cap * (1 - 1e-9) - out, 0.0), 0.0)
        total = float(room.sum())
        if total > 1e-9:
            out += room * min(1.0, missing / total)
    return out


def _ghosts(inp: CycleInputs, p: StationParams, mv: ModuleView) -> tuple[F8, F8]:
    """Current of modules that stopped answering, per gun.

    A module we cannot reach keeps its last setpoint until its own watchdog switches it off,
    so its last measured current still flows into its gun for up to the watchdog time: that
    much is taken off the gun's (and the station's) allowance until then.
    """
    now, snap = inp.now, inp.snapshot
    prev = inp.memory.module_ok_at
    ok_at = prev.copy() if len(prev) == p.modules else np.full(p.modules, now)
    ghost = np.zeros(p.guns)
    for m, ms in enumerate(snap.modules):
        if ms.available:
            ok_at[m] = now
            continue
        g = int(mv.gun_now[m])
        last = ms.current_a
        if g >= 0 and math.isfinite(last) and last > 0 and (
                now - ok_at[m] <= p.watchdog_s + p.cycle_s):
            ghost[g] += last
    return ok_at, ghost


def _one_module_a(mv: ModuleView, volt: float) -> float:
    """The largest current one available module gives at ``volt``."""
    best = 0.0
    for a, w in zip(mv.max_a, mv.max_w, strict=True):
        best = max(best, min(float(a), float(w) / volt if volt > 1.0 else float(a)))
    return best


def _step_sessions(inp: CycleInputs, p: StationParams, closed_per_gun: list[int]
                   ) -> tuple[list[GunSession], list[SessionEvent]]:
    mem, snap = inp.memory, inp.snapshot
    out: list[GunSession] = []
    events: list[SessionEvent] = []
    for g, s in enumerate(inp.sessions):
        meter = snap.meters[g]
        v = inp.vehicles[g]
        fresh = inp.now - v.read_at <= p.vehicle_timeout_s
        fault = inp.emergency or (inp.faults[g] if inp.faults else None)
        gi = GunInputs(
            vehicle=v, vehicle_fresh=fresh,
            vehicle_lost=inp.now - v.read_at > p.timing.vehicle_silence_s,
            meter_voltage_v=meter.voltage_v if meter.available else math.nan,
            meter_current_a=meter.current_a if meter.available else math.nan,
            energy_wh=meter.energy_wh,
            closed_modules=closed_per_gun[g],
            allocated_a=float(mem.gun_allocated_a[g]) if len(mem.gun_allocated_a) else 0.0,
            pool_starved=bool(mem.gun_starved[g]) if mem.gun_starved else False,
            auth=inp.auth[g] if inp.auth else None,
            stop=inp.stops[g] if inp.stops else None,
            fault=fault,
            clear_fault=bool(inp.clear_faults[g]) if inp.clear_faults else False,
        )
        new, ev = step(s, gi, inp.now, p.timing)
        out.append(new)
        events += ev
    return out, events


def _ramp(target: F8, prev: F8, gun_of: np.ndarray, g_n: int, allowed_a: float) -> F8:
    """Decreases at once; increases of each gun together at most ``allowed_a`` this cycle."""
    base = np.minimum(target, prev)
    inc = target - base
    out = base.copy()
    for g in range(g_n):
        on = gun_of == g
        total = float(inc[on].sum())
        if total <= 0.0:
            continue
        f = min(1.0, allowed_a / total)
        out[on] = base[on] + inc[on] * f
    return out


def decide(inp: CycleInputs, p: StationParams) -> Decision:
    """One control cycle's decision (see the module docstring)."""
    snap, now, mem = inp.snapshot, inp.now, inp.memory
    m_n, g_n, thr = p.modules, p.guns, p.switch_threshold_a
    mv = module_view(snap, p)
    closed = snap.matrix.closed if snap.matrix.closed.shape == (m_n, g_n) else np.zeros(
        (m_n, g_n), dtype=bool)
    commanded = (snap.matrix.commanded if snap.matrix.commanded.shape == (m_n, g_n)
                 else np.zeros((m_n, g_n), dtype=bool))
    closed_per_gun = [int(n) for n in closed.sum(axis=0)]

    # 1. sessions
    sessions, events = _step_sessions(inp, p, closed_per_gun)

    # 2.-3. limits → allocator inputs
    st_eff = inp.limits.effective(STATION, now)
    station_cap = st_eff.value if math.isfinite(st_eff.value) else 1e12
    ok_at, ghost = _ghosts(inp, p, mv)
    req = np.zeros(g_n)
    gmax = np.zeros(g_n)
    volt = np.zeros(g_n)
    vset = np.zeros(g_n)
    limit = np.zeros(g_n)  # what the gun may really carry (the safety monitor checks this)
    precharge = np.zeros(g_n, dtype=bool)
    glims: list[GunLimits] = []
    module_max_v = 1000.0
    for ms in snap.modules:
        if ms.rating is not None:
            module_max_v = ms.rating.max_voltage_v
            break
    for g, s in enumerate(sessions):
        gl = gun_limits(inp.limits, g, now)
        glims.append(gl)
        vset[g] = _gun_voltage_setpoint(s, inp, g, p, module_max_v)
        v = inp.vehicles[g]
        meter = snap.meters[g]
        mv_v = meter.voltage_v
        volt[g] = _quantize(mv_v if meter.available and math.isfinite(mv_v) and mv_v > 1.0
                            else max(0.0, v.present_voltage_v))
        gmax[g] = gl.max_a
        if inp.emergency or not wants_power(s) or not v.plugged:
            req[g] = 0.0
        elif s.state is GunState.PRECHARGE or (
                s.state is GunState.CHARGING and v.request_a <= 0.0
                and now - s.since < p.timing.suspend_after_s):
            # (just started: the vehicle's first request is not in yet; keep the module)
            # Reserve one whole module (the allocator assigns whole modules; a 2 A demand
            # would lose the rounding to a gun drawing hundreds), then clamp it to ≤ 2 A.
            one = _one_module_a(mv, float(volt[g]))
            req[g] = gmax[g] = min(one, gl.max_a) if gl.max_a >= p.precharge_current_a else 0.0
            limit[g] = min(p.precharge_current_a, gl.max_a)
            precharge[g] = True
            continue
        else:
            req[g] = min(demand_a(s, v, p.precharge_current_a), gl.request_a)
        limit[g] = min(req[g], gmax[g])
        req[g] = max(0.0, req[g] - ghost[g])
    gmax = np.where(np.isfinite(gmax), gmax, 1e9)
    station_alloc = max(0.0, station_cap - float((ghost * volt).sum()))

    # 4. allocate
    alloc = allocate(
        gun_request_a=req, gun_voltage_v=volt, gun_max_a=gmax, gun_weight=p.weights,
        module_max_a=mv.max_a, module_max_w=mv.max_w, module_gun=mv.gun_now,
        module_current_a=mv.current_a, reach=p.reach, station_max_w=station_alloc,
        switch_threshold_a=thr,
    )
    next_gun = alloc.module_gun.copy()
    target = alloc.module_setpoint_a.copy()
    for gp in np.flatnonzero(precharge):
        on = next_gun == gp
        total = float(target[on].sum())
        if total > limit[gp]:
            target[on] *= limit[gp] / total

    # 5. contactors: measured current at or below the threshold, break before make
    meas = mv.current_a
    opens: list[tuple[int, int]] = []
    closes: list[tuple[int, int]] = []
    rows = np.arange(m_n)
    want = np.zeros((m_n, g_n), dtype=bool)
    has = next_gun >= 0
    want[rows[has], next_gun[has]] = True
    touched = (commanded | closed) & ~want
    for m in np.flatnonzero((commanded != want).any(axis=1) | touched.any(axis=1)).tolist():
        want_g = int(next_gun[m])
        low = abs(meas[m]) <= thr
        for g in np.flatnonzero(commanded[m] & ~want[m]).tolist():
            if low:
                opens.append((m, g))
            else:
                target[m] = 0.0  # drain first; open on a later cycle
        if (want_g >= 0 and not commanded[m, want_g] and low and not touched[m].any()
                and p.reach[m, want_g]):
            closes.append((m, want_g))
    # current only where the feedback shows the module closed on the gun it is meant for
    safe_gun = np.where(has, next_gun, 0)
    live = (has & closed[rows, safe_gun] & commanded[rows, safe_gun]
            & (closed.sum(axis=1) == 1))
    target = _cover_pending(target, live, next_gun, mv, volt, g_n)
    for m in inp.cut_modules:
        target[m] = 0.0
    if inp.emergency:
        target[:] = 0.0

    # ramp: decreases at once, increases at ramp_a_per_s per gun
    prev = mem.applied_a if len(mem.applied_a) == m_n else np.zeros(m_n)
    dt = now - mem.t if math.isfinite(mem.t) else p.cycle_s
    dt = min(max(dt, 0.0), 2.0 * p.cycle_s)
    gun_of = np.where(live, next_gun, -1)
    applied = _ramp(target, prev, gun_of, g_n, p.ramp_a_per_s * dt)

    # commands in order; every module is written every cycle (module watchdogs)
    cmds = Commands(opens=opens, closes=closes)
    for m in range(m_n):
        g = int(next_gun[m])
        v_m = float(vset[g]) if g >= 0 else 0.0
        a = float(applied[m])
        if a > prev[m] + 1e-9:
            cmds.increases.append((m, v_m, a))
        else:
            cmds.decreases.append((m, v_m, a))
    gun_applied = np.zeros(g_n)
    for m in range(m_n):
        if gun_of[m] >= 0:
            gun_applied[gun_of[m]] += applied[m]
    for g, (old, new) in enumerate(zip(inp.sessions, sessions, strict=True)):
        if new.state is GunState.CHARGING and old.state is GunState.PRECHARGE:
            cmds.vehicle_start.append(g)
        if new.state in (GunState.FINISHING, GunState.FAULTED) and old.state != new.state:
            cmds.vehicle_stop.append(g)
        if new.state in ENERGY_STATES and not inp.emergency:
            cmds.vehicle_available.append((g, min(float(alloc.gun_current_a[g]), limit[g]),
                                           float(vset[g])))

    # 6. the explanation
    starved = tuple(int(b) in (Binding.POOL, Binding.STATION) for b in alloc.gun_binding)
    record = _record(inp, sessions, alloc.gun_binding, glims, st_eff.binding.source,
                     station_cap, applied, next_gun, mv, gun_applied)
    memory = CycleMemory(
        t=now, applied_a=applied, gun_allocated_a=alloc.gun_current_a.copy(),
        gun_limit_a=limit, station_cap_w=station_cap,
        module_max_a=mv.max_a, gun_starved=starved, module_ok_at=ok_at,
    )
    return Decision(cmds, tuple(sessions), events, record, memory, volt)


def _binding_source(b: int, g: int, glims: list[GunLimits], st_source: str,
                    s: GunSession) -> str:
    if b == Binding.STATION:
        return st_source
    if b == Binding.GUN_MAX:
        return "precharge" if s.state is GunState.PRECHARGE else str(glims[g].max_binding.source)
    if b == Binding.REQUEST:
        return "precharge" if s.state is GunState.PRECHARGE else LimitKey.EV_REQUEST.value
    if b in (Binding.POOL, Binding.DRAINING):
        return "pool"
    return "none"


def _record(inp: CycleInputs, sessions: list[GunSession], binding: npt.NDArray[np.int8],
            glims: list[GunLimits], st_source: str, cap: float, applied: F8, next_gun: I8,
            mv: ModuleView, gun_applied: F8) -> CycleRecord:
    snap = inp.snapshot
    guns = []
    power = 0.0
    for g, s in enumerate(sessions):
        meter = snap.meters[g]
        ok = meter.available
        i = meter.current_a if ok else math.nan
        v = meter.voltage_v if ok else math.nan
        pw = meter.power_w if ok else math.nan
        power += pw if ok and math.isfinite(pw) else 0.0
        b = int(binding[g])
        guns.append(GunRecord(
            gun=g, state=s.state.value, current_a=i, voltage_v=v, power_w=pw,
            setpoint_a=float(gun_applied[g]), binding=_BINDING_NAMES[b],
            binding_source=_binding_source(b, g, glims, st_source, s),
            modules=tuple(int(m) for m in np.flatnonzero(next_gun == g)),
            soc_pct=inp.vehicles[g].soc_pct, energy_wh=meter.energy_wh,
        ))
    mods = []
    max_a, reasons = mv.max_a, mv.reasons
    for m, ms in enumerate(snap.modules):
        mods.append(ModuleRecord(
            module=m, gun=int(next_gun[m]), current_a=ms.current_a,
            setpoint_a=float(applied[m]), available_a=float(max_a[m]),
            inlet_c=ms.coolant_in_c, outlet_c=ms.coolant_out_c, internal_c=ms.internal_c,
            available=reasons[m] is None, reason=reasons[m],
        ))
    return CycleRecord(
        seq=inp.seq, t=inp.now, wall_time=inp.wall_time, station_power_w=power,
        station_cap_w=cap, cap_source=st_source, guns=tuple(guns), modules=tuple(mods),
        work_ms=0.0,
    )
