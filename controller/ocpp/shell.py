"""What both versions' services answer the same way, by handing it to the same part.

A service (``v201.service.OcppService``, ``v16.service.Ocpp16Service``) builds its parts
and wires them; the members the station, the handlers and the tests reach through the
service are delegations, and those that do not differ between the versions live here once.
Nothing here holds state or decides: a member that needs a version's behaviour is declared
in that version's service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import ClientConnection

from controller.ocpp.availability import Availability
from controller.ocpp.bridge import LocalLimit, StationBridge, StationView
from controller.ocpp.link import Link, MessageAdapter
from controller.ocpp.outbox import Outbox
from controller.ocpp.ports import StationPort
from controller.ocpp.reset import Resets
from controller.ocpp.tasks import Tasks


class ServiceShell:
    """The delegations both OCPP services share (the parts are set by the service)."""

    link: Link
    bridge: StationBridge
    view: StationView
    avail: Availability
    resets: Resets
    tasks: Tasks
    outbox: Outbox
    adapter: MessageAdapter

    # ------------------------------------------------------------------ OcppClientPort
    def attach(self, station: StationPort) -> None:
        """Observe ``station`` and answer its authorization requests."""
        self.bridge.attach(station)

    async def run(self) -> None:
        await self.link.run()

    def stop(self) -> None:
        self.link.stop()

    @property
    def online(self) -> bool:
        return self.link.online

    @property
    def on_reset(self) -> Callable[[], None] | None:
        return self.resets.on_reset

    @on_reset.setter
    def on_reset(self, hook: Callable[[], None] | None) -> None:
        self.resets.on_reset = hook

    def link_password(self) -> str | None:
        return self.adapter.password()

    # ------------------------------------------------------------------ the handlers' host
    @property
    def attached(self) -> StationPort:
        return self.view.attached

    @property
    def boot_status(self) -> str | None:
        return self.link.boot_status

    @property
    def availability(self) -> dict[int, bool]:
        """Operative by EVSE / connector id (0: the station); missing: operative."""
        return self.avail.states

    def spawn(self, coro: Awaitable[object], *, connection: bool = False) -> asyncio.Task[object]:
        return self.tasks.spawn(coro, connection=connection)

    def security_event(self, kind: str, info: str = "") -> None:
        self.outbox.security_event(kind, info)

    def apply_limits(self) -> None:
        self.view.apply_limits()

    def local_limits(self, evse: int, horizon_s: float = 86_400.0) -> tuple[LocalLimit, ...]:
        return self.view.local_limits(evse, horizon_s)

    # ------------------------------------------------------------------ for the tests' eyes
    @property
    def _tasks(self) -> set[asyncio.Task[object]]:
        return self.tasks.tasks

    @property
    def _conn_tasks(self) -> set[asyncio.Task[object]]:
        return self.tasks.conn_tasks

    @property
    def _ws(self) -> ClientConnection | None:
        return self.link.ws
