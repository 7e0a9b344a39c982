"""DC-meter driver: the ``MeterDriver`` contract and its Modbus TCP implementation.

The certified meter at each gun is the source of OCPP meter values, so its readings are
checked hard: finite, within the MCS envelope, and energy never running backwards.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from power.modbus_base import (
    BadReplyError,
    Clock,
    DeviceEndpoint,
    DeviceHealth,
    HardwareError,
    LinkSettings,
    ModbusLink,
)
from power.modbus_map import METER_INPUT_COUNT, MeterInput, decode_f32, decode_f64

MAX_METER_VOLTAGE_V = 1500.0  # MCS goes to 1,250 V; beyond this the reading is garbage
MAX_METER_CURRENT_A = 4000.0  # MCS goes to 3,000 A
ENERGY_TOLERANCE_WH = 0.01  # float noise allowed when checking monotonic energy


@dataclass(frozen=True, slots=True)
class MeterState:
    """One poll of a gun's DC meter at ``read_at``; last sane values when unavailable."""

    gun: int
    available: bool
    reason: str | None
    read_at: float
    voltage_v: float = math.nan
    current_a: float = math.nan
    power_w: float = math.nan
    energy_wh: float = math.nan

    @property
    def fresh(self) -> bool:
        """Answered this poll: not unavailable, not a tolerated miss ("stale:" reason)."""
        return self.available and not (self.reason or "").startswith("stale:")


@runtime_checkable
class MeterDriver(Protocol):
    """Contract of a gun's DC meter: ``poll`` never raises for device trouble."""

    gun: int

    async def poll(self) -> MeterState: ...

    async def close(self) -> None: ...


class ModbusMeter:
    """``MeterDriver`` over Modbus TCP (see ``docs/modbus-map.md``)."""

    def __init__(
        self,
        gun: int,
        endpoint: DeviceEndpoint,
        settings: LinkSettings | None = None,
        clock: Clock = time.monotonic,
        link: ModbusLink | None = None,
    ) -> None:
        self.gun = gun
        self.clock = clock
        self.link = link or ModbusLink(endpoint, f"meter {gun}", settings, clock)
        self.health = DeviceHealth(self.link.settings.max_missed)
        self._last = MeterState(gun, False, "not polled yet", clock())
        self._energy_wh = -math.inf

    @property
    def last(self) -> MeterState:
        return self._last

    def _check(self, s: MeterState) -> str | None:
        for name, v in (("voltage", s.voltage_v), ("current", s.current_a),
                        ("power", s.power_w), ("energy", s.energy_wh)):
            if not math.isfinite(v):
                return f"meter {self.gun}: {name} is {v}"
        if not -10.0 <= s.voltage_v <= MAX_METER_VOLTAGE_V:
            return (f"meter {self.gun}: voltage {s.voltage_v:.1f} V outside "
                    f"-10..{MAX_METER_VOLTAGE_V:.0f} V")
        if not -MAX_METER_CURRENT_A <= s.current_a <= MAX_METER_CURRENT_A:
            return (f"meter {self.gun}: current {s.current_a:.1f} A beyond "
                    f"±{MAX_METER_CURRENT_A:.0f} A")
        if s.energy_wh < 0:
            return f"meter {self.gun}: negative energy register {s.energy_wh:.3f} Wh"
        if s.energy_wh < self._energy_wh - ENERGY_TOLERANCE_WH:
            return (f"meter {self.gun}: energy went backwards from {self._energy_wh:.3f} "
                    f"to {s.energy_wh:.3f} Wh")
        return None

    async def _read(self) -> MeterState:
        regs = await self.link.read_input(0, METER_INPUT_COUNT)
        return MeterState(
            self.gun, True, None, self.clock(),
            voltage_v=decode_f32(regs, MeterInput.VOLTAGE),
            current_a=decode_f32(regs, MeterInput.CURRENT),
            power_w=decode_f32(regs, MeterInput.POWER),
            energy_wh=decode_f64(regs, MeterInput.ENERGY),
        )

    async def poll(self) -> MeterState:
        try:
            state = await self.link.run_poll(self._read)
            why = self._check(state)
            if math.isfinite(state.energy_wh):
                # A backwards step is reported once, then taken as the new baseline (meter
                # replaced or reset) so that the meter recovers on its next sane answer.
                self._energy_wh = state.energy_wh
            if why is not None:
                raise BadReplyError(why)
        except HardwareError as exc:
            self.health.record(exc)
            self._last = replace(self._last, available=self.health.available,
                                 reason=self.health.reason, read_at=self.clock())
            if self.health.available:  # a tolerated miss: values are the last good ones
                self._last = replace(self._last, reason=f"stale: {exc}")
            return self._last
        self.health.ok()
        self._last = state
        return state

    def reset_energy_check(self) -> None:
        """Forget the last energy reading (after a meter replacement)."""
        self._energy_wh = -math.inf

    async def close(self) -> None:
        await self.link.close()
