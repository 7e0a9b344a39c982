"""Ordered command output: the shell's half of step 5 of the control cycle.

Phases, each sent concurrently (one connection per device) and each waited for at most a
per-device timeout, so one slow device never holds the cycle:

  1. vehicle stops; setpoint decreases, drains and holds (every module is written every cycle,
     so module watchdogs hold only while the controller is alive);
  2. contactor opens;  3. contactor closes (break before make: the decision never closes a
     module that is still commanded or closed elsewhere);
  4. setpoint increases; vehicle starts and "available" updates.

A failed or late command is reported, never raised: the next cycle polls again and decides on
what really happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from controller.cycle import Commands, SetOutput
from controller.vehicle import VehicleLink
from power.hardware_api import StationHardware as Hardware
from power.modbus_driver import HardwareError


@dataclass(slots=True)
class ApplyResult:
    errors: list[str] = field(default_factory=list)
    late: int = 0  # commands cancelled at the timeout
    #: (device, message) of every failed command, for log folding ("module 3", "matrix")
    failures: list[tuple[str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # the failed calls' names


def _device(what: str, name: str) -> str:
    return "matrix" if what in ("open", "close") else " ".join(name.split()[:2])


async def _phase(what: str, calls: list[tuple[str, Awaitable[None]]], timeout_s: float,
                 result: ApplyResult) -> None:
    if not calls:
        return
    tasks = [asyncio.ensure_future(c) for _, c in calls]
    _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        result.late += len(pending)
    for (name, _), t in zip(calls, tasks, strict=True):
        if t.cancelled():
            msg = f"{what} {name}: no answer within {timeout_s * 1000:.0f} ms"
        elif isinstance(exc := t.exception(), HardwareError | ValueError):
            msg = f"{what} {name}: {exc}"
        elif exc is not None:
            msg = f"{what} {name}: unexpected {exc!r}"
        else:
            continue
        result.errors.append(msg)
        result.failed.append(name)
        result.failures.append((_device(what, name), msg))


run_phase = _phase  # for the stop sequence (controller/shutdown.py)


def _outputs(hw: Hardware, items: list[SetOutput]) -> list[tuple[str, Awaitable[None]]]:
    return [(f"module {m}", hw.modules[m].set_output(v, a)) for m, v, a in items]


async def apply_commands(hw: Hardware, cmds: Commands, vehicles: Sequence[VehicleLink],
                         timeout_s: float, remaining_s: Callable[[], float] | None = None,
                         ) -> ApplyResult:
    """Send one cycle's commands in the safe order (see the module docstring).

    Each phase waits at most ``timeout_s`` (a device's request timeout) and never beyond what
    ``remaining_s()`` says is left of the cycle (at least 5 ms, so that decreases always go).
    """
    res = ApplyResult()

    def budget() -> float:
        left = remaining_s() if remaining_s is not None else timeout_s
        return max(0.005, min(timeout_s, left))

    for g in cmds.vehicle_stop:
        _vehicle(res, f"vehicle {g} stop", lambda g=g: vehicles[g].stop())
    await _phase("set_output", _outputs(hw, cmds.decreases), budget(), res)
    await _phase("open", [(f"module {m} gun {g}", hw.matrix.disconnect(m, g))
                          for m, g in cmds.opens], budget(), res)
    await _phase("close", [(f"module {m} gun {g}", hw.matrix.connect(m, g))
                           for m, g in cmds.closes], budget(), res)
    await _phase("set_output", _outputs(hw, cmds.increases), budget(), res)
    for g in cmds.vehicle_start:
        _vehicle(res, f"vehicle {g} start", lambda g=g: vehicles[g].start())
    for g, a, v in cmds.vehicle_available:
        _vehicle(res, f"vehicle {g} available",
                 lambda g=g, a=a, v=v: vehicles[g].set_available(a, v))
    return res


def _vehicle(res: ApplyResult, what: str, call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except Exception as exc:  # a vehicle link must not raise (contract); do not let it stop us
        res.errors.append(f"{what}: {exc!r}")


async def zero_all(hw: Hardware, timeout_s: float) -> ApplyResult:
    """Every module's current limit to 0 at once (emergency stop, shutdown)."""
    res = ApplyResult()
    await _phase("zero", [(f"module {d.index}", d.set_output(0.0, 0.0)) for d in hw.modules],
                 timeout_s, res)
    return res
