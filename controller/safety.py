"""The safety monitor: checks every cycle, independently of the allocator, that the electrical
invariants of the allocator contract hold — on the *measured* values and on the commands
about to be sent.

Measured (``check``), against the limits the last setpoints were computed under:
 - station power (sum of the meters) ≤ station cap;
 - each gun's current ≤ min(request, gun maximum);
For these two a lowered limit is not judged the instant its commands went out: the modules
need time to follow a lower setpoint. After a decrease from ``old`` to ``new`` sent at ``s``,
a value measured at ``t`` (the start of the poll that read it) is judged against
``new + (old - new) · max(0, 1 - (t - s) / grace_s)``: the old limit fading linearly to the new
one over ``grace_s``, the modules' response time (``[modules] response_ms``). Several
decreases in a row add their fading drops. The bound is principled for a module whose output
follows a lower setpoint at least as fast as a first-order lag with time constant τ ≤
``grace_s`` / 5: its excess ``(old - new)·e^{-x/τ}`` stays under the line except in the last
~1 % of the grace, where it is < 0.7 % of the drop (inside ``tolerance_frac``). After the
grace the new limit counts alone: a value above the fading envelope is a violation, and there
is never a time with no limit at all. Increases count at once (the measured value is lower).
 - each module's current ≤ its derated maximum, its power ≤ its rating;
 - no module closed onto more than one gun;
 - no contactor changed while its module carried more than the switch threshold.

Commanded (``guard``), before anything is sent: contactor changes only for modules measured at
or below the threshold, break before make, setpoints within module, gun and station limits.
An offending command is removed or cut to 0 here, whatever the decision said.

A violation cuts the offending setpoints at once (the next decision gets them as
``cut_modules``), is logged with the cycle context by the station, counted, and raises a fault
on the gun(s) concerned when it persists for ``fault_cycles`` cycles in a row.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from controller.cycle import CycleMemory, Decision, StationParams
from power.modbus_driver import HardwareSnapshot


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str  # station_power, gun_current, module_current, module_power, one_gun, hot_switch,
    #            command
    key: str  # what it concerns: "station", "gun0", "module7"
    message: str
    modules: tuple[int, ...] = ()  # setpoints to cut
    guns: tuple[int, ...] = ()  # guns concerned (for a persistent fault)

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


def fading_limit(steps: Sequence[tuple[float, float]], t: float, grace_s: float) -> float:
    """The limit in force at ``t`` given ``steps`` = (sent at, limit), oldest first: the last
    limit plus, for every decrease, its drop fading linearly to 0 over ``grace_s`` after the
    lower limit was sent (see the module docstring). ``grace_s`` ≤ 0: no grace."""
    if not steps:
        return math.inf
    out = steps[-1][1]
    for (_t0, old), (t1, new) in pairwise(steps):
        if not old > new or grace_s <= 0:
            continue
        left = min(1.0, 1.0 - (t - t1) / grace_s)
        if left > 0:
            out += math.inf if math.isinf(old) else (old - new) * left
    return out


@dataclass
class SafetyMonitor:
    """Stateful only for what a check across cycles needs (previous limits, matrix, counts)."""

    params: StationParams
    tolerance_a: float = 2.0
    tolerance_frac: float = 0.03
    fault_cycles: int = 3
    #: the modules' response time to a lower setpoint: the grace of a lowered limit
    grace_s: float = 0.06
    total: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    #: (when its commands were sent, memory), oldest first; kept while a decrease fades
    _mem: list[tuple[float, CycleMemory]] = field(default_factory=list)
    _prev_closed: np.ndarray | None = None
    _prev_current: np.ndarray | None = None
    _streak: dict[str, int] = field(default_factory=dict)
    _prev_avail: np.ndarray | None = None

    # ------------------------------------------------------------------ measured
    def check(self, snap: HardwareSnapshot) -> list[Violation]:
        """The measured values of this poll against the invariants (see module docstring)."""
        p = self.params
        out: list[Violation] = []
        # unknown is not last-known: a lost or stale module's current is NaN, never judged
        cur = np.array([m.known_current_a for m in snap.modules])
        closed = snap.matrix.closed if snap.matrix.fresh else None
        if closed is not None and closed.shape == (p.modules, p.guns):
            out += self._matrix_checks(closed, cur)
        else:  # no fresh matrix: a change seen later cannot be dated, so it is not judged
            self._prev_closed = self._prev_current = None
        mems = [(t, m) for t, m in self._mem if len(m.applied_a) == p.modules]
        if mems:
            out += self._limit_checks(snap, cur, closed, mems)
        self._count(out)
        return out

    def _matrix_checks(self, closed: np.ndarray, cur: np.ndarray) -> list[Violation]:
        p, out = self.params, []
        for m in np.flatnonzero(closed.sum(axis=1) > 1):
            out.append(Violation("one_gun", f"module{m}", f"module {m} closed onto guns "
                                 f"{np.flatnonzero(closed[m]).tolist()}", (int(m),),
                                 tuple(int(g) for g in np.flatnonzero(closed[m]))))
        if self._prev_closed is not None and self._prev_current is not None:
            changed = np.flatnonzero((closed != self._prev_closed).any(axis=1))
            for m in changed:
                i = np.nanmax([abs(self._prev_current[m]), abs(cur[m]), 0.0])
                if i > p.switch_threshold_a:
                    out.append(Violation("hot_switch", f"module{m}",
                                         f"module {m} contactor changed at {i:.1f} A "
                                         f"(> {p.switch_threshold_a} A)", (int(m),)))
        self._prev_closed = closed.copy()
        self._prev_current = cur.copy()
        return out

    def _limit_checks(self, snap: HardwareSnapshot, cur: np.ndarray,
                      closed: np.ndarray | None, mems: list[tuple[float, CycleMemory]]
                      ) -> list[Violation]:
        p, out = self.params, []
        tol_a, frac = self.tolerance_a, self.tolerance_frac
        t = snap.started_at  # the earliest a value of this poll can have been measured
        cap = fading_limit([(s, m.station_cap_w) for s, m in mems], t, self.grace_s)
        power = sum(mt.power_w for mt in snap.meters
                    if mt.fresh and math.isfinite(mt.power_w))
        gun_of = (np.where(closed.any(axis=1), np.argmax(closed, axis=1), -1)
                  if closed is not None else np.full(p.modules, -1))
        if power > cap * (1 + frac) + 1000.0:
            live = tuple(int(m) for m in np.flatnonzero(gun_of >= 0))
            out.append(Violation("station_power", "station",
                                 f"station power {power / 1000:.1f} kW > cap "
                                 f"{cap / 1000:.1f} kW", live, tuple(range(p.guns))))
        for g in range(p.guns):
            lim = fading_limit([(s, float(m.gun_limit_a[g])) for s, m in mems
                                if len(m.gun_limit_a) > g], t, self.grace_s)
            mt = snap.meters[g]
            i = mt.current_a if mt.fresh else float(np.nansum(cur[gun_of == g]))
            if math.isfinite(i) and i > lim * (1 + frac) + tol_a:
                mods = tuple(int(m) for m in np.flatnonzero(gun_of == g))
                out.append(Violation("gun_current", f"gun{g}",
                                     f"gun {g} carries {i:.1f} A > limit {lim:.1f} A", mods, (g,)))
        prev_avail = self._prev_avail
        avail_now = np.full(p.modules, math.nan)
        for m, ms in enumerate(snap.modules):
            if not ms.fresh or not math.isfinite(ms.current_a):
                continue
            # The module's own limit: its derated available current (now or at the previous
            # poll: it lags) within its rating. Not the allocator's planning maximum, which is
            # 0 for a module that was merely unreachable and still ran on its last setpoint.
            avail_now[m] = ms.available_current_a
            rated = ms.rating.rated_current_a if ms.rating else float(p.module_rated_a[m])
            seen = [a for a in (ms.available_current_a,
                                prev_avail[m] if prev_avail is not None else math.nan)
                    if math.isfinite(a)]
            lim = min(rated, max(seen, default=rated))
            g = int(gun_of[m])
            guns = (g,) if g >= 0 else ()
            if ms.current_a > lim * (1 + frac) + tol_a:
                out.append(Violation("module_current", f"module{m}",
                                     f"module {m} carries {ms.current_a:.1f} A > "
                                     f"{lim:.1f} A", (m,), guns))
            if ms.rating is not None and ms.current_a * ms.voltage_v > (
                    ms.rating.rated_power_w * (1 + frac)):
                out.append(Violation("module_power", f"module{m}",
                                     f"module {m} gives {ms.current_a * ms.voltage_v:.0f} W > "
                                     f"{ms.rating.rated_power_w:.0f} W", (m,), guns))
        self._prev_avail = avail_now
        return out

    def remember(self, memory: CycleMemory) -> None:
        """The limits the setpoints about to be sent were computed under (for the next
        checks); ``sent`` dates them once they are out (until then: the decision time)."""
        self._mem.append((memory.t, memory))
        # a step whose successor was sent a grace before the newest one fades no more
        newest = self._mem[-1][0]
        while len(self._mem) > 1 and (len(self._mem) > 16
                                      or self._mem[1][0] + self.grace_s < newest):
            self._mem.pop(0)

    def sent(self, t: float) -> None:
        """The commands of the last remembered decision went out at ``t`` (clock seconds):
        a lowered limit's grace starts here, not at the decision."""
        if self._mem:
            self._mem[-1] = (t, self._mem[-1][1])

    # ------------------------------------------------------------------ commanded
    def guard(self, d: Decision, snap: HardwareSnapshot) -> list[Violation]:
        """Check (and correct) the commands of ``d`` before they are sent."""
        p, out = self.params, []
        thr = p.switch_threshold_a
        c = d.commands
        mx = snap.matrix
        cur = [m.known_current_a for m in snap.modules]  # lost or stale: unknown, not low

        def low(m: int) -> bool:
            return math.isfinite(cur[m]) and abs(cur[m]) <= thr

        keep_open = []
        for m, g in c.opens:
            if low(m) and mx.fresh:
                keep_open.append((m, g))
            else:
                out.append(Violation("command", f"module{m}",
                                     f"open ({m},{g}) refused: module at {cur[m]:.1f} A", (m,)))
        keep_close = []
        for m, g in c.closes:
            busy = (mx.closed[m] | mx.commanded[m]).copy()
            busy[g] = False
            if low(m) and mx.fresh and not busy.any() and bool(p.reach[m, g]):
                keep_close.append((m, g))
            else:
                out.append(Violation("command", f"module{m}", f"close ({m},{g}) refused: "
                                     f"{cur[m]:.1f} A or still closed elsewhere", (m,)))
        c.opens, c.closes = keep_open, keep_close
        mem = d.memory
        gun_sum = np.zeros(p.guns)
        gun_of = {}
        for m, g in enumerate(np.argmax(mx.closed, axis=1) if mx.closed.size else []):
            if mx.closed.size and mx.closed[m].any():
                gun_of[m] = int(g)
        fixed: dict[int, float] = {}
        for m, _v, a in [*c.decreases, *c.increases]:
            lim = float(mem.module_max_a[m]) if len(mem.module_max_a) > m else 0.0
            if a > lim + 1e-6:
                out.append(Violation("command", f"module{m}",
                                     f"setpoint {a:.1f} A > module limit {lim:.1f} A", (m,)))
                fixed[m] = 0.0
            elif a > 0 and m in gun_of:
                gun_sum[gun_of[m]] += a
        for g in range(p.guns):
            lim = float(mem.gun_limit_a[g]) if len(mem.gun_limit_a) > g else 0.0
            if gun_sum[g] > lim + 1e-6:
                out.append(Violation("command", f"gun{g}",
                                     f"gun {g} setpoints {gun_sum[g]:.1f} A > limit {lim:.1f} A",
                                     guns=(g,)))
                for m, gg in gun_of.items():
                    if gg == g:
                        fixed[m] = 0.0
        power = float(sum(gun_sum[g] * d.gun_voltage_v[g] for g in range(p.guns)))
        if power > mem.station_cap_w * (1 + 1e-9) + 1.0:
            out.append(Violation("command", "station", f"setpoints give {power / 1000:.1f} kW "
                                 f"> cap {mem.station_cap_w / 1000:.1f} kW"))
            fixed.update({m: 0.0 for m in gun_of})
        if fixed:
            c.decreases = [(m, v, fixed.get(m, a)) for m, v, a in c.decreases]
            c.decreases += [(m, v, 0.0) for m, v, a in c.increases if m in fixed]
            c.increases = [(m, v, a) for m, v, a in c.increases if m not in fixed]
        self._count(out)
        return out

    # ------------------------------------------------------------------ bookkeeping
    def _count(self, found: list[Violation]) -> None:
        self.total += len(found)
        for v in found:
            self.by_rule[v.rule] += 1

    def persistent(self, found: list[Violation]) -> list[Violation]:
        """Violations whose key has now been violated ``fault_cycles`` cycles in a row."""
        keys = {v.key for v in found}
        self._streak = {k: self._streak.get(k, 0) + 1 for k in keys}
        return [v for v in found if self._streak[v.key] >= self.fault_cycles]
