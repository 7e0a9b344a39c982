"""The stop sequence: leave the hardware de-energised with every contactor open.

Used by ``Station.close()`` (SIGTERM/SIGINT in ``mwc run``, systemd stop) and so by
``Station.restart()`` (OCPP Reset). DC contactors must not break load current, and a module
keeps its last setpoint until its watchdog fires, so the order is (docs/control-cycle.md,
"Stopping"):

1. every module's setpoint to 0 (voltage and current limit);
2. poll again and again (every ``period_s``) until each module *measures* at or below the
   switch threshold — a module that is unreachable or stale is not taken as drained;
3. open the contactors of every drained module, and confirm them open by the matrix feedback;
4. stop waiting once all is done or ``drain_timeout_s`` has passed, then disable every module;
   a module not drained by then is disabled anyway, and its contactors are opened only if it
   then measures low within a short grace (else they stay: breaking load current is worse);
5. :class:`StopReport` says what did not go to plan, in one line.

Waiting uses the injected ``pause`` (a simulated clock's test advances its simulator there)
and the deadline is on the real monotonic clock: the hardware drains in real time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from controller.apply import ApplyResult, run_phase, zero_all
from power.hardware_api import StationHardware
from power.modbus_driver import HardwareSnapshot

Pause = Callable[[float], Awaitable[None]]
DISABLE_GRACE_S = 0.5  # after disabling an undrained module: time to see it low and open


@dataclass(slots=True)
class StopReport:
    """What the stop sequence could not do; ``ok`` when nothing."""

    undrained: dict[int, float] = field(default_factory=dict)  # module → last current (NaN)
    still_closed: list[tuple[int, int]] = field(default_factory=list)  # (module, gun)
    matrix_unconfirmed: bool = False  # no fresh matrix poll at the end
    disable_failed: list[int] = field(default_factory=list)
    seconds: float = 0.0
    polls: int = 0

    @property
    def ok(self) -> bool:
        return not (self.undrained or self.still_closed or self.matrix_unconfirmed
                    or self.disable_failed)

    def message(self, drain_timeout_s: float) -> str:
        """The one error line: every module and contactor by name."""
        parts = []
        if self.undrained:
            names = ", ".join(f"module {m} ({_amps(a)})" for m, a in sorted(self.undrained.items()))
            parts.append(f"not drained within {drain_timeout_s:g} s, disabled anyway: {names}")
        if self.still_closed:
            parts.append("contactors still closed: " + ", ".join(
                f"module {m} → gun {g}" for m, g in self.still_closed))
        if self.matrix_unconfirmed:
            parts.append("matrix unreachable: contactors not confirmed open")
        if self.disable_failed:
            parts.append("disable failed: " + ", ".join(f"module {m}"
                                                        for m in self.disable_failed))
        return "; ".join(parts)


def _amps(a: float) -> str:
    return "unreachable" if not math.isfinite(a) else f"at {a:.1f} A"


async def stop_hardware(hw: StationHardware, *, threshold_a: float, drain_timeout_s: float,
                        period_s: float, timeout_s: float, poll_deadline_s: float,
                        pause: Pause = asyncio.sleep) -> StopReport:
    """Run the stop sequence on ``hw`` (see the module docstring); never raises for device
    trouble."""
    t0 = time.monotonic()
    rep = StopReport()
    m_n = len(hw.modules)
    drained: set[int] = set()
    last_a = [math.nan] * m_n
    await zero_all(hw, timeout_s)
    snap = await _drain_step(hw, drained, last_a, threshold_a, timeout_s, poll_deadline_s, rep)
    while not (_all_open(snap) and len(drained) == m_n):
        if time.monotonic() - t0 >= drain_timeout_s:
            break
        await pause(period_s)
        await zero_all(hw, timeout_s)  # feeds the watchdogs, retries a write that failed
        snap = await _drain_step(hw, drained, last_a, threshold_a, timeout_s, poll_deadline_s,
                                 rep)
    undrained = [m for m in range(m_n) if m not in drained]
    res = ApplyResult()
    await run_phase("disable", [(f"module {m}", hw.modules[m].disable()) for m in
                             [*undrained, *sorted(drained)]], timeout_s, res)
    rep.disable_failed = sorted(int(name.split()[1]) for name in res.failed)
    if undrained:  # disabled now: give them a moment to fall, then open what is low
        t1 = time.monotonic()
        while time.monotonic() - t1 < DISABLE_GRACE_S and len(drained) < m_n:
            await pause(period_s)
            snap = await _drain_step(hw, drained, last_a, threshold_a, timeout_s,
                                     poll_deadline_s, rep)
        if len(drained) == m_n and not _all_open(snap):  # the last opens: confirm them
            while time.monotonic() - t1 < DISABLE_GRACE_S * 2 and not _all_open(snap):
                await pause(period_s)
                snap = await _drain_step(hw, drained, last_a, threshold_a, timeout_s,
                                         poll_deadline_s, rep)
    rep.undrained = {m: last_a[m] for m in range(m_n) if m not in drained}
    mx = snap.matrix
    if not mx.fresh or mx.closed.shape != (m_n, mx.guns):
        rep.matrix_unconfirmed = True
    else:
        on = mx.closed | mx.commanded
        rep.still_closed = [(int(m), int(g)) for m, g in zip(*on.nonzero(), strict=True)]
    rep.seconds = time.monotonic() - t0
    return rep


def _all_open(snap: HardwareSnapshot) -> bool:
    mx = snap.matrix
    return bool(mx.fresh and mx.closed.size and not (mx.closed | mx.commanded).any())


async def _drain_step(hw: StationHardware, drained: set[int], last_a: list[float], thr: float,
                      timeout_s: float, poll_deadline_s: float, rep: StopReport
                      ) -> HardwareSnapshot:
    """Poll; book the modules measured low; open their contactors still commanded closed."""
    snap: HardwareSnapshot = await hw.poll_all(poll_deadline_s)
    rep.polls += 1
    for ms in snap.modules:
        last_a[ms.index] = ms.known_current_a
        if math.isfinite(ms.known_current_a) and abs(ms.known_current_a) <= thr:
            drained.add(ms.index)
    mx = snap.matrix
    if mx.fresh and mx.commanded.size:
        opens = [(m, g) for m in sorted(drained) for g in range(mx.guns)
                 if mx.commanded[m, g]]
        await run_phase("open", [(f"module {m} gun {g}", hw.matrix.disconnect(m, g))
                              for m, g in opens], timeout_s, ApplyResult())
    return snap
