"""Wires the OCPP client to a :class:`~controller.station.Station` (issue 6).

``OcppService(cfg, station_config)``; ``attach(station)`` subscribes to the station's events
and installs :meth:`authorize` as its authorizer; ``await run()`` keeps the connection (with
the Part 4 back-off) until ``stop()``. The control cycle never waits on it: observers only
update state and put messages into the SQLite queue; a sender task drains the queue while
online.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import OCPPError
from ocpp.v201 import call

from controller import logs
from controller.config import StationConfig
from controller.ocpp import connection
from controller.ocpp.client import OcppClient
from controller.ocpp.config import OcppConfig
from controller.ocpp.device_model import DeviceModel, Var, default_vars
from controller.ocpp.queue import MessageQueue
from controller.ocpp.smart_charging import Profiles
from controller.ocpp.station_side import StationSide
from controller.ocpp.transactions import Transactions, iso
from controller.records import GunRecord


def _utc() -> datetime:
    return datetime.now(UTC)


class OcppService(StationSide):
    """The station's OCPP 2.0.1 side: connection, queue, transactions, profiles, model."""

    def __init__(self, cfg: OcppConfig, station_config: StationConfig, *,
                 wall: Callable[[], datetime] = _utc) -> None:
        self.cfg, self._local_wall = cfg, wall
        #: The backend's time minus ours (SettingSystemTime); OCPP timestamps use ``wall``.
        self.clock_offset = timedelta(0)
        self.station_id = cfg.station_id or station_config.station.id
        self.guns = len(station_config.guns)
        self.max_w = station_config.station.max_kw * 1000.0
        self.gun_cfg = station_config.guns
        self.log = logs.get_logger("controller.ocpp", station=self.station_id)
        self.db = sqlite3.connect(cfg.database)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a queued event survives a power loss
        self._waiters: set[asyncio.Event] = set()
        self.dm = DeviceModel(self.db, default_vars(cfg, station_config),
                              {("ClockCtrlr", "DateTime"): lambda: iso(self.wall())})
        self.dm.on_change.append(self._changed)
        self.queue = MessageQueue(self.db, cfg.queue_max)
        self.online = False
        self.tx = Transactions(self.db, self.queue, self.wall, lambda: self.online)
        self.profiles = Profiles(self.db, self.guns, [g.max_voltage_v for g in self.gun_cfg],
                                 int(self.dm.num("SmartChargingCtrlr", "ProfileStackLevel")),
                                 int(self.dm.num("SmartChargingCtrlr", "PeriodsPerSchedule")))
        self.db.execute("CREATE TABLE IF NOT EXISTS auth_cache (token TEXT PRIMARY KEY, "
                        "status TEXT, expires REAL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS boot_reason (reason TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS availability (evse INTEGER PRIMARY KEY, "
                        "operative INTEGER)")
        self.db.commit()
        self.station: Any = None
        self.cp: OcppClient | None = None
        self.boot_status: str | None = None
        row = self.db.execute("SELECT reason FROM boot_reason").fetchone()
        self.boot_reason = str(row[0]) if row else "PowerUp"  # a Reset before this start
        self.reset_pending = False
        #: Called when a Reset has ended the transactions: the owner (``run_services``)
        #: restarts the station and its services. None: only the OCPP connection restarts.
        self.on_reset: Callable[[], None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        #: ChangeAvailability (G03/G04) by EVSE id (0: the station), persisted.
        self.availability: dict[int, bool] = {int(e): bool(o) for e, o in self.db.execute(
            "SELECT evse, operative FROM availability")}
        self.last: list[GunRecord | None] = [None] * self.guns
        self.remote: dict[int, tuple[str, int, dict[str, Any] | None]] = {}
        self._remote_ids: dict[int, int] = {}
        self._remote_until: dict[int, float] = {}
        self._remote_profiles: dict[int, dict[str, Any]] = {}
        self._last_grid: float | None = None
        self._cert_reported = False
        self._aligned_slot: float | None = None
        self._kick = asyncio.Event()
        self._stop = asyncio.Event()
        self._booted = asyncio.Event()
        self._ws: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        for gun in list(self.tx.open):  # left open by a crash: the energy flow has ended
            self.tx.end(gun, "PowerLoss", None, self._m("TxEndedMeasurands"))
        self.security_event("StartupOfTheDevice", "controller started")

    # ------------------------------------------------------------------ wiring
    def attach(self, station: Any) -> None:
        """Observe ``station`` and answer its authorization requests."""
        self.station = station
        self._unsubscribe = station.subscribe(self.on_event)
        station.authorizer = self.authorize
        for g in range(self.guns):
            self.apply_availability(g)

    def wall(self) -> datetime:
        """The time base of every OCPP timestamp: the local clock plus the adopted offset."""
        return self._local_wall() + self.clock_offset

    def sync_clock(self, current_time: str) -> None:
        """Adopt the backend's ``currentTime`` when it is off by more than the tolerance
        (the OS clock is not touched) and report it: SettingSystemTime is critical."""
        tol = self.dm.values.get(("ClockCtrlr", None, None, "TimeAdjustmentReportingThreshold",
                                  None))
        if not tol:
            return
        try:
            theirs = datetime.fromisoformat(current_time.replace("Z", "+00:00"))
        except ValueError:
            self.log.warning("unreadable currentTime from the backend", value=current_time)
            return
        if theirs.tzinfo is None:
            theirs = theirs.replace(tzinfo=UTC)
        diff = theirs - self.wall()
        if abs(diff.total_seconds()) <= float(tol):
            return
        self.clock_offset += diff
        self.log.warning("clock set from the backend", adjusted_s=diff.total_seconds())
        self.security_event("SettingSystemTime",
                            f"time base adjusted by {diff.total_seconds():+.1f} s to the CSMS")

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()

    async def close(self) -> None:
        """Stop, end the transactions still open (Reboot, queued) and close the database."""
        self.stop()
        if self._unsubscribe is not None:  # a restarted station must not report to us
            self._unsubscribe()
        for gun in list(self.tx.open):
            self.tx.end(gun, "Reboot", self.last[gun], self._m("TxEndedMeasurands"))
        for t in list(self._tasks):
            t.cancel()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        self.db.close()

    def set_boot_reason(self, reason: str | None) -> None:
        """Persist the reason of the next boot (a Reset survives the restart it causes)."""
        with self.db:
            self.db.execute("DELETE FROM boot_reason")
            if reason is not None:
                self.db.execute("INSERT INTO boot_reason VALUES (?)", (reason,))

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _m(self, name: str) -> list[str]:
        ctrl = "AlignedDataCtrlr" if name == "Measurands" else "SampledDataCtrlr"
        return self.dm.members(ctrl, name)

    def _changed(self, var: Var, value: str) -> None:
        if var.name == "HeartbeatInterval":
            self._kick.set()

    # ------------------------------------------------------------------ connection
    async def run(self) -> None:
        """Connect, boot, heartbeat, drain the queue; reconnect with back-off; until stop()."""
        waits = None
        while not self._stop.is_set():
            pw = self.dm.get("SecurityCtrlr", "BasicAuthPassword") or None
            try:
                ws = await connection.connect(self.cfg, self.station_id, pw,
                                              self.dm.num("OCPPCommCtrlr", "WebSocketPingInterval"))
            except Exception as exc:
                if isinstance(exc, ssl.SSLCertVerificationError) and not self._cert_reported:
                    self._cert_reported = True  # once per run, not once per attempt
                    self.security_event("InvalidCsmsCertificate", str(exc)[:250])
                self.log.warning("connect failed", error=repr(exc)[:300])
            else:
                waits = None
                self._ws = ws
                try:
                    await self._session(ws)
                except Exception as exc:
                    self.log.warning("connection lost", error=repr(exc)[:300])
                finally:
                    self.online = False
                    self.cp = None
                    with contextlib.suppress(Exception):
                        await ws.close()
            if self._stop.is_set():
                break
            if waits is None:
                waits = connection.backoff(
                    self.dm.num("OCPPCommCtrlr", "RetryBackOffWaitMinimum"),
                    self.dm.num("OCPPCommCtrlr", "RetryBackOffRandomRange"),
                    int(self.dm.num("OCPPCommCtrlr", "RetryBackOffRepeatTimes")))
            await self._wait(next(waits))

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _session(self, ws: Any) -> None:
        cp = OcppClient(self.station_id, ws, self, self.cfg.response_timeout_s)
        self.cp = cp
        reader = asyncio.ensure_future(cp.start())
        workers: list[asyncio.Task[Any]] = []
        try:
            boot = asyncio.ensure_future(self._boot(cp))
            halt = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([reader, boot, halt], return_when=asyncio.FIRST_COMPLETED)
            halt.cancel()
            if not boot.done():
                boot.cancel()
                if reader.done():
                    reader.result()
                return
            boot.result()
            self.online = True
            for g in range(self.guns):
                await self._status(cp, g)
            workers = [asyncio.ensure_future(self._heartbeat(cp)),
                       asyncio.ensure_future(self._sender(cp))]
            stopper = asyncio.ensure_future(self._stop.wait())
            done, _ = await asyncio.wait([reader, stopper, *workers],
                                         return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            for t in done:
                if t is not stopper:
                    t.result()
        finally:
            for t in [reader, *workers]:
                t.cancel()

    async def _boot(self, cp: OcppClient) -> None:
        """B01–B03: BootNotification until Accepted (never dropped); Pending/Rejected wait
        the returned interval (a triggered boot that is accepted ends the wait)."""
        while self.boot_status != "Accepted":
            interval = await self.boot_once(cp)
            if self.boot_status == "Accepted":
                return
            self._booted.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._booted.wait(), interval if interval > 0 else
                                       max(1.0, self.dm.num("OCPPCommCtrlr",
                                                            "HeartbeatInterval")))

    async def boot_once(self, cp: OcppClient) -> int:
        """One BootNotification; returns the interval (0 when it failed)."""
        try:
            r = await cp.call(call.BootNotification(
                charging_station={"model": self.cfg.model, "vendor_name": self.cfg.vendor,
                                  "firmware_version": self.cfg.firmware_version,
                                  "serial_number": self.cfg.serial_number},
                reason=self.boot_reason), suppress=False)
        except (OCPPError, TimeoutError) as exc:
            self.log.warning("BootNotification failed", error=repr(exc)[:200])
            return 0
        self.boot_status = r.status
        self.sync_clock(r.current_time)
        self.log.info("boot", status=r.status, interval=r.interval)
        if r.interval > 0:
            self.dm.values[("OCPPCommCtrlr", None, None, "HeartbeatInterval", None)] = str(
                r.interval)
        if r.status == "Accepted":
            self.boot_reason = "PowerUp"
            self.set_boot_reason(None)
            self._booted.set()
        return int(r.interval)

    async def _heartbeat(self, cp: OcppClient) -> None:
        while True:
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(),
                                       self.dm.num("OCPPCommCtrlr", "HeartbeatInterval"))
                continue  # interval changed or queue kicked: restart the wait
            r = await cp.call(call.Heartbeat(), suppress=False)
            self.sync_clock(r.current_time)

    async def _sender(self, cp: OcppClient) -> None:
        """Drain the queue in order; E13 retries for TransactionEvent (and unanswered security
        events, without a limit); delete on CallResult."""
        while True:
            msg = self.queue.head()
            if msg is None:
                await self._queued()
                continue
            try:
                payload = getattr(call, msg.action)(**camel_to_snake_case(msg.payload))
            except (AttributeError, TypeError) as exc:  # a corrupt row must not block the rest
                self.queue.done(msg.id)
                self.log.error("unreadable queued message dropped", action=msg.action,
                               error=repr(exc)[:200])
                continue
            try:
                r = await cp.call(payload, suppress=False)
            except (OCPPError, TimeoutError) as exc:
                tries = self.queue.attempt(msg.id)
                limit = int(self.dm.num("OCPPCommCtrlr", "MessageAttempts", "TransactionEvent"))
                # a critical security event is never dropped unanswered (a CallError is an answer)
                unanswered = isinstance(exc, TimeoutError)
                if msg.action == "SecurityEventNotification" and unanswered:
                    tries = min(tries, 10)
                elif msg.action != "TransactionEvent" or tries >= limit:
                    self.queue.done(msg.id)
                    self.log.error("message dropped", action=msg.action, attempts=tries,
                                   error=repr(exc)[:200])
                    continue
                await self._wait(tries * self.dm.num("OCPPCommCtrlr", "MessageAttemptInterval",
                                                     "TransactionEvent"))
                continue
            self.queue.done(msg.id)
            info = getattr(r, "id_token_info", None)
            if msg.action == "TransactionEvent" and info and info.get("status") != "Accepted":
                self._deauthorized(msg.payload)

    async def _queued(self) -> None:
        ev = asyncio.Event()
        self._waiters.add(ev)
        try:
            await ev.wait()
        finally:
            self._waiters.discard(ev)

    def _deauthorized(self, payload: dict[str, Any]) -> None:
        tx_id = payload["transactionInfo"]["transactionId"]
        for g, tx in self.tx.open.items():
            if tx.tx_id == tx_id and self.dm.flag("TxCtrlr", "StopTxOnInvalidId"):
                self.station.stop_charging(g, "DeAuthorized")

    def put(self, action: str, payload: dict[str, Any]) -> None:
        """Queue a message that must not be lost (persisted first)."""
        self.queue.put(action, payload)
        self.notify()

    def notify(self) -> None:
        for ev in list(self._waiters):
            ev.set()

    def security_event(self, kind: str, info: str = "") -> None:
        payload: dict[str, Any] = {"type": kind, "timestamp": iso(self.wall())}
        if info:
            payload["techInfo"] = info[:255]
        self.put("SecurityEventNotification", payload)

    def operative(self, g: int) -> bool:
        return self.availability.get(0, True) and self.availability.get(g + 1, True)

    def change_availability(self, evse: int, operative: bool) -> str:
        """G03/G04: persist the EVSE's (0: the station's) state; a gun with a running
        transaction keeps it and goes inoperative when it ends (``Scheduled``)."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO availability VALUES (?, ?)",
                            (evse, int(operative)))
        self.availability[evse] = operative
        guns = range(self.guns) if evse == 0 else [evse - 1]
        busy = any(g in self.tx.open for g in guns)
        for g in guns:
            self.apply_availability(g)
        return "Scheduled" if busy and not operative else "Accepted"

    def apply_availability(self, g: int) -> None:
        """Tell the station (a running transaction is never cut) and the backend."""
        if self.station is None:
            return
        self.station.set_available(g, self.operative(g) or g in self.tx.open)
        self._send_status(g)

    async def _status(self, cp: OcppClient, g: int) -> None:
        state = self.station.sessions[g].state if self.station is not None else None
        status = state.ocpp201 if state is not None else "Available"
        if not self.operative(g) and g not in self.tx.open and status != "Faulted":
            status = "Unavailable"
        await cp.call(call.StatusNotification(timestamp=iso(self.wall()), connector_status=status,
                                              evse_id=g + 1, connector_id=1), suppress=False)

    def _send_status(self, g: int) -> None:
        cp = self.cp
        if cp is not None and self.online:
            async def go() -> None:
                with contextlib.suppress(Exception):
                    await self._status(cp, g)
            self.spawn(go())
