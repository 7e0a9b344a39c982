"""The Reset bookkeeping both versions share (2.0.1 B11/B12, 1.6 Reset Hard/Soft).

A Reset's first half asks the station to stop every open transaction and gives it
:data:`STATION_END_WAIT_S` to report their ends (the regular end with its reading); what is
still open is ended by the version's reporter. The second half delivers the queue (bounded:
nothing is sent twice), then hands the restart to ``on_reset`` (station and services
restart); without an owner only the OCPP connection restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from controller.ocpp.bridge import OpenTransactions, StationView
from controller.ocpp.ports import Log
from controller.ocpp.queue import MessageQueue
from controller.ocpp.tasks import Progress

#: A Reset asks the station to stop its transactions and waits this long for the station
#: to report their ends (then ends the rest itself).
STATION_END_WAIT_S = 5.0


class Reconnect(Protocol):
    """What a Reset needs of the link."""

    boot_status: str | None

    async def drain(self) -> bool:
        """Wait (bounded) until the backend answered every queued message."""

    async def end_connection(self) -> None:
        """Close the connection and reconnect at once."""


class Resets:
    """Both halves of a Reset; ``on_reset`` is the owner's restart (None: the link's)."""

    def __init__(self, view: StationView, txs: OpenTransactions, queue: MessageQueue,
                 link: Reconnect, progress: Progress, log: Log) -> None:
        self.view, self.txs, self.queue, self.link = view, txs, queue, link
        self.progress, self.log = progress, log
        #: Called when a Reset has ended the transactions: the owner (``run_services``)
        #: restarts the station and its services. None: only the OCPP connection restarts.
        self.on_reset: Callable[[], None] | None = None
        #: 2.0.1 Reset OnIdle while transactions run: the reset waits for their end.
        self.pending = False

    async def end_transactions(self, why: str, wait: bool,
                               end_here: Callable[[int, str], None]) -> None:
        """The station is asked to stop every open transaction with ``why``; with ``wait``
        it gets :data:`STATION_END_WAIT_S` to report their ends; the rest is ended here."""
        for g in list(self.txs.open):
            if self.view.station is not None:
                self.view.station.stop_charging(g, why)
        if wait:
            await self.progress.until(lambda: not self.txs.open, STATION_END_WAIT_S)
        for g in list(self.txs.open):
            end_here(g, why)

    async def restart(self) -> None:
        """Deliver the queue and wait for the answers (bounded), forget the boot, then
        restart through ``on_reset`` or, without an owner, the connection only."""
        if not await self.link.drain():
            self.log.warning("Reset: queue not delivered in time, sent again after the restart",
                             queued=len(self.queue))
        self.link.boot_status = None
        if self.on_reset is not None:
            self.on_reset()
            return
        await self.link.end_connection()
