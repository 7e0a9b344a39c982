"""What the handlers of either OCPP version use of their long-lived client.

:class:`HostBase` holds the members both versions' handler hosts share (``Host201`` in
``controller.ocpp.v201.client``, ``Host16`` in ``controller.ocpp.v16.client`` add what
differs), so a shared member is declared once and the client modules never import a
service. The version's service (a composition of parts) is the host.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Protocol

from controller.ocpp.auth import AuthCache
from controller.ocpp.bridge import LocalLimit
from controller.ocpp.ports import Log, StationPort
from controller.ocpp.smart_charging import Profiles


class HostBase(Protocol):
    """The members both versions' handlers use."""

    log: Log
    guns: int
    auth_cache: AuthCache
    profiles: Profiles

    @property
    def attached(self) -> StationPort:
        """The station (raises before ``attach``: the handler answers InternalError)."""

    def wall(self) -> datetime: ...

    def spawn(self, coro: Awaitable[object], *, connection: bool = False) -> object:
        """Run a follow-up as an owned task (``connection``: ends with the websocket)."""

    def apply_limits(self) -> None: ...

    def change_availability(self, evse: int, operative: bool) -> str: ...

    def local_limits(self, evse: int, horizon_s: float = 86_400.0
                     ) -> tuple[LocalLimit, ...]: ...
