"""`mwc doctor` for the power-unit layout: the unit, its modules and its matrix, read-only.

The unit is one device, so its rows come from two polls through the controller's own driver
(``power.power_unit``): reachable, the module and gun counts it reports match the
configuration, its cycle counter moves (a unit whose snapshot never refreshes would feed the
cycle old values), every module sane, ready, off and rated as ``[modules]`` says, and every
contactor open with its feedback agreeing. Nothing is written.
"""

from __future__ import annotations

import asyncio

import numpy as np

from controller.config import ModulesConfig
from controller.doctor_checks import (
    RATING_TOLERANCE,
    CheckFailed,
    _contactor,
    _listed,
    endpoint_label,
)
from power.modbus_base import LinkSettings
from power.modules import ModuleState
from power.power_unit import PowerUnitConfig, PowerUnitHardware

#: Two polls this far apart must see the cycle counter move.
COUNTER_GAP_S = 0.1


def _module_problem(s: ModuleState, expected: ModulesConfig) -> str | None:
    if not s.available:
        return f"module {s.index + 1}: {s.reason}"
    if s.fault or s.fault_code:
        return f"module {s.index + 1}: fault code {s.fault_code}"
    if not s.ready:
        return f"module {s.index + 1}: not ready (status 0x{s.status:04x})"
    if s.output_on:
        return f"module {s.index + 1}: output on while the controller is stopped"
    r = s.rating
    if r is not None and (abs(r.rated_current_a - expected.rated_current_a)
                          > RATING_TOLERANCE * expected.rated_current_a
                          or abs(r.rated_power_w - expected.rated_power_w)
                          > RATING_TOLERANCE * expected.rated_power_w):
        return (f"module {s.index + 1}: rated {r.rated_power_w:g} W / {r.rated_current_a:g} A "
                f"but [modules] says {expected.rated_power_w:g} W / "
                f"{expected.rated_current_a:g} A")
    return None


async def check_power_unit(config: PowerUnitConfig, link: LinkSettings,
                           expected: ModulesConfig) -> str:
    """The PASS detail, or ``CheckFailed`` naming every problem found."""
    cfg = PowerUnitConfig(config.unit, config.module_count, config.meters, link, 1)
    hw = PowerUnitHardware(cfg, meters=[])
    try:
        first = await hw.poll_all()
        c0 = hw.unit.cycle
        await asyncio.sleep(COUNTER_GAP_S)
        snap = await hw.poll_all()
        c1 = hw.unit.cycle
    finally:
        await hw.close()
    if not snap.matrix.available:  # the unit itself did not answer sanely
        raise CheckFailed(f"{endpoint_label(config.unit)}: {snap.matrix.reason or 'no answer'}")
    problems: list[str] = []
    if c0 == c1 and first.matrix.available:
        problems.append(f"cycle counter stuck at {c1}: the unit does not refresh its modules")
    bad = [p for s in snap.modules if (p := _module_problem(s, expected)) is not None]
    if bad:
        problems.append(_listed(bad))
    closed, coils = snap.matrix.closed, snap.matrix.commanded
    guns = cfg.guns
    welded = [_contactor(int(m), int(g), guns) for m, g in np.argwhere(closed & ~coils)]
    on = [_contactor(int(m), int(g), guns) for m, g in np.argwhere(coils)]
    if welded:
        problems.append(f"welded (feedback closed, coil open): {_listed(welded)}")
    if on:
        problems.append(f"coil on while the controller is stopped: {_listed(on)}")
    if problems:
        raise CheckFailed("; ".join(problems))
    return (f"{cfg.module_count} modules × {guns} guns, all ready and off, contactors open, "
            f"cycle counter moving ({c0} → {c1})")
