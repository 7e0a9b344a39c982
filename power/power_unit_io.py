"""Plumbing of the power-unit driver: its configuration, a pool of connections to one device
(requests in flight together, since pymodbus answers one request at a time per connection),
and the batches that coalesce the commands of one event-loop turn into one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from power.modbus_base import Clock, DeviceEndpoint, LinkSettings, ModbusLink

_T = TypeVar("_T")

@dataclass(frozen=True, slots=True)
class PowerUnitConfig:
    """Where the power unit and the meters answer; ``connections`` to the unit in parallel."""

    unit: DeviceEndpoint
    module_count: int
    meters: tuple[DeviceEndpoint, ...]
    link: LinkSettings = field(default_factory=LinkSettings)
    #: Connections to the unit; 0 (auto): one per request of a poll (so none waits for
    #: another), at most ``AUTO_MAX_CONNECTIONS``.
    connections: int = 0

    def __post_init__(self) -> None:
        if self.module_count < 1:
            raise ValueError(f"power unit: module_count must be >= 1, got {self.module_count}")
        if not 0 <= self.connections <= 16:
            raise ValueError(f"power unit: connections must be 0 (auto) or 1..16, got "
                             f"{self.connections}")

    @property
    def guns(self) -> int:
        return len(self.meters)


class LinkPool:
    """``n`` connections to one device; each request takes an idle one (never waits twice)."""

    def __init__(self, endpoint: DeviceEndpoint, name: str, settings: LinkSettings,
                 clock: Clock, n: int) -> None:
        self.links = [ModbusLink(endpoint, f"{name} #{i}", settings, clock) for i in range(n)]
        self._idle: asyncio.Queue[ModbusLink] | None = None

    def _queue(self) -> asyncio.Queue[ModbusLink]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for link in self.links:
                self._idle.put_nowait(link)
        return self._idle

    async def run(self, call: Callable[[ModbusLink], Awaitable[_T]]) -> _T:
        idle = self._queue()
        link = await idle.get()
        try:
            return await call(link)
        except asyncio.CancelledError:
            link.drop()  # a late reply must not be taken for the next request's
            raise
        finally:
            idle.put_nowait(link)

    @property
    def connects(self) -> int:
        return sum(link.connects for link in self.links)

    async def close(self) -> None:
        for link in self.links:
            link.drop()
        self._idle = None


_Results = dict[int, BaseException | None]


@dataclass(slots=True)
class _Batch:
    """Values staged in one event-loop turn and each writer's own future (a cancelled
    writer cancels only its own wait, never the write the others wait for)."""

    items: dict[int, Any] = field(default_factory=dict)
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)
    scheduled: bool = False


def _settle(batch: _Batch, task: asyncio.Task[dict[int, BaseException | None]]) -> None:
    """Hand each waiter its own outcome of the flush."""
    if task.cancelled():
        results: dict[int, BaseException | None] = dict.fromkeys(
            batch.items, asyncio.CancelledError())
    elif (exc := task.exception()) is not None:
        results = dict.fromkeys(batch.items, exc)
    else:
        results = task.result()
    for key, fut in batch.waiters:
        if fut.done():
            continue
        err = results.get(key)
        if err is None:
            fut.set_result(None)
        elif isinstance(err, asyncio.CancelledError):
            fut.cancel()
        else:
            fut.set_exception(err)
