"""The client's way out: messages put into the persistent queue, the sender woken.

:class:`Outbox` is what every part that reports something uses (the transaction reporter,
security events, the grid-limit report): the message is persisted first (at-least-once),
then the sender of :class:`~controller.ocpp.link.Link` is woken. :func:`standard_retry` is
the retry rule both versions share for a message the backend did not confirm.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from controller.ocpp.queue import MessageQueue, Queued
from controller.ocpp.wire import iso


class Outbox:
    """Puts messages into ``queue`` and wakes the sender waiting in :meth:`queued`."""

    def __init__(self, queue: MessageQueue, wall: Callable[[], datetime]) -> None:
        self.queue = queue
        self.wall = wall
        self._waiters: set[asyncio.Event] = set()

    def put(self, action: str, payload: dict[str, Any]) -> None:
        """Queue a message that must not be lost (persisted first)."""
        self.queue.put(action, payload)
        self.notify()

    def notify(self) -> None:
        """Wake the sender (a message was queued by a part that wrote the queue itself)."""
        for ev in list(self._waiters):
            ev.set()

    async def queued(self) -> None:
        """Return at the next :meth:`notify`."""
        ev = asyncio.Event()
        self._waiters.add(ev)
        try:
            await ev.wait()
        finally:
            self._waiters.discard(ev)

    def security_event(self, kind: str, info: str = "") -> None:
        """SecurityEventNotification (same payload in 2.0.1 and the 1.6 security
        extension), queued: the station's events are all critical."""
        payload: dict[str, Any] = {"type": kind, "timestamp": iso(self.wall())}
        if info:
            payload["techInfo"] = info[:255]
        self.put("SecurityEventNotification", payload)


def standard_retry(msg: Queued, tries: int, exc: Exception, tx_actions: tuple[str, ...],
                   attempts: int, interval: float) -> float | None:
    """The retry rule both versions share: transaction messages get ``attempts`` tries,
    ``tries × interval`` apart; an unanswered security event is retried without a limit (a
    CallError is an answer); anything else is dropped. None: drop now."""
    if msg.action == "SecurityEventNotification" and isinstance(exc, TimeoutError):
        tries = min(tries, 10)
    elif msg.action not in tx_actions or tries >= attempts:
        return None
    return tries * interval
