"""Test backends that behave like the independent OCPP backends of issue 16, and a guard that
fails a test on any task exception nobody retrieved.

* :class:`InteropBackend` (2.0.1): answers a TransactionEvent's idToken ``Unknown`` unless it
  is one of ``tokens`` (the truck's own token is not known to the operator), may answer
  TransactionEvents only after ``tx_delay`` s (a database behind it), may leave the first
  ``drop_boots`` BootNotifications unanswered, and — with ``hold_sessions`` — keeps a
  station's old session until that socket is closed: a new connection of the same station
  is not read before (like a real backend that owns one session per station).
* :func:`lost_exceptions`: installs a loop exception handler, runs the body, collects
  garbage and asserts that nothing reached the handler ("Task exception was never
  retrieved", "Future exception was never retrieved", ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v201 import call_result
from ocpp_fixtures import Backend, Csms, FakeStation


@contextlib.asynccontextmanager
async def lost_exceptions() -> AsyncIterator[list[dict[str, Any]]]:
    """Fail when a task or future ends with an exception nobody retrieved."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    try:
        yield seen
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(old)
    assert not seen, [str(c.get("message")) + " " + repr(c.get("exception")) for c in seen]


class TokenCsms(Csms):
    """A backend that knows only its own tokens in TransactionEvents."""

    backend: InteropBackend

    async def route_message(self, raw_msg: str) -> None:
        msg = json.loads(raw_msg)
        if msg[0] == 2 and msg[2] == "BootNotification" and self.backend.drop_boots > 0:
            self.backend.drop_boots -= 1
            self.backend.dropped.append(raw_msg)
            self.backend.changed.set()
            return  # never answered
        await super().route_message(raw_msg)

    @on("TransactionEvent")
    async def tx_event(self, **kw: Any) -> Any:
        self._rec("TransactionEvent", kw)
        if self.backend.tx_delay:
            await asyncio.sleep(self.backend.tx_delay)
        token = kw.get("id_token")
        if token is None:
            return call_result.TransactionEvent()
        ok = token["id_token"] in self.backend.tokens
        return call_result.TransactionEvent(
            id_token_info={"status": "Accepted" if ok else "Unknown"})


@dataclass
class InteropBackend(Backend):
    tokens: set[str] = field(default_factory=lambda: {"REMOTE-OP-1"})
    tx_delay: float = 0.0
    drop_boots: int = 0
    hold_sessions: bool = False
    dropped: list[str] = field(default_factory=list)
    sessions: int = 0  # connections served (a new one waits for the old with hold_sessions)

    def make_cp(self, cid: str, ws: Any) -> Any:
        return TokenCsms(cid, ws, self)

    async def start(self, port: int = 0) -> None:
        lock = asyncio.Lock()

        async def handler(ws: Any) -> None:
            async with lock if self.hold_sessions else contextlib.nullcontext():
                self.sessions += 1
                cp = self.make_cp(ws.request.path.rsplit("/", 1)[-1], ws)
                self.cp = cp
                self.changed.set()
                with contextlib.suppress(websockets.ConnectionClosed):
                    await cp.start()

        proto = websockets.Subprotocol(self.subprotocol)
        self.server = await websockets.serve(handler, "127.0.0.1", port, subprotocols=[proto])
        self.port = self.server.sockets[0].getsockname()[1]

    def tx_keys(self) -> list[tuple[str, int]]:
        return [(e["transaction_info"]["transaction_id"], e["seq_no"])
                for e in self.of("TransactionEvent")]


@dataclass
class EndsOnStop(FakeStation):
    """A fake station whose sessions end (as the real one reports) when told to stop."""

    def stop_charging(self, gun: int, reason: str = "Remote") -> None:
        super().stop_charging(gun, reason)
        asyncio.get_running_loop().call_soon(self._finish, gun, reason)

    def _finish(self, g: int, reason: str) -> None:
        from controller.session import GunState

        self.event("charging_stopped", g, reason)
        self.go(g, GunState.FINISHING, reason)
        self.go(g, GunState.AVAILABLE, reason)
