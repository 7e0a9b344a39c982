"""ChangeAvailability of both versions, persisted: which EVSEs / connectors (0: the
station) the backend set Inoperative, and what that means for the station.

A part of the client built with its collaborators: the database (table ``availability``
of :mod:`controller.ocpp.storage`) and an :class:`AvailabilityHost` (the station, whether a
gun has a running transaction). Whoever reports a gun's status to the backend listens in
``on_apply`` (the link: a StatusNotification when online).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Protocol

from controller.ocpp import storage
from controller.ocpp.ports import StationPort
from controller.operator import clear_gun_fault


class AvailabilityHost(Protocol):
    """What availability needs of the client around it."""

    @property
    def station(self) -> StationPort | None:
        """The attached station (None before ``attach``: nothing is told)."""

    def busy(self, g: int) -> bool:
        """Gun ``g`` (0-based) has a running transaction: it is never cut."""


class Availability:
    """The persisted operative state by EVSE / connector id (0: the station)."""

    def __init__(self, db: sqlite3.Connection, guns: int, host: AvailabilityHost) -> None:
        self.db, self.guns, self.host = db, guns, host
        #: Called with the gun after the station was told (never blocks).
        self.on_apply: list[Callable[[int], None]] = []
        storage.migrate(db)
        self.states: dict[int, bool] = {int(e): bool(o) for e, o in db.execute(
            "SELECT evse, operative FROM availability")}

    def operative(self, g: int) -> bool:
        """Gun ``g`` (0-based) is operative: neither it nor the station was set Inoperative."""
        return self.states.get(0, True) and self.states.get(g + 1, True)

    def change(self, evse: int, operative: bool) -> str:
        """Persist the EVSE's (0: the station's) state; a gun with a running transaction
        keeps it and goes inoperative when it ends (``Scheduled``). Operative also
        acknowledges a latched gun fault there (``controller.operator.clear_gun_fault``)."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO availability VALUES (?, ?)",
                            (evse, int(operative)))
        self.states[evse] = operative
        guns = range(self.guns) if evse == 0 else [evse - 1]
        busy = any(self.host.busy(g) for g in guns)
        for g in guns:
            station = self.host.station
            if operative and station is not None and self.operative(g):
                # the operator's clear from the backend (docs/control-cycle.md)
                clear_gun_fault(station, g, "ocpp")
            self.apply(g)
        return "Scheduled" if busy and not operative else "Accepted"

    def apply(self, g: int) -> None:
        """Tell the station (a running transaction is never cut) and the backend."""
        station = self.host.station
        if station is None:
            return
        station.set_available(g, self.operative(g) or self.host.busy(g))
        for listener in self.on_apply:
            listener(g)
