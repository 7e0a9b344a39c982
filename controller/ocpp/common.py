"""What the OCPP 2.0.1 and 1.6J clients share, so each protocol only says what differs.

:class:`Link` is the station side of the websocket: the connection loop with the Part 4
back-off, the boot loop (no other traffic before Accepted), the heartbeat, the sender that
drains the persistent :class:`~controller.ocpp.queue.MessageQueue` in order (retry policy per
protocol), security events, and the persisted availability of connectors/EVSEs (0: the
station). A version plugs in through the hook methods at the end of the class.

:class:`FrameGuard` answers malformed frames with a CallError naming the fault instead of
letting the ``ocpp`` library drop them or the receive loop die.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import websockets
from ocpp.exceptions import OCPPError

from controller import logs
from controller.config import StationConfig
from controller.ocpp import connection, storage
from controller.ocpp.availability import Availability
from controller.ocpp.config import OcppConfig
from controller.ocpp.frame_check import check_frame
from controller.ocpp.ports import HasLog, Log, StationPort
from controller.ocpp.queue import MessageQueue, Queued
from controller.ocpp.station_common import STATION_END_WAIT_S
from controller.ocpp.wire import iso

#: How long an authorization waits for a connection attempt in progress (start-up, a
#: reconnect) before the offline rules decide: a truck plugged in while the controller boots
#: is asked about at the backend, not refused as "offline".
CONNECT_GRACE_S = 10.0
#: Before a Reset closes the connection: how long the queued messages (the Ended events) get
#: to be delivered and answered. Beyond it the connection closes anyway; an unanswered
#: message stays queued and is sent again after the restart (at-least-once).
DRAIN_TIMEOUT_S = 5.0
#: A BootNotification waits at most this long for its answer (or ``response_timeout_s`` when
#: shorter) ...
BOOT_CALL_TIMEOUT_S = 5.0
#: ... and one that failed (timeout, CallError, lost answer) is sent again after these waits,
#: the last repeated: a backend that answers late or not at all delays the boot by seconds,
#: not by a heartbeat interval.
BOOT_RETRY_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


async def _first(*events: asyncio.Event) -> None:
    """Return when any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


class Link:
    """Connection, boot, heartbeat, queue sender and availability of one OCPP client."""

    cfg: OcppConfig
    station_id: str
    guns: int
    db: sqlite3.Connection
    queue: MessageQueue
    tx: Any  # .open: dict[gun, transaction] of the version's transactions
    station: StationPort | None
    log: Log
    wall: Callable[[], datetime]
    online: bool
    cp: Any
    boot_status: str | None
    max_w: float
    gun_cfg: Any
    on_reset: Callable[[], None] | None
    _unsubscribe: Callable[[], None] | None

    if TYPE_CHECKING:  # the version's station observer and authorizer (its station side)
        def on_event(self, ev: Any) -> None: ...
        async def authorize(self, g: int, token: str | None) -> bool: ...

    def _open(self, cfg: OcppConfig, station_config: StationConfig, logger: str) -> None:
        """The station's identity and the OCPP database (WAL; synchronous=FULL, so a queued
        message survives a power loss)."""
        self.cfg = cfg
        self.station_id = cfg.station_id or station_config.station.id
        self.guns = len(station_config.guns)
        self.max_w = station_config.station.max_kw * 1000.0
        self.gun_cfg = station_config.guns
        self.log = logs.get_logger(logger, station=self.station_id)
        self.db = storage.open_db(cfg.database)

    @property
    def availability(self) -> dict[int, bool]:
        """Operative by EVSE / connector id (0: the station); missing: operative."""
        return self.avail.states

    def attach(self, station: StationPort) -> None:
        """Observe ``station`` and answer its authorization requests."""
        self.station = station
        self._unsubscribe = station.subscribe(self.on_event)
        station.authorizer = self.authorize
        for g in range(self.guns):
            self.apply_availability(g)

    def _detach(self) -> None:
        """Stop the loop; a restarted station must not report to us any more."""
        self.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()

    def _link_init(self) -> None:
        """State of the loop; call once the database is open."""
        self.online = False
        self.connecting = False  # a connect or boot attempt is under way
        self.cp = None
        self.boot_status = None
        self._waiters: set[asyncio.Event] = set()
        self._cert_reported = False
        self._kick = asyncio.Event()
        self._stop = asyncio.Event()
        self._booted = asyncio.Event()
        self._drop = asyncio.Event()  # end this connection now and reconnect at once
        #: Set (and replaced) at every change a waiter may be waiting for: the link's state,
        #: a queued message answered or dropped, a transaction ended (see :meth:`until`).
        self._progress = asyncio.Event()
        self._sending = False  # the queue sender waits for an answer
        self._ws: Any = None
        #: Owned background tasks: ``_tasks`` outlive a connection (a Reset), ``_conn_tasks``
        #: end with it (follow-ups of the backend's requests, status sends).
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self._unsubscribe = None
        self.station = None
        #: ChangeAvailability by EVSE / connector id (0: the station), persisted.
        self.avail = Availability(self.db, self.guns, self)

    # ------------------------------------------------------------------ life cycle
    def stop(self) -> None:
        self._stop.set()
        self._kick.set()

    def spawn(self, coro: Any, *, connection: bool = False) -> asyncio.Task[Any]:
        """Run ``coro`` as an owned task: kept until it ends, its exception logged (never
        "Task exception was never retrieved"). ``connection``: it belongs to the current
        websocket and is cancelled (and awaited) when that connection ends."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        (self._conn_tasks if connection else self._tasks).add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        """Done callback of every owned task: forget it and retrieve its outcome."""
        self._tasks.discard(task)
        self._conn_tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, websockets.ConnectionClosed):
            self.log.info("background task ended with the connection", error=repr(exc)[:200])
        elif exc is not None:
            self.log.warning("background task failed", error=repr(exc)[:300])

    async def _close_link(self) -> None:
        for t in [*self._tasks, *self._conn_tasks]:
            t.cancel()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    async def run(self) -> None:
        """Connect, boot, heartbeat, drain the queue; reconnect with back-off; until stop()."""
        waits = None
        while not self._stop.is_set():
            self.connecting = True
            try:
                ws = await connection.connect(self.cfg, self.station_id, self.link_password(),
                                              self.link_ping())
            except Exception as exc:
                self.connecting = False
                self._pulse()
                await self._tls_event(exc)
                self.log.warning("connect failed", error=repr(exc)[:300])
            else:
                waits = None
                self._ws = ws
                try:
                    await self._session(ws)
                except Exception as exc:
                    self.log.warning("connection lost", error=repr(exc)[:300])
                finally:
                    self.online = self.connecting = False
                    self.cp = None
                    self._pulse()
                    with contextlib.suppress(Exception):
                        await ws.close()
            if self._stop.is_set():
                break
            if self._drop.is_set():  # a Reset ended the connection: reconnect at once
                self._drop.clear()
                continue
            if waits is None:
                waits = connection.backoff(*self.link_backoff())
            await self._wait(next(waits))

    async def _tls_event(self, exc: Exception) -> None:
        """A04 critical events of a failed TLS connection, once per run: the CSMS
        certificate not valid, or (found with one probing handshake) a TLS version below
        1.2 / only cipher suites we do not allow on the CSMS side."""
        if self._cert_reported or not self.cfg.url.startswith("wss://"):
            return
        if isinstance(exc, ssl.SSLCertVerificationError):
            self._cert_reported = True
            self.security_event("InvalidCsmsCertificate", str(exc)[:250])
        elif isinstance(exc, ssl.SSLError | ConnectionResetError | EOFError):
            found = await connection.tls_diagnosis(self.cfg)
            if found is not None:
                self._cert_reported = True
                self.security_event(*found)

    def _pulse(self) -> None:
        """Wake everything waiting in :meth:`until` to check its condition again."""
        ev, self._progress = self._progress, asyncio.Event()
        ev.set()

    async def until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` holds, at most ``timeout`` s; it is checked again at every
        :meth:`_pulse` (no polling). Returns ``done()``."""
        async def settle() -> None:
            while not done():
                await self._progress.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settle(), timeout)
        return done()

    async def wait_connected(self, timeout: float = CONNECT_GRACE_S) -> None:
        """Wait (at most ``timeout``) while a connection attempt is under way."""
        await self.until(lambda: self.online or not self.connecting, timeout)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def end_connection(self) -> None:
        """End the current connection (close frame, after the running call) and reconnect
        at once, without back-off (a Reset of the OCPP side only)."""
        self._drop.set()

    async def reset_transactions(self, why: str, wait: bool,
                                 end_here: Callable[[int, str], None]) -> None:
        """A Reset's first half, both versions: the station is asked to stop every open
        transaction with ``why``; with ``wait`` it gets :data:`STATION_END_WAIT_S` to report
        their ends (the regular end with its reading); what is still open is ended here."""
        for g in list(self.tx.open):
            if self.station is not None:
                self.station.stop_charging(g, why)
        if wait:
            await self.until(lambda: not self.tx.open, STATION_END_WAIT_S)
        for g in list(self.tx.open):
            end_here(g, why)

    async def restart_after_reset(self) -> None:
        """A Reset's second half, both versions: deliver the queue and wait for the answers
        (bounded: nothing is sent twice), forget the boot, then hand the restart to
        ``on_reset`` (station and services restart); without an owner only the connection
        restarts (close frame, reconnect at once)."""
        if not await self.drain():
            self.log.warning("Reset: queue not delivered in time, sent again after the restart",
                             queued=len(self.queue))
        self.boot_status = None
        if self.on_reset is not None:
            self.on_reset()
            return
        await self.end_connection()

    async def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait until the backend has answered every queued message (True), at most
        ``timeout`` s and only while online (False otherwise): a Reset delivers the Ended
        events over the old connection instead of repeating them after the restart."""
        def emptied() -> bool:
            if len(self.queue) and self.online:
                self.notify()  # the sender may be idle between two puts
                return False
            return True
        await self.until(emptied, timeout)
        return not len(self.queue)

    async def _session(self, ws: Any) -> None:
        """One connection and the tasks that belong to it: the reader, the boot, then the
        heartbeat and the sender, and every follow-up task spawned for it. None outlives
        the connection: all are cancelled and awaited before this returns."""
        cp = self.make_client(ws)
        self.cp = cp
        self._drop.clear()
        reader = self.spawn(cp.start(), connection=True)
        reader.add_done_callback(lambda _: self._pulse())
        halt = self.spawn(_first(self._stop, self._drop), connection=True)
        try:
            boot = self.spawn(self._boot(cp), connection=True)
            await asyncio.wait([reader, boot, halt], return_when=asyncio.FIRST_COMPLETED)
            if not boot.done():
                if reader.done():
                    reader.result()
                return
            boot.result()
            self.online, self.connecting = True, False
            self._pulse()
            await self.send_statuses(cp)
            workers = [self.spawn(self._heartbeat(cp), connection=True),
                       self.spawn(self._sender(cp), connection=True)]
            done, _ = await asyncio.wait([reader, halt, *workers],
                                         return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not halt:
                    t.result()
        finally:
            self.online = False
            self._pulse()
            # the message in flight gets its answer before the socket closes (bounded): a
            # clean stop or Reset repeats nothing
            await self.until(lambda: not self._sending or reader.done(), DRAIN_TIMEOUT_S)
            tasks = list(self._conn_tasks)
            for t in tasks:
                t.cancel()
            if tasks:  # every outcome retrieved (``_reap``); bounded in case one hangs
                await asyncio.wait(tasks, timeout=5.0)

    async def _boot(self, cp: Any) -> None:
        """BootNotification until Accepted (never dropped); Pending/Rejected wait the
        returned interval (a triggered boot that is accepted ends the wait); a boot without
        an answer waits :data:`BOOT_CALL_TIMEOUT_S` at most and is repeated after the
        :data:`BOOT_RETRY_S` waits."""
        failed = 0
        while self.boot_status != "Accepted":
            interval = await self.boot_once(cp)
            if self.boot_status == "Accepted":
                return
            if interval > 0:
                failed, wait = 0, float(interval)
            else:
                wait = BOOT_RETRY_S[min(failed, len(BOOT_RETRY_S) - 1)]
                failed += 1
            self._booted.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._booted.wait(), wait)

    def boot_timeout(self) -> float:
        """Seconds a BootNotification waits for its answer."""
        return min(BOOT_CALL_TIMEOUT_S, self.cfg.response_timeout_s)

    async def tolerant(self, action: str, call: Awaitable[Any]) -> None:
        """Await a call of ours whose failure must not end the connection: a CallError
        answer or no answer in time is logged and the link goes on (only a closed socket
        ends it). Used for statuses and heartbeats, which the next event repeats anyway."""
        try:
            await call
        except (OCPPError, TimeoutError) as exc:
            self.log.warning("call failed; connection kept", action=action,
                             error=repr(exc)[:200])

    async def _heartbeat(self, cp: Any) -> None:
        while True:
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.heartbeat_interval())
                continue  # interval changed or queue kicked: restart the wait
            await self.tolerant("Heartbeat", self.heartbeat_once(cp))

    # ------------------------------------------------------------------ the queue
    async def _sender(self, cp: Any) -> None:
        """Drain the queue in order; a failed message is retried per :meth:`retry_wait` (or
        dropped); a row leaves the queue only through :meth:`delivered`. Once the connection
        is ending (stop, Reset) no new message is sent; the one in flight gets its answer."""
        while not (self._stop.is_set() or self._drop.is_set()):
            msg = self.queue.head()
            if msg is None:
                await self._queued()
                continue
            try:
                payload = self.build_call(msg)
            except (AttributeError, TypeError, KeyError, ValueError) as exc:
                self.queue.done(msg.id)  # a corrupt row must not block the rest
                self.log.error("unreadable queued message dropped", action=msg.action,
                               error=repr(exc)[:200])
                continue
            if payload is None:  # the version dropped it (and said why)
                self.queue.done(msg.id)
                continue
            self._sending = True
            try:
                r = await cp.call(payload, suppress=False)
            except (OCPPError, TimeoutError) as exc:
                self._sending = False
                tries = self.queue.attempt(msg.id)
                wait = self.retry_wait(msg, tries, exc)
                if wait is None:
                    self.queue.done(msg.id)
                    self.log.error("message dropped", action=msg.action, attempts=tries,
                                   error=repr(exc)[:200])
                    self._pulse()
                    continue
                await self._wait(wait)
                continue
            finally:
                self._sending = False
                self._pulse()
            self.delivered(msg, r)
            self._pulse()

    async def _queued(self) -> None:
        ev = asyncio.Event()
        self._waiters.add(ev)
        try:
            await ev.wait()
        finally:
            self._waiters.discard(ev)

    def put(self, action: str, payload: dict[str, Any]) -> None:
        """Queue a message that must not be lost (persisted first)."""
        self.queue.put(action, payload)
        self.notify()

    def notify(self) -> None:
        for ev in list(self._waiters):
            ev.set()

    def security_event(self, kind: str, info: str = "") -> None:
        """SecurityEventNotification (same payload in 2.0.1 and the 1.6 security
        extension), queued: the station's events are all critical."""
        payload: dict[str, Any] = {"type": kind, "timestamp": iso(self.wall())}
        if info:
            payload["techInfo"] = info[:255]
        self.put("SecurityEventNotification", payload)

    # ------------------------------------------------------------------ availability
    def operative(self, g: int) -> bool:
        return self.avail.operative(g)

    def change_availability(self, evse: int, operative: bool) -> str:
        """ChangeAvailability (see :meth:`Availability.change`)."""
        return self.avail.change(evse, operative)

    def apply_availability(self, g: int) -> None:
        """Tell the station (a running transaction is never cut) and the backend."""
        self.avail.apply(g)

    def busy(self, g: int) -> bool:
        """Gun ``g`` has a running transaction."""
        return g in self.tx.open

    def send_status(self, g: int) -> None:
        self._send_status(g)

    def _send_status(self, g: int) -> None:
        cp = self.cp
        if cp is not None and self.online:
            async def go() -> None:
                with contextlib.suppress(Exception):
                    await self._status(cp, g)
            self.spawn(go(), connection=True)

    # ------------------------------------------------------------------ hooks (per version)
    def link_password(self) -> str | None:
        raise NotImplementedError

    def link_ping(self) -> float:
        raise NotImplementedError

    def link_backoff(self) -> tuple[float, float, int]:
        """(RetryBackOffWaitMinimum, RetryBackOffRandomRange, RetryBackOffRepeatTimes)."""
        raise NotImplementedError

    def heartbeat_interval(self) -> float:
        raise NotImplementedError

    def make_client(self, ws: Any) -> Any:
        raise NotImplementedError

    async def boot_once(self, cp: Any) -> int:
        """One BootNotification; sets ``boot_status``; returns the interval (0: failed)."""
        raise NotImplementedError

    async def heartbeat_once(self, cp: Any) -> None:
        raise NotImplementedError

    async def send_statuses(self, cp: Any) -> None:
        """Every connector's status, after each accepted boot."""
        raise NotImplementedError

    async def _status(self, cp: Any, g: int) -> None:
        raise NotImplementedError

    def build_call(self, msg: Queued) -> Any:
        """The CALL of a queued row (None: drop it, the version logged why)."""
        raise NotImplementedError

    def retry_wait(self, msg: Queued, tries: int, exc: Exception) -> float | None:
        """Seconds before the next attempt of a failed message; None: drop it."""
        raise NotImplementedError

    def delivered(self, msg: Queued, result: Any) -> None:
        """The backend confirmed ``msg``: remove its row (and act on the answer)."""
        raise NotImplementedError


class FrameGuard:
    """Mixin before an ``ocpp`` ChargePoint: CallErrors for frames the library would drop
    or mishandle (:func:`~controller.ocpp.frame_check.check_frame`: bad JSON, NaN, deep
    nesting, numbers out of range, naming the field), and an InternalError instead of a
    dead receive loop when a handler fails. A bad response (type 3/4) is dropped and logged:
    the CALL it answers times out and is retried like any unanswered one."""

    svc: HasLog

    async def route_message(self, raw_msg: str) -> None:
        msg, bad = check_frame(raw_msg)
        if bad is not None:
            if bad.msg_type in (3, 4):
                self.svc.log.warning("bad response from backend dropped", code=bad.code,
                                     detail=bad.text[:255])
                return
            await self._error(bad.uid, bad.code, bad.text)
            return
        assert msg is not None
        uid = str(msg[1])
        try:
            await super().route_message(raw_msg)  # type: ignore[misc]
        except Exception as exc:  # never let the receive loop die on input
            self.svc.log.exception("handling a backend message failed", error=repr(exc)[:300])
            if msg[0] == 2:
                await self._error(uid, "InternalError", f"{type(exc).__name__}: {exc}")

    async def _error(self, uid: str, code: str, text: str) -> None:
        self.svc.log.warning("bad frame from backend", code=code, detail=text[:255])
        await self._send(json.dumps([4, uid, code, text[:255], {}]))  # type: ignore[attr-defined]


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


class AuthCache:
    """Tokens the backend answered, with their status, until they expire (SQLite table
    ``auth_cache``); ``enabled`` and ``lifetime`` are read at every use (the backend may
    change them)."""

    def __init__(self, db: sqlite3.Connection, wall: Callable[[], datetime],
                 enabled: Callable[[], bool], lifetime: Callable[[], float]) -> None:
        self.db, self.wall, self.enabled, self.lifetime = db, wall, enabled, lifetime
        storage.migrate(db)

    def get(self, token: str) -> str | None:
        if not self.enabled():
            return None
        row = self.db.execute("SELECT status, expires FROM auth_cache WHERE token = ?",
                              (token,)).fetchone()
        if row is None or row[1] < self.wall().timestamp():
            return None
        return str(row[0])

    def put(self, token: str, status: str, until: datetime | None = None) -> None:
        """Remember ``status`` until ``until`` (the backend's expiry) or the lifetime."""
        if self.enabled():
            expires = self.wall().timestamp() + self.lifetime()
            if until is not None:
                expires = min(expires, until.timestamp())
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO auth_cache VALUES (?, ?, ?)",
                                (token, status, expires))

    def clear(self) -> None:
        with self.db:
            self.db.execute("DELETE FROM auth_cache")


async def decide_authorization(cached: str | None, pre_authorize: bool,
                               ask: Callable[[], Awaitable[str]] | None, local_offline: bool,
                               unknown_offline: bool, log: Any) -> bool:
    """The authorization rules of both versions: a cached Accepted token starts at once when
    local pre-authorization is on; else the backend is asked (``ask``, None when offline);
    when it cannot answer, the cache decides if local offline authorization is on, and an
    unknown token is let through only if offline transactions for unknown ids are allowed."""
    if cached == "Accepted" and pre_authorize:
        return True
    if ask is not None:
        try:
            return await ask() == "Accepted"
        except Exception as exc:
            log.warning("Authorize failed: offline rules apply", error=repr(exc)[:200])
    if cached is not None and local_offline:
        return cached == "Accepted"
    return unknown_offline
