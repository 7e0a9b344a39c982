"""What the station needs from its hardware, whichever register layout is behind it.

``power.modbus_driver.Hardware`` (one Modbus device per module) and
``power.power_unit.PowerUnitHardware`` (one power-unit controller in front of every module)
both satisfy :class:`StationHardware`, so the station, ``apply_commands`` and the safety
monitor work unchanged with either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from power.matrix import MatrixDriver
from power.meters import MeterDriver
from power.modbus_base import LinkSettings
from power.modules import ModuleDriver

if TYPE_CHECKING:
    from power.modbus_driver import HardwareSnapshot


class HasLink(Protocol):
    """A hardware configuration: at least the link timing the cycle derives its budgets from."""

    @property
    def link(self) -> LinkSettings: ...

    @property
    def guns(self) -> int: ...


@runtime_checkable
class StationHardware(Protocol):
    """The station's hardware boundary.

    ``poll_all`` polls everything concurrently within ``deadline_s`` and never raises for
    device trouble (unavailable devices carry a reason). Commands go through ``modules[i]``,
    ``matrix`` and are each allowed to fail with a ``HardwareError``; ``start`` is the first
    poll (connects), ``close`` disconnects. ``last`` is the latest snapshot or None.
    """

    @property
    def config(self) -> HasLink: ...

    @property
    def modules(self) -> Sequence[ModuleDriver]: ...

    @property
    def matrix(self) -> MatrixDriver: ...

    @property
    def meters(self) -> Sequence[MeterDriver]: ...

    async def start(self) -> HardwareSnapshot: ...

    async def poll_all(self, deadline_s: float | None = None) -> HardwareSnapshot: ...

    async def close(self) -> None: ...
