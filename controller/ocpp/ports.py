"""The seams of the OCPP station client, as small Protocols (issue 20 §1).

:class:`StationPort` is everything either client version uses of the station
(``controller.station.Station`` has it; the tests' ``FakeStation`` type-checks against it).
:class:`OcppClientPort` is everything the rest of the controller (``services``, the metrics,
the secret redaction) uses of a client, whatever its version: the factory
(:mod:`controller.ocpp.factory`) returns one. Neither module imports a client version, so
nothing here can form an import loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Protocol

from controller.limits import LimitBook
from controller.ocpp.queue import MessageQueue
from controller.operator import Clearable
from controller.records import CycleRecord
from controller.station import StationEvent

#: The station's authorization hook: (gun, idToken or None) → accepted.
Authorizer = Callable[[int, str | None], Awaitable[bool]]
#: Called with (variable or key name, new value) right after the backend writes one.
ChangeHook = Callable[[str, str], None]


class Log(Protocol):
    """The structured logger a part writes to (``controller.logs.get_logger``)."""

    def info(self, event: str, /, **fields: object) -> object: ...

    def warning(self, event: str, /, **fields: object) -> object: ...

    def error(self, event: str, /, **fields: object) -> object: ...

    def exception(self, event: str, /, **fields: object) -> object: ...


class StationPort(Clearable, Protocol):
    """What an OCPP client needs of the station: its sessions (``Clearable``: the backend's
    ChangeAvailability Operative acknowledges a latched gun fault), its limits and clock,
    its events, and the commands the backend may give. Gun numbers are 0-based."""

    authorizer: Authorizer | None

    @property
    def limits(self) -> LimitBook: ...

    @property
    def last_record(self) -> CycleRecord | None:
        """The record of the last cycle, kept before that cycle's events are told."""

    def clock(self) -> float:
        """The monotonic time the cycle reads (limit expiries are on it)."""

    def subscribe(self, observer: Callable[[StationEvent], None], /) -> Callable[[], None]:
        """Add an observer (must never block); returns its remover."""

    def stop_charging(self, gun: int, reason: str = "Remote", /) -> None: ...

    def set_authorization(self, gun: int, accepted: bool, /) -> None: ...

    def set_available(self, gun: int, available: bool, /) -> None: ...


class OcppClientPort(Protocol):
    """An OCPP client of either version, as the services run it: ``attach`` before the
    station runs (no session starts unobserved), ``await run()`` until ``stop()``, then
    ``await close()`` (ends the open transactions, queued, and closes the database).
    ``on_reset`` is called when a backend Reset has ended the transactions (None: only the
    connection restarts)."""

    station_id: str
    on_reset: Callable[[], None] | None
    queue: MessageQueue
    db: sqlite3.Connection

    @property
    def online(self) -> bool:
        """Booted and connected (the link's state; read-only)."""

    def attach(self, station: StationPort) -> None: ...

    async def run(self) -> None: ...

    def stop(self) -> None: ...

    async def close(self) -> None: ...

    def link_password(self) -> str | None:
        """The password the next connect sends (profiles 1 and 2), None when there is none."""

    def on_setting_change(self, hook: ChangeHook, *, first: bool = False) -> None:
        """Call ``hook(name, value)`` after every write of a device-model variable (2.0.1)
        or configuration key (1.6); ``first``: before the hooks already there."""
