"""The station's hardware boundary in one object: ``Hardware`` owns every device driver.

``poll_all()`` polls all modules, the matrix and the meters concurrently (one connection per
device) and returns a ``HardwareSnapshot``. Each device has its own timeout inside the poll
deadline, so a slow or dead device is reported unavailable without delaying the others.

This module also re-exports the driver API, so the control cycle needs one import::

    from power.modbus_driver import Hardware, HardwareConfig
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Self, TypeVar

import numpy as np

from power.matrix import MatrixDriver, MatrixState, ModbusMatrix
from power.meters import MeterDriver, MeterState, ModbusMeter
from power.modbus_base import (
    BadReplyError,
    Clock,
    DeviceEndpoint,
    DeviceHealth,
    DeviceTimeoutError,
    DeviceUnavailableError,
    HardwareError,
    InterlockRefusedError,
    LinkSettings,
    ModbusExceptionError,
)
from power.modbus_map import (
    GATEWAY_MATRIX_UNIT,
    MAX_GATEWAY_GUNS,
    MAX_GATEWAY_MODULES,
    gateway_meter_unit,
    gateway_module_unit,
    matrix_port,
    meter_port,
    meter_unit,
    module_port,
)
from power.modules import ModbusModule, ModuleDriver, ModuleRating, ModuleState

__all__ = [
    "BadReplyError",
    "DeviceEndpoint",
    "DeviceTimeoutError",
    "DeviceUnavailableError",
    "Hardware",
    "HardwareConfig",
    "HardwareError",
    "HardwareSnapshot",
    "InterlockRefusedError",
    "LinkSettings",
    "MatrixDriver",
    "MatrixState",
    "MeterDriver",
    "MeterState",
    "ModbusExceptionError",
    "ModuleDriver",
    "ModuleRating",
    "ModuleState",
]


@dataclass(frozen=True, slots=True)
class HardwareConfig:
    """Where every device answers, plus the link timing shared by all of them."""

    modules: tuple[DeviceEndpoint, ...]
    matrix: DeviceEndpoint
    meters: tuple[DeviceEndpoint, ...]
    link: LinkSettings = field(default_factory=LinkSettings)

    @property
    def guns(self) -> int:
        return len(self.meters)

    @classmethod
    def port_per_device(
        cls, host: str, base_port: int, modules: int, guns: int,
        link: LinkSettings | None = None,
    ) -> HardwareConfig:
        """The simulator's default layout: module i on base+i, matrix base+M, meters base+M+1."""
        return cls(
            tuple(DeviceEndpoint(host, module_port(base_port, i), 1) for i in range(modules)),
            DeviceEndpoint(host, matrix_port(base_port, modules), 1),
            tuple(DeviceEndpoint(host, meter_port(base_port, modules), meter_unit(g))
                  for g in range(guns)),
            link or LinkSettings(),
        )

    @classmethod
    def gateway(
        cls, host: str, port: int, modules: int, guns: int, link: LinkSettings | None = None
    ) -> HardwareConfig:
        """One gateway port: modules are units 1..M, the matrix 240, meters 241+g."""
        if modules > MAX_GATEWAY_MODULES or guns > MAX_GATEWAY_GUNS:
            raise ValueError(f"gateway layout holds at most {MAX_GATEWAY_MODULES} modules and "
                             f"{MAX_GATEWAY_GUNS} guns")
        return cls(
            tuple(DeviceEndpoint(host, port, gateway_module_unit(i)) for i in range(modules)),
            DeviceEndpoint(host, port, GATEWAY_MATRIX_UNIT),
            tuple(DeviceEndpoint(host, port, gateway_meter_unit(g)) for g in range(guns)),
            link or LinkSettings(),
        )


@dataclass(frozen=True, slots=True)
class HardwareSnapshot:
    """Everything one ``poll_all`` learned; ``started_at``/``read_at`` are clock seconds."""

    modules: tuple[ModuleState, ...]
    matrix: MatrixState
    meters: tuple[MeterState, ...]
    started_at: float
    read_at: float

    @property
    def poll_s(self) -> float:
        return self.read_at - self.started_at

    @property
    def unavailable(self) -> list[str]:
        """Reasons of every unavailable device, for logs."""
        out = [f"module {m.index}: {m.reason}" for m in self.modules if not m.available]
        if not self.matrix.available:
            out.append(f"matrix: {self.matrix.reason}")
        out += [f"meter {m.gun}: {m.reason}" for m in self.meters if not m.available]
        return out


_S = TypeVar("_S", ModuleState, MatrixState, MeterState)


class Hardware:
    """Owns the drivers of one station and polls them concurrently.

    Drivers can be injected (any ``ModuleDriver`` / ``MatrixDriver`` / ``MeterDriver``, e.g.
    fakes in unit tests); by default they are built from ``config``. Use as an async context
    manager, or call ``start()`` / ``close()``.
    """

    def __init__(
        self,
        config: HardwareConfig,
        clock: Clock = time.monotonic,
        *,
        modules: Sequence[ModuleDriver] | None = None,
        matrix: MatrixDriver | None = None,
        meters: Sequence[MeterDriver] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        link = config.link
        self.modules: list[ModuleDriver] = list(modules) if modules is not None else [
            ModbusModule(i, ep, link, clock) for i, ep in enumerate(config.modules)
        ]
        self.matrix: MatrixDriver = matrix or ModbusMatrix(
            len(config.modules), config.guns, config.matrix, link, clock
        )
        self.meters: list[MeterDriver] = list(meters) if meters is not None else [
            ModbusMeter(g, ep, link, clock) for g, ep in enumerate(config.meters)
        ]
        self.last: HardwareSnapshot | None = None

    async def start(self) -> HardwareSnapshot:
        """First poll: connects every device (failures retry with backoff on later polls)."""
        return await self.poll_all()

    async def close(self) -> None:
        await asyncio.gather(
            *(m.close() for m in self.modules), self.matrix.close(),
            *(m.close() for m in self.meters), return_exceptions=True,
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _deadline_s(self) -> float:
        # Each driver keeps to its own poll budget; this is only the safety net above it.
        return self.config.link.poll_budget_s + 0.02

    def _outcome(self, what: str, task: asyncio.Task[_S], fallback: _S, deadline_s: float,
                 driver: object) -> _S:
        """The task's state, or the fallback (the last state) with why this poll has none.

        A poll cut at the deadline is a missed answer, booked in the driver's
        :class:`DeviceHealth` like its own timeout: within ``max_missed`` the last values stay,
        marked ``stale:`` (the allocator and the safety monitor do not act on them), so one
        slow poll of a loaded host does not take every device away for a cycle (measured: all
        11 devices of a station cut at once, the guns' current dropped to ~0 A and ramped
        back). A driver error is a bug and makes the device unavailable at once."""
        if task.cancelled():
            reason = f"{what}: poll exceeded {deadline_s * 1000:.0f} ms"
            health = getattr(driver, "health", None)
            if isinstance(health, DeviceHealth) and getattr(fallback, "available", False):
                health.miss(reason)
                if health.available:
                    return replace(fallback, read_at=self.clock(), reason=f"stale: {reason}")
                reason = health.reason or reason
        elif (exc := task.exception()) is not None:
            reason = f"{what}: driver error: {exc!r}"  # a bug, but the cycle must go on
        else:
            return task.result()
        return replace(fallback, available=False, read_at=self.clock(), reason=reason)

    async def poll_all(self, deadline_s: float | None = None) -> HardwareSnapshot:
        """Poll every device concurrently; never raises for device trouble.

        Each device keeps to ``LinkSettings.poll_budget_s`` itself; ``deadline_s`` (default:
        the budget + 20 ms) is the safety net above it, for injected drivers that do not.
        A device that overruns is cancelled; its answer counts as missed (stale last values
        within ``max_missed``, unavailable beyond).
        """
        deadline = self._deadline_s() if deadline_s is None else deadline_s
        started = self.clock()
        loop = asyncio.get_running_loop()
        mod_tasks = [loop.create_task(m.poll()) for m in self.modules]
        mx_task = loop.create_task(self.matrix.poll())
        met_tasks = [loop.create_task(m.poll()) for m in self.meters]
        every: list[asyncio.Task[Any]] = [*mod_tasks, mx_task, *met_tasks]
        _done, pending = await asyncio.wait(every, timeout=deadline)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        mods = tuple(
            self._outcome(f"module {m.index}", t, _fallback_module(m, started), deadline, m)
            for m, t in zip(self.modules, mod_tasks, strict=True)
        )
        matrix_state = self._outcome("matrix", mx_task, _fallback_matrix(self.matrix, started),
                                     deadline, self.matrix)
        mets = tuple(
            self._outcome(f"meter {m.gun}", t, _fallback_meter(m, started), deadline, m)
            for m, t in zip(self.meters, met_tasks, strict=True)
        )
        snap = HardwareSnapshot(mods, matrix_state, mets, started, self.clock())
        self.last = snap
        return snap


def _fallback_module(m: ModuleDriver, t: float) -> ModuleState:
    last = getattr(m, "last", None)
    return last if isinstance(last, ModuleState) else ModuleState(m.index, False, None, t)


def _fallback_meter(m: MeterDriver, t: float) -> MeterState:
    last = getattr(m, "last", None)
    return last if isinstance(last, MeterState) else MeterState(m.gun, False, None, t)


def _fallback_matrix(m: MatrixDriver, t: float) -> MatrixState:
    last = getattr(m, "last", None)
    if isinstance(last, MatrixState):
        return last
    empty = np.zeros((m.modules, m.guns), dtype=bool)
    return MatrixState(m.modules, m.guns, False, None, t, empty, empty)
