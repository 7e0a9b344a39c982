"""The control cycle's data: what goes into one decision, what comes out, what is remembered.

One cycle (docs/control-cycle.md): poll → derive module availability → combine limits →
allocate → apply. The pure step is :func:`controller.decide.decide` (this module's types in,
:class:`Decision` out); :mod:`controller.apply` sends its commands in order and
:mod:`controller.station` runs it all on a clock. The helpers here are the pure pieces of
steps 2 and 3: module availability and the limit combination, each with its explanation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from controller.config import StationConfig, StationSection
from controller.limits import (
    STATION,
    Effective,
    Limit,
    LimitBook,
    LimitKey,
    combine,
    gun,
    install_grid_fallback,
)
from controller.records import CycleRecord
from controller.session import GunSession, SessionEvent, SessionTiming
from controller.vehicle import VehicleStatus
from power.modbus_driver import HardwareSnapshot, ModuleState
from power.modbus_map import ModuleStatus

F8 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int64]

#: LimitBook keys the cycle itself maintains (others, e.g. OCPP, are set from outside).
CYCLE_KEYS = frozenset({LimitKey.STATION_MAX, LimitKey.CABLE, LimitKey.EV_MAX,
                        LimitKey.EV_REQUEST})


@dataclass(frozen=True, slots=True)
class StationParams:
    """Everything static the decision needs, derived once from the configuration."""

    guns: int
    modules: int
    reach: npt.NDArray[np.bool_]  # (M, G)
    module_rated_w: F8  # from the config; the module's own rating register wins when read
    module_rated_a: F8
    gun_max_voltage_v: tuple[float, ...]
    weights: F8
    # Defaults are the configuration model's (written once, there).
    ramp_a_per_s: float = StationSection.default_of("ramp_a_per_s")
    switch_threshold_a: float = StationSection.default_of("switch_threshold_a")
    precharge_current_a: float = StationSection.default_of("precharge_current_a")
    vehicle_timeout_s: float = StationSection.default_of("vehicle_timeout_s")
    cycle_s: float = 0.1
    watchdog_s: float = 0.5  # module watchdog (inf when disabled)
    timing: SessionTiming = field(default_factory=SessionTiming)

    @classmethod
    def from_config(cls, cfg: StationConfig) -> StationParams:
        st, m_n, g_n = cfg.station, cfg.modules.count, len(cfg.guns)
        return cls(
            guns=g_n, modules=m_n,
            reach=np.array(cfg.reach_matrix(), dtype=bool).reshape(m_n, g_n),
            module_rated_w=np.full(m_n, cfg.modules.rated_power_w),
            module_rated_a=np.full(m_n, cfg.modules.rated_current_a),
            gun_max_voltage_v=tuple(g.max_voltage_v for g in cfg.guns),
            weights=np.ones(g_n),
            ramp_a_per_s=st.ramp_a_per_s, switch_threshold_a=st.switch_threshold_a,
            precharge_current_a=st.precharge_current_a, vehicle_timeout_s=st.vehicle_timeout_s,
            cycle_s=cfg.cycle_s,
            watchdog_s=st.watchdog_ms / 1000.0 if st.watchdog_ms > 0 else math.inf,
            timing=SessionTiming(
                cable_check_s=st.cable_check_s, precharge_tolerance_v=st.precharge_tolerance_v,
                precharge_timeout_s=st.precharge_timeout_s,
                finishing_timeout_s=st.finishing_timeout_s, suspend_after_s=st.suspend_after_s,
                low_current_a=st.switch_threshold_a, free_charging=st.free_charging,
                vehicle_silence_s=st.vehicle_silence_s,
            ),
        )


def install_static_limits(book: LimitBook, cfg: StationConfig) -> None:
    """The configuration's limits: station maximum, grid fallback, cable ratings, and
    zero fallbacks for the vehicle keys (a silent vehicle gets no current)."""
    K = LimitKey
    book.set(STATION, K.STATION_MAX,
             Limit(cfg.station.max_kw * 1000.0, f"{K.STATION_MAX}:config"))
    install_grid_fallback(book, cfg.station.fallback_grid_kw * 1000.0, K.GRID)
    for g, gc in enumerate(cfg.guns):
        book.set(gun(g), K.CABLE, Limit(gc.cable_rating_a, f"{K.CABLE}:config"))
        book.set_fallback(gun(g), K.EV_MAX, Limit(0.0, f"{K.EV_MAX}:fallback"))
        book.set_fallback(gun(g), K.EV_REQUEST, Limit(0.0, f"{K.EV_REQUEST}:fallback"))


def vehicle_limits(book: LimitBook, g: int, status: VehicleStatus, timeout_s: float) -> None:
    """Enter a vehicle's maximum and request as expiring limits of gun ``g``.

    They expire ``timeout_s`` after the status was read, so a vehicle link that stops
    answering cannot keep current flowing: the zero fallback applies instead.
    """
    if not status.plugged:
        book.clear(gun(g), LimitKey.EV_MAX)
        book.clear(gun(g), LimitKey.EV_REQUEST)
        return
    t, exp = status.read_at, status.read_at + timeout_s
    book.set(gun(g), LimitKey.EV_MAX,
             Limit(_amps(status.ev_max_current_a), f"{LimitKey.EV_MAX}:vehicle", t, exp))
    book.set(gun(g), LimitKey.EV_REQUEST,
             Limit(_amps(status.request_a), f"{LimitKey.EV_REQUEST}:vehicle", t, exp))


def _amps(value: float) -> float:
    """A vehicle's current as a limit: NaN, infinite or negative is 0 A (a link that
    reports nonsense gets nothing, not everything)."""
    return value if math.isfinite(value) and value > 0.0 else 0.0


@dataclass(frozen=True, slots=True)
class GunLimits:
    """The allocator's view of one gun's limits, with the explanation."""

    request_a: float  # the vehicle's request in force (0 once expired)
    max_a: float  # every other gun-scope limit combined
    max_binding: Limit


def gun_limits(book: LimitBook, g: int, now: float) -> GunLimits:
    """Split the gun scope into the request and the maximum (cable, EV max, OCPP, thermal)."""
    request = 0.0
    others: list[Limit] = []
    for lim in book.in_force(gun(g), now):
        if lim.key is LimitKey.EV_REQUEST:
            request = lim.value
        else:
            others.append(lim)
    eff: Effective = combine(others)
    return GunLimits(request, eff.value, eff.binding)


@dataclass(frozen=True, slots=True)
class ModuleView:
    """Step 2: what the allocator may plan with for each module, and why."""

    max_a: F8  # 0 = unavailable
    max_w: F8
    current_a: F8  # measured; unknown counts as loaded (never switched blind)
    gun_now: I8  # feedback gun, or a pending commanded gun; -1 none
    reasons: tuple[str | None, ...]


def module_view(snap: HardwareSnapshot, p: StationParams) -> ModuleView:
    """Availability from fault bits, stale/lost communication, derating and the matrix."""
    m_n = p.modules
    max_a = np.zeros(m_n)
    max_w = p.module_rated_w.copy()
    cur = np.zeros(m_n)
    reasons: list[str | None] = []
    mx = snap.matrix
    fb = mx.module_gun() if mx.closed.shape == (m_n, p.guns) else np.full(m_n, -1, np.int64)
    commanded = mx.commanded if mx.commanded.shape == (m_n, p.guns) else None
    gun_now = fb.copy()
    unknown_i = p.switch_threshold_a + 1.0
    for m in range(m_n):
        ms: ModuleState = snap.modules[m]
        reason = _module_reason(ms)
        i = ms.known_current_a  # lost or stale: unknown, never taken as low (not last-known)
        last = abs(ms.current_a) if math.isfinite(ms.current_a) else 0.0
        cur[m] = i if math.isfinite(i) else max(unknown_i, last)
        if ms.rating is not None:
            max_w[m] = ms.rating.rated_power_w
        if fb[m] == -2:
            reason = "closed onto more than one gun"
            gun_now[m] = int(np.argmax(mx.closed[m]))
        elif fb[m] < 0 and commanded is not None and commanded[m].any():
            gun_now[m] = int(np.argmax(commanded[m]))  # closing: treat as on that gun
        if commanded is not None and fb[m] >= 0 and not commanded[m, fb[m]] and mx.welded:
            reason = reason or "contactor welded"
        if reason is None:  # available, ready, no fault: usable_current_a without the enums
            rated = ms.rating.rated_current_a if ms.rating else p.module_rated_a[m]
            max_a[m] = min(max(0.0, ms.available_current_a), rated)
        reasons.append(reason)
    if not mx.fresh:  # no switching without a fresh matrix: keep every module where it is
        cur[:] = np.maximum(cur, unknown_i)
    return ModuleView(max_a, max_w, cur, gun_now, tuple(reasons))


_READY = int(ModuleStatus.READY)
_OUTPUT_ON = int(ModuleStatus.OUTPUT_ON)
_FAULT = int(ModuleStatus.FAULT)


def _module_reason(ms: ModuleState) -> str | None:
    # plain int bit tests: the enum properties cost more than the rest of the cycle's logic
    if not ms.available:
        return ms.reason or "unavailable"
    st = ms.status
    if st & _FAULT:
        return f"fault code {ms.fault_code}"
    if not st & _READY:
        return "not ready"
    if not st & _OUTPUT_ON:
        return "output off"
    return None


@dataclass(frozen=True, slots=True)
class CycleMemory:
    """What one decision hands to the next (and to the safety monitor)."""

    t: float = -math.inf
    applied_a: F8 = field(default_factory=lambda: np.zeros(0))
    gun_allocated_a: F8 = field(default_factory=lambda: np.zeros(0))
    gun_limit_a: F8 = field(default_factory=lambda: np.zeros(0))  # min(request, max) + ramp
    station_cap_w: float = math.inf
    module_max_a: F8 = field(default_factory=lambda: np.zeros(0))
    gun_starved: tuple[bool, ...] = ()
    module_ok_at: F8 = field(default_factory=lambda: np.zeros(0))  # last time answering


@dataclass(frozen=True, slots=True)
class CycleInputs:
    """Everything :func:`controller.decide.decide` looks at (nothing else)."""

    seq: int
    now: float
    wall_time: str
    snapshot: HardwareSnapshot
    vehicles: tuple[VehicleStatus, ...]
    sessions: tuple[GunSession, ...]
    limits: LimitBook
    memory: CycleMemory
    auth: tuple[bool | None, ...] = ()
    stops: tuple[str | None, ...] = ()  # station-side stop request per gun
    faults: tuple[str | None, ...] = ()  # fault per gun (emergency stop, safety)
    clear_faults: tuple[bool, ...] = ()
    cut_modules: frozenset[int] = frozenset()  # the safety monitor's cuts: setpoint 0
    emergency: str | None = None


SetOutput = tuple[int, float, float]  # module, voltage setpoint V, current limit A


@dataclass(slots=True)
class Commands:
    """Hardware and vehicle commands of one cycle, in the order they must be sent."""

    decreases: list[SetOutput] = field(default_factory=list)  # incl. drains and holds
    opens: list[tuple[int, int]] = field(default_factory=list)
    closes: list[tuple[int, int]] = field(default_factory=list)
    increases: list[SetOutput] = field(default_factory=list)
    vehicle_start: list[int] = field(default_factory=list)
    vehicle_stop: list[int] = field(default_factory=list)
    vehicle_available: list[tuple[int, float, float]] = field(default_factory=list)


@dataclass(slots=True)
class Decision:
    """The outcome of one pure step."""

    commands: Commands
    sessions: tuple[GunSession, ...]
    events: list[SessionEvent]
    record: CycleRecord
    memory: CycleMemory
    gun_voltage_v: F8  # the voltage each gun's setpoints were computed at
