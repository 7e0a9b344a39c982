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

from ocpp.exceptions import OCPPError

from controller import logs
from controller.config import StationConfig
from controller.ocpp import connection
from controller.ocpp.config import OcppConfig
from controller.ocpp.queue import MessageQueue, Queued
from controller.ocpp.transactions import iso

#: How long an authorization waits for a connection attempt in progress (start-up, a
#: reconnect) before the offline rules decide: a truck plugged in while the controller boots
#: is asked about at the backend, not refused as "offline".
CONNECT_GRACE_S = 10.0


class Link:
    """Connection, boot, heartbeat, queue sender and availability of one OCPP client."""

    cfg: OcppConfig
    station_id: str
    guns: int
    db: sqlite3.Connection
    queue: MessageQueue
    tx: Any  # .open: dict[gun, transaction] of the version's transactions
    station: Any
    log: Any
    wall: Callable[[], datetime]
    online: bool
    cp: Any
    boot_status: str | None
    availability: dict[int, bool]
    max_w: float
    gun_cfg: Any
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
        self.db = sqlite3.connect(cfg.database)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")

    def attach(self, station: Any) -> None:
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
        self._ws: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsubscribe = None
        self.station = None
        self.db.execute("CREATE TABLE IF NOT EXISTS availability (evse INTEGER PRIMARY KEY, "
                        "operative INTEGER)")
        self.db.commit()
        #: ChangeAvailability by EVSE / connector id (0: the station), persisted.
        self.availability = {int(e): bool(o) for e, o in self.db.execute(
            "SELECT evse, operative FROM availability")}

    # ------------------------------------------------------------------ life cycle
    def stop(self) -> None:
        self._stop.set()
        self._kick.set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_link(self) -> None:
        for t in list(self._tasks):
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
                    with contextlib.suppress(Exception):
                        await ws.close()
            if self._stop.is_set():
                break
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

    async def wait_connected(self, timeout: float = CONNECT_GRACE_S) -> None:
        """Wait (at most ``timeout``) while a connection attempt is under way."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.connecting and not self.online and loop.time() < end:
            await asyncio.sleep(0.05)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _session(self, ws: Any) -> None:
        cp = self.make_client(ws)
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
            self.online, self.connecting = True, False
            await self.send_statuses(cp)
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

    async def _boot(self, cp: Any) -> None:
        """BootNotification until Accepted (never dropped); Pending/Rejected wait the
        returned interval (a triggered boot that is accepted ends the wait)."""
        while self.boot_status != "Accepted":
            interval = await self.boot_once(cp)
            if self.boot_status == "Accepted":
                return
            self._booted.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._booted.wait(), interval if interval > 0 else
                                       max(1.0, self.heartbeat_interval()))

    async def _heartbeat(self, cp: Any) -> None:
        while True:
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.heartbeat_interval())
                continue  # interval changed or queue kicked: restart the wait
            await self.heartbeat_once(cp)

    # ------------------------------------------------------------------ the queue
    async def _sender(self, cp: Any) -> None:
        """Drain the queue in order; a failed message is retried per :meth:`retry_wait` (or
        dropped); a row leaves the queue only through :meth:`delivered`."""
        while True:
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
            try:
                r = await cp.call(payload, suppress=False)
            except (OCPPError, TimeoutError) as exc:
                tries = self.queue.attempt(msg.id)
                wait = self.retry_wait(msg, tries, exc)
                if wait is None:
                    self.queue.done(msg.id)
                    self.log.error("message dropped", action=msg.action, attempts=tries,
                                   error=repr(exc)[:200])
                    continue
                await self._wait(wait)
                continue
            self.delivered(msg, r)

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
        return self.availability.get(0, True) and self.availability.get(g + 1, True)

    def change_availability(self, evse: int, operative: bool) -> str:
        """Persist the EVSE's (0: the station's) state; a gun with a running transaction
        keeps it and goes inoperative when it ends (``Scheduled``)."""
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

    def _send_status(self, g: int) -> None:
        cp = self.cp
        if cp is not None and self.online:
            async def go() -> None:
                with contextlib.suppress(Exception):
                    await self._status(cp, g)
            self.spawn(go())

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
    """Mixin before an ``ocpp`` ChargePoint: CallErrors for frames the library would drop,
    and an InternalError instead of a dead receive loop when a handler fails."""

    svc: Any

    async def route_message(self, raw_msg: str) -> None:
        try:
            msg = json.loads(raw_msg)
        except (ValueError, TypeError) as exc:
            await self._error("-1", "RpcFrameworkError", f"invalid JSON: {exc}")
            return
        if not isinstance(msg, list) or not msg or msg[0] not in (2, 3, 4):
            await self._error("-1", "RpcFrameworkError",
                              "not an OCPP-J message (expected [2|3|4, id, ...])")
            return
        uid = msg[1] if len(msg) > 1 and isinstance(msg[1], str) else "-1"
        if msg[0] == 2 and (len(msg) != 4 or not isinstance(msg[1], str)
                            or not isinstance(msg[2], str) or not isinstance(msg[3], dict)):
            await self._error(uid, "FormatViolation",
                              "CALL must be [2, \"<id>\", \"<Action>\", {payload}]")
            return
        try:
            await super().route_message(raw_msg)  # type: ignore[misc]
        except Exception as exc:  # never let the receive loop die on input
            self.svc.log.exception("handling a backend message failed", error=repr(exc))
            if msg[0] == 2:
                await self._error(uid, "InternalError", f"{type(exc).__name__}: {exc}")

    async def _error(self, uid: str, code: str, text: str) -> None:
        self.svc.log.warning("bad frame from backend", code=code, detail=text)
        await self._send(json.dumps([4, uid, code, text, {}]))  # type: ignore[attr-defined]


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
        db.execute("CREATE TABLE IF NOT EXISTS auth_cache (token TEXT PRIMARY KEY, "
                   "status TEXT, expires REAL)")
        db.commit()

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
