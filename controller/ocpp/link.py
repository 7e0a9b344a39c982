"""The station side of the websocket, both versions: connection loop with the Part 4
back-off, the boot loop (no other traffic before Accepted), the heartbeat and the sender
that drains the persistent queue in order.

:class:`Link` takes its collaborators through its constructor: the queue and the
:class:`~controller.ocpp.outbox.Outbox` (the sender's wake-up), the owned
:class:`~controller.ocpp.tasks.Tasks`, the :class:`~controller.ocpp.tasks.Progress` signal,
and a :class:`MessageAdapter` — what differs between the versions on the wire (the
ChargePoint, BootNotification, StatusNotification, Heartbeat, how a queued row becomes a
CALL, its retry rule, what a confirmation does).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from ocpp.exceptions import OCPPError
from websockets.asyncio.client import ClientConnection

from controller.ocpp import connection
from controller.ocpp.config import OcppConfig
from controller.ocpp.outbox import Outbox
from controller.ocpp.ports import Log
from controller.ocpp.queue import MessageQueue, Queued
from controller.ocpp.tasks import Progress, Tasks

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


class Session(Protocol):
    """One websocket's ChargePoint (the ``ocpp`` library's, untyped there): its receive
    loop and the CALLs it sends (a payload of ``ocpp.v201.call`` / ``ocpp.v16.call``). The
    answer is the library's untyped payload object (the backend's JSON, snake_case)."""

    async def start(self) -> None: ...

    async def call(self, payload: object, suppress: bool = True) -> Any: ...


@dataclass(slots=True)
class Connectivity:
    """Whether the link is booted and connected: written by the :class:`Link`, read by the
    parts built before it (a TransactionEvent built while offline says so)."""

    online: bool = False

    def is_online(self) -> bool:
        return self.online


@dataclass(frozen=True, slots=True)
class BootAnswer:
    status: str
    interval: int


class MessageAdapter(Protocol):
    """What a version says on the wire; the link decides when."""

    def make_client(self, ws: ClientConnection) -> Session:
        """The version's ChargePoint on a fresh websocket."""

    def password(self) -> str | None:
        """Basic auth password of the next connect (profiles 1, 2); None: none."""

    def ping_interval(self) -> float: ...

    def backoff(self) -> tuple[float, float, int]:
        """(RetryBackOffWaitMinimum, RetryBackOffRandomRange, RetryBackOffRepeatTimes)."""

    def heartbeat_interval(self) -> float: ...

    async def boot(self, cp: Session, timeout: float) -> BootAnswer | None:
        """One BootNotification (the answer acted upon); None when it failed (logged)."""

    async def heartbeat(self, cp: Session) -> None: ...

    def connectors(self) -> range:
        """The ids ``status`` takes for every connector's status after each accepted boot
        (0-based guns; 1.6 adds -1, its connector 0)."""

    async def status(self, cp: Session, g: int) -> None:
        """One connector's StatusNotification."""

    def build_call(self, msg: Queued) -> object | None:
        """The CALL of a queued row (None: drop it, the version logged why)."""

    def retry_wait(self, msg: Queued, tries: int, exc: Exception) -> float | None:
        """Seconds before the next attempt of a failed message; None: drop it."""

    def delivered(self, msg: Queued, result: Any) -> None:
        """The backend confirmed ``msg`` with ``result`` (the library's payload object):
        remove its row (and act on the answer)."""


class Uplink(Protocol):
    """What a version's reporter needs of the link: the session of the moment (None while
    offline), whether it is booted, and the few things it asks the link to do."""

    @property
    def cp(self) -> Session | None: ...

    @property
    def online(self) -> bool: ...

    async def wait_connected(self, timeout: float = CONNECT_GRACE_S) -> None:
        """Wait (bounded) while a connection attempt is under way."""

    def send_status(self, g: int) -> None:
        """Report connector ``g``'s status when online (never blocks)."""

    async def boot_once(self, cp: Session) -> int:
        """One BootNotification (a triggered one)."""


async def _first(*events: asyncio.Event) -> None:
    """Return when any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


class Link:
    """Connection, boot, heartbeat and queue sender of one OCPP client."""

    def __init__(self, cfg: OcppConfig, station_id: str, log: Log, queue: MessageQueue,
                 outbox: Outbox, tasks: Tasks, progress: Progress,
                 adapter: MessageAdapter, state: Connectivity) -> None:
        self.cfg, self.station_id, self.log = cfg, station_id, log
        self.queue, self.outbox, self.tasks, self.progress = queue, outbox, tasks, progress
        self.adapter, self.state = adapter, state
        self.connecting = False  # a connect or boot attempt is under way
        self.cp: Session | None = None
        self.boot_status: str | None = None
        self.ws: ClientConnection | None = None
        self._cert_reported = False
        self._kick = asyncio.Event()
        self._stop = asyncio.Event()
        self._booted = asyncio.Event()
        self._drop = asyncio.Event()  # end this connection now and reconnect at once
        self._sending = False  # the queue sender waits for an answer

    @property
    def online(self) -> bool:
        """Booted and connected: other traffic than the boot may flow."""
        return self.state.online

    @online.setter
    def online(self, value: bool) -> None:
        self.state.online = value

    # ------------------------------------------------------------------ life cycle
    def stop(self) -> None:
        self._stop.set()
        self._kick.set()

    def kick(self) -> None:
        """Restart the heartbeat wait (its interval changed)."""
        self._kick.set()

    async def close(self) -> None:
        """Cancel every owned task and close the websocket."""
        self.tasks.cancel_all()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def run(self) -> None:
        """Connect, boot, heartbeat, drain the queue; reconnect with back-off; until stop()."""
        waits = None
        while not self._stop.is_set():
            self.connecting = True
            try:
                ws = await connection.connect(self.cfg, self.station_id,
                                              self.adapter.password(),
                                              self.adapter.ping_interval())
            except Exception as exc:
                self.connecting = False
                self.progress.pulse()
                await self._tls_event(exc)
                self.log.warning("connect failed", error=repr(exc)[:300])
            else:
                waits = None
                self.ws = ws
                try:
                    await self._session(ws)
                except Exception as exc:
                    self.log.warning("connection lost", error=repr(exc)[:300])
                finally:
                    self.online = self.connecting = False
                    self.cp = None
                    self.progress.pulse()
                    with contextlib.suppress(Exception):
                        await ws.close()
            if self._stop.is_set():
                break
            if self._drop.is_set():  # a Reset ended the connection: reconnect at once
                self._drop.clear()
                continue
            if waits is None:
                waits = connection.backoff(*self.adapter.backoff())
            await self._wait(next(waits))

    async def _tls_event(self, exc: Exception) -> None:
        """A04 critical events of a failed TLS connection, once per run: the CSMS
        certificate not valid, or (found with one probing handshake) a TLS version below
        1.2 / only cipher suites we do not allow on the CSMS side."""
        if self._cert_reported or not self.cfg.url.startswith("wss://"):
            return
        if isinstance(exc, ssl.SSLCertVerificationError):
            self._cert_reported = True
            self.outbox.security_event("InvalidCsmsCertificate", str(exc)[:250])
        elif isinstance(exc, ssl.SSLError | ConnectionResetError | EOFError):
            found = await connection.tls_diagnosis(self.cfg)
            if found is not None:
                self._cert_reported = True
                self.outbox.security_event(*found)

    async def wait_connected(self, timeout: float = CONNECT_GRACE_S) -> None:
        """Wait (at most ``timeout``) while a connection attempt is under way."""
        await self.progress.until(lambda: self.online or not self.connecting, timeout)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def end_connection(self) -> None:
        """End the current connection (close frame, after the running call) and reconnect
        at once, without back-off (a Reset of the OCPP side only)."""
        self._drop.set()

    async def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait until the backend has answered every queued message (True), at most
        ``timeout`` s and only while online (False otherwise): a Reset delivers the Ended
        events over the old connection instead of repeating them after the restart."""
        def emptied() -> bool:
            if len(self.queue) and self.online:
                self.outbox.notify()  # the sender may be idle between two puts
                return False
            return True
        await self.progress.until(emptied, timeout)
        return not len(self.queue)

    async def _session(self, ws: ClientConnection) -> None:
        """One connection and the tasks that belong to it: the reader, the boot, then the
        heartbeat and the sender, and every follow-up task spawned for it. None outlives
        the connection: all are cancelled and awaited before this returns."""
        cp = self.adapter.make_client(ws)
        self.cp = cp
        self._drop.clear()
        spawn = self.tasks.spawn
        reader = spawn(cp.start(), connection=True)
        reader.add_done_callback(lambda _: self.progress.pulse())
        halt = spawn(_first(self._stop, self._drop), connection=True)
        try:
            boot = spawn(self._boot(cp), connection=True)
            await asyncio.wait([reader, boot, halt], return_when=asyncio.FIRST_COMPLETED)
            if not boot.done():
                if reader.done():
                    reader.result()
                return
            boot.result()
            self.online, self.connecting = True, False
            self.progress.pulse()
            for g in self.adapter.connectors():
                await self.tolerant("StatusNotification", self.adapter.status(cp, g))
            workers = [spawn(self._heartbeat(cp), connection=True),
                       spawn(self._sender(cp), connection=True)]
            done, _ = await asyncio.wait([reader, halt, *workers],
                                         return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not halt:
                    t.result()
        finally:
            self.online = False
            self.progress.pulse()
            # the message in flight gets its answer before the socket closes (bounded): a
            # clean stop or Reset repeats nothing
            await self.progress.until(lambda: not self._sending or reader.done(),
                                      DRAIN_TIMEOUT_S)
            await self.tasks.end_connection_tasks()

    async def boot_once(self, cp: Session) -> int:
        """One BootNotification; sets ``boot_status``; returns the interval (0: failed)."""
        answer = await self.adapter.boot(cp, self.boot_timeout())
        if answer is None:
            return 0
        self.boot_status = answer.status
        if answer.status == "Accepted":
            self._booted.set()
        return answer.interval

    async def _boot(self, cp: Session) -> None:
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

    async def tolerant(self, action: str, call: Awaitable[object]) -> None:
        """Await a call of ours whose failure must not end the connection: a CallError
        answer or no answer in time is logged and the link goes on (only a closed socket
        ends it). Used for statuses and heartbeats, which the next event repeats anyway."""
        try:
            await call
        except (OCPPError, TimeoutError) as exc:
            self.log.warning("call failed; connection kept", action=action,
                             error=repr(exc)[:200])

    async def _heartbeat(self, cp: Session) -> None:
        while True:
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.adapter.heartbeat_interval())
                continue  # interval changed or queue kicked: restart the wait
            await self.tolerant("Heartbeat", self.adapter.heartbeat(cp))

    def send_status(self, g: int) -> None:
        """Report connector ``g``'s status when online (an owned task; never blocks)."""
        cp = self.cp
        if cp is not None and self.online:
            async def go() -> None:
                # a lost StatusNotification is not fatal (the next connection sends every
                # status again), but it must show: a backend answering CallError is a fault
                try:
                    await self.adapter.status(cp, g)
                except Exception as exc:  # any failure: log it, keep the link
                    self.log.warning("status_notification_failed", connector=g + 1,
                                     error=f"{type(exc).__name__}: {exc}")
            self.tasks.spawn(go(), connection=True)

    # ------------------------------------------------------------------ the queue
    async def _sender(self, cp: Session) -> None:
        """Drain the queue in order; a failed message is retried per ``retry_wait`` (or
        dropped); a row leaves the queue only through ``delivered``. Once the connection
        is ending (stop, Reset) no new message is sent; the one in flight gets its answer."""
        while not (self._stop.is_set() or self._drop.is_set()):
            msg = self.queue.head()
            if msg is None:
                await self.outbox.queued()
                continue
            try:
                payload = self.adapter.build_call(msg)
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
                wait = self.adapter.retry_wait(msg, tries, exc)
                if wait is None:
                    self.queue.done(msg.id)
                    self.log.error("message dropped", action=msg.action, attempts=tries,
                                   error=repr(exc)[:200])
                    self.progress.pulse()
                    continue
                await self._wait(wait)
                continue
            finally:
                self._sending = False
                self.progress.pulse()
            self.adapter.delivered(msg, r)
            self.progress.pulse()
