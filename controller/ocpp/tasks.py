"""Owned background tasks and the progress signal of one OCPP client.

:class:`Tasks` keeps every task a part starts (``spawn``) until it ends and retrieves its
outcome, so no "Task exception was never retrieved" and nothing outlives ``close``; a
*connection* task ends with the websocket it belongs to. :class:`Progress` wakes whoever
waits for a condition (a queue drained, the transactions ended) at every change instead
of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import websockets

from controller.ocpp.ports import Log


class Progress:
    """A condition wait without polling: parts call :meth:`pulse` at every change a
    waiter may be waiting for; :meth:`until` checks its condition again at each one."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def pulse(self) -> None:
        """Wake everything waiting in :meth:`until` to check its condition again."""
        ev, self._event = self._event, asyncio.Event()
        ev.set()

    async def until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` holds, at most ``timeout`` s. Returns ``done()``."""
        async def settle() -> None:
            while not done():
                await self._event.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settle(), timeout)
        return done()


class Tasks:
    """The client's owned tasks: ``tasks`` outlive a connection (a Reset), ``conn_tasks``
    end with it (follow-ups of the backend's requests, status sends)."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.tasks: set[asyncio.Task[object]] = set()
        self.conn_tasks: set[asyncio.Task[object]] = set()

    def spawn(self, coro: Awaitable[object], *, connection: bool = False) -> asyncio.Task[object]:
        """Run ``coro`` as an owned task: kept until it ends, its exception logged.
        ``connection``: it belongs to the current websocket and is cancelled (and awaited)
        when that connection ends."""
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        (self.conn_tasks if connection else self.tasks).add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[object]) -> None:
        """Done callback of every owned task: forget it and retrieve its outcome."""
        self.tasks.discard(task)
        self.conn_tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, websockets.ConnectionClosed):
            self.log.info("background task ended with the connection", error=repr(exc)[:200])
        elif exc is not None:
            self.log.warning("background task failed", error=repr(exc)[:300])

    async def end_connection_tasks(self, timeout: float = 5.0) -> None:
        """Cancel the connection's tasks and wait (bounded) until each has ended."""
        tasks = list(self.conn_tasks)
        for t in tasks:
            t.cancel()
        if tasks:  # every outcome retrieved (``_reap``); bounded in case one hangs
            await asyncio.wait(tasks, timeout=timeout)

    def cancel_all(self) -> None:
        for t in [*self.tasks, *self.conn_tasks]:
            t.cancel()
