"""What OCPP 2.0.1 says on the wire for the link (:class:`~controller.ocpp.link.MessageAdapter`):
BootNotification (with the persisted boot reason and the backend's clock), Heartbeat,
StatusNotification, the CALL of a queued row, the E13 retry rule and what a confirmed
TransactionEvent's idTokenInfo means (StopTxOnInvalidId)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import OCPPError
from ocpp.v201 import call
from websockets.asyncio.client import ClientConnection

from controller.ocpp.availability import Availability
from controller.ocpp.bridge import StationView
from controller.ocpp.config import OcppConfig
from controller.ocpp.link import BootAnswer, Session
from controller.ocpp.outbox import Outbox, standard_retry
from controller.ocpp.ports import Log
from controller.ocpp.queue import MessageQueue, Queued
from controller.ocpp.v201.client import Host201, OcppClient
from controller.ocpp.v201.device_model import DeviceModel
from controller.ocpp.v201.transactions import Transactions
from controller.ocpp.wire import iso

#: A backend clock outside these is a broken backend, not a time to adopt.
MIN_SANE_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_SANE_TIME = datetime(9000, 1, 1, tzinfo=UTC)


class BackendClock:
    """The time base of every 2.0.1 timestamp: the local clock plus the offset adopted
    from the backend (SettingSystemTime); the OS clock is never touched."""

    def __init__(self, local: Callable[[], datetime], log: Log) -> None:
        self.local, self.log = local, log
        #: The backend's time minus ours.
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return self.local() + self.offset

    def sync(self, current_time: str, tolerance_s: float) -> float | None:
        """Adopt the backend's ``currentTime`` when it is off by more than
        ``tolerance_s``; returns the adjustment in seconds (None: clock kept)."""
        try:
            theirs = datetime.fromisoformat(current_time.replace("Z", "+00:00"))
            if theirs.tzinfo is None:
                theirs = theirs.replace(tzinfo=UTC)
            theirs = theirs.astimezone(UTC)  # year 1 at +14:00 is not a UTC time
            if not MIN_SANE_TIME <= theirs <= MAX_SANE_TIME:
                raise ValueError("outside 1970..9000")
        except (ValueError, OverflowError) as exc:
            self.log.warning("unusable currentTime from the backend: clock kept",
                             value=str(current_time)[:64], error=str(exc)[:100])
            return None
        diff = theirs - self()
        if abs(diff.total_seconds()) <= tolerance_s:
            return None
        self.offset += diff
        self.log.warning("clock set from the backend", adjusted_s=diff.total_seconds())
        return diff.total_seconds()


class Adapter201:
    """The 2.0.1 messages of the link; the boot reason of the next boot, persisted."""

    def __init__(self, cfg: OcppConfig, station_id: str, db: sqlite3.Connection,
                 dm: DeviceModel, queue: MessageQueue, tx: Transactions, view: StationView,
                 availability: Availability, clock: BackendClock, outbox: Outbox,
                 host: Host201, log: Log) -> None:
        self.cfg, self.station_id, self.db, self.dm, self.queue = cfg, station_id, db, dm, queue
        self.tx, self.view, self.availability, self.clock = tx, view, availability, clock
        self.outbox, self.host, self.log = outbox, host, log
        row = db.execute("SELECT reason FROM boot_reason").fetchone()
        self.boot_reason = str(row[0]) if row else "PowerUp"  # a Reset before this start

    def set_boot_reason(self, reason: str | None) -> None:
        """Persist the reason of the next boot (a Reset survives the restart it causes)."""
        with self.db:
            self.db.execute("DELETE FROM boot_reason")
            if reason is not None:
                self.db.execute("INSERT INTO boot_reason VALUES (?)", (reason,))

    def sync_clock(self, current_time: str) -> None:
        """Adopt the backend's ``currentTime`` beyond TimeAdjustmentReportingThreshold (none
        configured: never) and report it: SettingSystemTime is critical."""
        tol = self.dm.values.get(("ClockCtrlr", None, None, "TimeAdjustmentReportingThreshold",
                                  None))
        if not tol:
            return
        adjusted = self.clock.sync(current_time, float(tol))
        if adjusted is not None:
            self.outbox.security_event("SettingSystemTime",
                                       f"time base adjusted by {adjusted:+.1f} s to the CSMS")

    def make_client(self, ws: ClientConnection) -> Session:
        return OcppClient(self.station_id, ws, self.host, self.cfg.response_timeout_s)

    def password(self) -> str | None:
        return self.dm.get("SecurityCtrlr", "BasicAuthPassword") or None

    def ping_interval(self) -> float:
        return self.dm.num("OCPPCommCtrlr", "WebSocketPingInterval")

    def backoff(self) -> tuple[float, float, int]:
        return (self.dm.num("OCPPCommCtrlr", "RetryBackOffWaitMinimum"),
                self.dm.num("OCPPCommCtrlr", "RetryBackOffRandomRange"),
                int(self.dm.num("OCPPCommCtrlr", "RetryBackOffRepeatTimes")))

    def heartbeat_interval(self) -> float:
        return self.dm.num("OCPPCommCtrlr", "HeartbeatInterval")

    async def boot(self, cp: Session, timeout: float) -> BootAnswer | None:
        try:
            r = await asyncio.wait_for(cp.call(call.BootNotification(
                charging_station={"model": self.cfg.model, "vendor_name": self.cfg.vendor,
                                  "firmware_version": self.cfg.firmware_version,
                                  "serial_number": self.cfg.serial_number},
                reason=self.boot_reason), suppress=False), timeout)
        except (OCPPError, TimeoutError) as exc:
            self.log.warning("BootNotification failed", error=repr(exc)[:200])
            return None
        self.sync_clock(r.current_time)
        self.log.info("boot", status=r.status, interval=r.interval)
        if r.interval > 0:
            self.dm.values[("OCPPCommCtrlr", None, None, "HeartbeatInterval", None)] = str(
                r.interval)
        if r.status == "Accepted":
            self.boot_reason = "PowerUp"
            self.set_boot_reason(None)
        return BootAnswer(str(r.status), int(r.interval))

    async def heartbeat(self, cp: Session) -> None:
        r = await cp.call(call.Heartbeat(), suppress=False)
        self.sync_clock(r.current_time)

    def connectors(self) -> range:
        return range(self.view.guns)

    async def status(self, cp: Session, g: int) -> None:
        station = self.view.station
        state = station.sessions[g].state if station is not None else None
        status = state.ocpp201 if state is not None else "Available"
        if not self.availability.operative(g) and g not in self.tx.open and status != "Faulted":
            status = "Unavailable"
        await cp.call(call.StatusNotification(timestamp=iso(self.clock()),
                                              connector_status=status, evse_id=g + 1,
                                              connector_id=1), suppress=False)

    def build_call(self, msg: Queued) -> object | None:
        built: object = getattr(call, msg.action)(**camel_to_snake_case(msg.payload))
        return built

    def retry_wait(self, msg: Queued, tries: int, exc: Exception) -> float | None:
        """E13: TransactionEvents get MessageAttempts (see :func:`standard_retry`)."""
        return standard_retry(
            msg, tries, exc, ("TransactionEvent",),
            int(self.dm.num("OCPPCommCtrlr", "MessageAttempts", "TransactionEvent")),
            self.dm.num("OCPPCommCtrlr", "MessageAttemptInterval", "TransactionEvent"))

    def delivered(self, msg: Queued, result: Any) -> None:
        self.queue.done(msg.id)
        info = getattr(result, "id_token_info", None)
        if msg.action == "TransactionEvent" and info and info.get("status") != "Accepted":
            tx_id = msg.payload["transactionInfo"]["transactionId"]
            for g, tx in self.tx.open.items():
                if tx.tx_id == tx_id and self.dm.flag("TxCtrlr", "StopTxOnInvalidId"):
                    self.view.attached.stop_charging(g, "DeAuthorized")
