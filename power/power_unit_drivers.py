"""Per-module and matrix facades of the power unit: the ``ModuleDriver`` and
``MatrixDriver`` contracts over one ``PowerUnit`` (``power/power_unit.py``), so that the
station and ``apply_commands`` drive either layout the same way.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from power.matrix import MatrixState
from power.modbus_map import coil_index
from power.modules import ModuleRating, ModuleState
from power.power_unit_map import ControlSlot

if TYPE_CHECKING:
    from power.power_unit import PowerUnit


class PowerUnitModule:
    """``ModuleDriver`` of module ``index`` behind the power unit."""

    def __init__(self, unit: PowerUnit, index: int) -> None:
        self.unit = unit
        self.index = index

    @property
    def last(self) -> ModuleState:
        return self.unit.modules[self.index]

    @property
    def rating(self) -> ModuleRating | None:
        return self.unit.ratings[self.index] if self.unit.ratings else None

    async def poll(self) -> ModuleState:
        """Polls the whole unit (one snapshot for all); ``PowerUnitHardware.poll_all`` is
        the cheap way to read every module."""
        await self.unit.poll()
        return self.last

    async def set_output(self, voltage_v: float, current_a: float) -> None:
        r = self.rating
        v_max = r.max_voltage_v if r else math.inf
        a_max = r.rated_current_a if r else math.inf
        if not (math.isfinite(voltage_v) and 0.0 <= voltage_v <= v_max):
            raise ValueError(f"module {self.index}: voltage setpoint {voltage_v} V outside "
                             f"0..{v_max} V")
        if not (math.isfinite(current_a) and 0.0 <= current_a <= a_max):
            raise ValueError(f"module {self.index}: current limit {current_a} A outside "
                             f"0..{a_max} A")
        await self.unit.set_output(self.index, voltage_v, current_a)

    async def enable(self) -> None:
        await self.unit.write_control(self.index, ControlSlot.ENABLE, 1)

    async def disable(self) -> None:
        await self.unit.write_control(self.index, ControlSlot.ENABLE, 0)

    async def reset_fault(self) -> None:
        await self.unit.write_control(self.index, ControlSlot.FAULT_RESET, 1)

    async def set_watchdog(self, ms: int) -> None:
        if not 0 <= ms <= 0xFFFF:
            raise ValueError(f"module {self.index}: watchdog {ms} ms outside 0..65535")
        await self.unit.write_control(self.index, ControlSlot.WATCHDOG_MS, int(ms))

    async def close(self) -> None:
        """The unit's connections close with ``PowerUnitHardware.close``."""


class PowerUnitMatrix:
    """``MatrixDriver`` of the matrix behind the power unit (coils and discrete inputs)."""

    def __init__(self, unit: PowerUnit) -> None:
        self.unit = unit
        self.modules = unit.m_n
        self.guns = unit.g_n

    @property
    def last(self) -> MatrixState:
        return self.unit.matrix

    async def poll(self) -> MatrixState:
        await self.unit.poll()
        return self.unit.matrix

    def _index(self, module: int, gun: int) -> int:
        if not 0 <= module < self.modules:
            raise ValueError(f"module {module} outside 0..{self.modules - 1}")
        return coil_index(module, gun, self.guns)

    async def connect(self, module: int, gun: int) -> None:
        await self.unit.set_coil(self._index(module, gun), True)

    async def disconnect(self, module: int, gun: int) -> None:
        await self.unit.set_coil(self._index(module, gun), False)

    async def close(self) -> None:
        """The unit's connections close with ``PowerUnitHardware.close``."""
