"""The backend process: OCPP websocket listeners and the REST API on one event loop.

``CsmsServer.start()`` binds everything (port 0 gives a free port, read back from the
``*_port`` attributes), so tests and the demo run the real thing on loopback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import math
import select
import selectors
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import ocpp.messages
import structlog
import uvicorn
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ocpp_server.auth import SUBPROTOCOLS, Authenticator, admission_of
from ocpp_server.cluster import Cluster
from ocpp_server.config import CsmsConfig
from ocpp_server.engines import describe, open_repository
from ocpp_server.handlers_v16 import StationV16
from ocpp_server.handlers_v201 import StationV201
from ocpp_server.metrics import Metrics
from ocpp_server.repository import Repository
from ocpp_server.session import DISCONNECTED, Backend, Session

log = structlog.get_logger("ocpp_server.app")

# Schema validation inline: the library's default hops to a thread pool for every message,
# which costs more than the validation itself (the GIL serialises it anyway).
ocpp.messages.ASYNC_VALIDATION = False


async def _quietly(awaitable: Any) -> None:
    """For owned fire-and-forget tasks: a failure is logged, never left unretrieved."""
    try:
        await awaitable
    except Exception as exc:  # e.g. the old socket is already gone
        log.info("background_task_failed", error=repr(exc)[:200])


GC_YOUNG = 50_000  # net allocations between young-generation collections (default 700)


MAX_EVENTS_PER_POLL = 128  # ready sockets handled per loop iteration (fair_event_loop)


class _FairEpollSelector(selectors.EpollSelector):
    """``EpollSelector`` that asks the kernel for at most ``MAX_EVENTS_PER_POLL`` sockets.

    asyncio runs the callbacks of every socket one poll returns in one loop iteration, before
    any timer: 10,000 stations dropping at once made iterations of seconds (measured stalls
    0.5-1.7 s in a reconnect storm). Level-triggered epoll reports the rest at the next poll,
    and the kernel moves the sockets it reported to the back of its ready list, so nobody
    starves; timers, the API and the stations already in get a turn every 128 sockets."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:  # epoll_wait's resolution is 1 ms: round up to wait at least ``timeout``
            timeout = math.ceil(timeout * 1e3) * 1e-3
        fd_to_key: dict[int, selectors.SelectorKey] = self._fd_to_key  # type: ignore[attr-defined]
        max_ev = min(max(len(fd_to_key), 1), MAX_EVENTS_PER_POLL)
        ready: list[tuple[selectors.SelectorKey, int]] = []
        try:
            fd_events = self._selector.poll(timeout, max_ev)  # type: ignore[attr-defined]
        except InterruptedError:
            return ready
        for fd, event in fd_events:
            events = 0
            if event & ~select.EPOLLIN:
                events |= selectors.EVENT_WRITE
            if event & ~select.EPOLLOUT:
                events |= selectors.EVENT_READ
            key = fd_to_key.get(fd)
            if key is not None:
                ready.append((key, events & key.events))
        return ready


def fair_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop ``serve`` runs on: bounded work per iteration (``_FairEpollSelector``)."""
    return asyncio.SelectorEventLoop(_FairEpollSelector())


class GcPauses:
    """Times the cyclic garbage collector: a full collection walks every live object (10,000
    connections are millions of them), and the event loop stands still meanwhile."""

    def __init__(self, warn_s: float = 0.05) -> None:
        self.warn_s = warn_s
        self.pauses: collections.deque[tuple[float, int, float]] = collections.deque(maxlen=64)
        self._t0 = self._cpu0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0, self._cpu0 = time.perf_counter(), time.thread_time()
            return
        took = time.perf_counter() - self._t0
        if took > self.warn_s:  # cpu_ms << ms: the thread waited (other processes, the GIL)
            cpu = time.thread_time() - self._cpu0
            self.pauses.append((time.time(), info["generation"], took))
            log.warning("gc_pause", ms=round(took * 1000), cpu_ms=round(cpu * 1000),
                        generation=info["generation"], collected=info["collected"])


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the backend owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def tls_context(cfg: CsmsConfig) -> ssl.SSLContext:
    """Server TLS (1.2+); client certificates optional but verified when sent (profile 3)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.ocpp.certfile, cfg.ocpp.keyfile)
    if cfg.ocpp.client_ca:
        ctx.load_verify_locations(cfg.ocpp.client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class CsmsServer:
    """Owns the repository, the listeners and the live sessions."""

    def __init__(self, cfg: CsmsConfig, repo: Repository | None = None) -> None:
        self.cfg = cfg
        metrics = Metrics()
        self.repo: Repository = repo or open_repository(cfg, metrics.count_implausible)
        self.backend = Backend(cfg, self.repo, metrics=metrics)
        self._servers: list[Server] = []
        self._api: _Uvicorn | None = None
        self._api_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.cluster: Cluster | None = None  # several instances on PostgreSQL (cluster.py)
        self.stalls: collections.deque[tuple[float, float]] = collections.deque(maxlen=256)
        self.gc_pauses = GcPauses()
        self.ocpp_port = 0
        self.tls_port = 0
        self.api_port = 0

    async def _listen(self, port: int, tls: bool) -> int:
        try:
            return await self._listen_on(port, tls)
        except OSError as exc:  # the operator reads this line: say which listener and where
            key = "tls_port" if tls else "port"
            raise OSError(exc.errno, f"[ocpp] {key}: cannot listen on {self.cfg.ocpp.host}:"
                          f"{port}: {exc.strerror or exc}") from exc

    async def _listen_on(self, port: int, tls: bool) -> int:
        server = await serve(
            self._handle, self.cfg.ocpp.host, port,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            process_request=Authenticator(self.backend, tls),
            ssl=tls_context(self.cfg) if tls else None,
            compression=None, max_size=self.cfg.ocpp.max_message_bytes, max_queue=8,
            ping_interval=60, ping_timeout=60, open_timeout=15,
            backlog=1024,  # a fleet reconnecting after a restart arrives at once
        )
        self._servers.append(server)
        return int(next(iter(server.sockets)).getsockname()[1])

    async def start(self) -> None:
        await self.repo.open()
        engine, url = self.cfg.storage.database()
        if engine == "postgresql":
            ccfg = self.cfg.cluster
            self.cluster = Cluster(url, self.backend.sessions, self.repo,
                                   instance=ccfg.instance, ttl=ccfg.presence_ttl,
                                   call_timeout=self.cfg.ocpp.call_timeout)
            await self.cluster.start()
        ocfg = self.cfg.ocpp
        if ocfg.port >= 0:
            self.ocpp_port = await self._listen(ocfg.port, tls=False)
        if ocfg.tls_port >= 0:
            self.tls_port = await self._listen(ocfg.tls_port, tls=True)
        if self.cfg.api.port >= 0:
            await self._start_api()
        self._lag_task = asyncio.create_task(self._watch_loop_lag())
        self._tune_gc()
        log.info("csms_started", ocpp_port=self.ocpp_port, tls_port=self.tls_port,
                 api_port=self.api_port, db=describe(self.cfg))

    async def _start_api(self) -> None:
        from ocpp_server.api import create_app

        sock = socket.socket(socket.AF_INET6 if ":" in self.cfg.api.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by accepted sockets: uvicorn writes headers and body separately, and
        # with Nagle + delayed ACK every response waited ~40 ms for the second write.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.cfg.api.host, self.cfg.api.port))
        except OSError as exc:  # the operator reads this line: say which listener and where
            sock.close()
            raise OSError(exc.errno, f"[api] cannot listen on {self.cfg.api.host}:"
                          f"{self.cfg.api.port}: {exc.strerror}") from exc
        sock.listen(128)
        sock.setblocking(False)
        self.api_port = int(sock.getsockname()[1])
        from ocpp_server.console import mount_console

        config = uvicorn.Config(mount_console(create_app(self)), log_config=None,
                                access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2)
        self._api = _Uvicorn(config)
        self._api_task = asyncio.create_task(self._api.serve(sockets=[sock]))
        while not self._api.started and not self._api_task.done():
            await asyncio.sleep(0.01)
        if self._api_task.done():
            self._api_task.result()

    async def _watch_loop_lag(self, period: float = 0.05, warn_s: float = 0.2) -> None:
        """Log when the event loop was blocked: every station's latency suffers then.
        Lags over 50 ms are also kept (``recent_stalls``) for /healthz and the benchmark."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(period)
            lag = loop.time() - before - period
            if lag > 0.05:
                self.stalls.append((time.time(), lag))
            if lag > warn_s:
                log.warning("event_loop_stalled", lag_ms=round(lag * 1000),
                            stations=len(self.backend.sessions))

    _gc_users = 0  # servers running in this process; the first tunes, the last restores
    _gc_saved: tuple[int, ...] = (700, 10, 10)

    def _tune_gc(self) -> None:
        """Keep the garbage collector from stalling the loop (measured with the defaults, 10,000
        stations and a reconnect storm on a loaded machine: 121 pauses over 50 ms, up to 1.8 s,
        48 s in all; tuned: 0-1 full collections per run, 30-60 pauses over 50 ms).

        What exists once the backend is up (modules, schemas, compiled validators) lives as
        long as the process: frozen, no collection walks it again. The youngest generation
        is collected after ``GC_YOUNG`` net allocations instead of 700, so the objects of a
        message in flight die by reference count before a collection promotes them towards
        the oldest generation, whose collection walks every connection's objects."""
        gc.callbacks.append(self.gc_pauses)
        cls = CsmsServer
        cls._gc_users += 1
        if cls._gc_users == 1:
            cls._gc_saved = gc.get_threshold()
            gc.freeze()  # no collect() first: tests start hundreds of servers in one process
            gc.set_threshold(GC_YOUNG, *cls._gc_saved[1:])

    def _untune_gc(self) -> None:
        if self.gc_pauses not in gc.callbacks:
            return  # never started
        gc.callbacks.remove(self.gc_pauses)
        cls = CsmsServer
        cls._gc_users -= 1
        if cls._gc_users == 0:
            gc.set_threshold(*cls._gc_saved)
            gc.unfreeze()

    async def stop(self) -> None:
        self._untune_gc()
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None
        if self._api is not None and self._api_task is not None:
            self._api.should_exit = True
            with contextlib.suppress(Exception):
                await self._api_task
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self.cluster is not None:
            await self.cluster.stop()
            self.cluster = None
        await self.repo.close()
        log.info("csms_stopped")

    def session(self, station_id: str) -> Session | None:
        """The station's live session here, else (cluster) a proxy to the instance holding it."""
        local = self.backend.sessions.get(station_id)
        if local is not None or self.cluster is None:
            return local
        return self.cluster.locate(station_id)

    async def _handle(self, connection: ServerConnection) -> None:
        adm = admission_of(connection)
        cls: Any = StationV201 if connection.subprotocol == "ocpp2.0.1" else StationV16
        session: Session = cls(adm.station_id, connection, self.backend, adm.approved,
                               adm.security_profile)
        old = self.backend.sessions.get(adm.station_id)
        self.backend.sessions[adm.station_id] = session
        if self.cluster is not None:
            self.cluster.station_connected(adm.station_id, session.subprotocol)
        if old is not None:  # the station reconnected before we noticed the old socket die
            closing = asyncio.create_task(_quietly(old._connection.close(  # type: ignore[attr-defined]
                1000, "replaced by a new connection")))
            self._background.add(closing)
            closing.add_done_callback(self._background.discard)
        remote = str(connection.remote_address[0]) if connection.remote_address else ""
        conn_id = await self.repo.open_connection(adm.station_id, session.subprotocol, remote,
                                                  adm.security_profile)
        log.info("connected", station_id=adm.station_id, protocol=session.subprotocol,
                 remote=remote, security_profile=adm.security_profile)
        try:
            await session.start()
        except ConnectionClosed:
            pass
        finally:
            session._response_queue.put_nowait(DISCONNECTED)  # type: ignore[attr-defined]
            # The route map holds the session's own bound methods: a reference cycle that
            # only the garbage collector would free (a storm of 10,000 disconnects feeds it
            # hundreds of thousands of objects). Broken here, the session goes by refcount.
            session.route_map = {}  # type: ignore[attr-defined]
            if self.backend.sessions.get(adm.station_id) is session:
                del self.backend.sessions[adm.station_id]
                if self.cluster is not None:
                    self.cluster.station_left(adm.station_id)
            code = connection.close_code
            log.info("disconnected", station_id=adm.station_id, protocol=session.subprotocol,
                     code=code)
            try:
                await self.repo.close_connection(conn_id, code)
            except Exception as exc:  # storage gone (shutdown, database lost): say so, go on
                log.warning("disconnect_not_recorded", station_id=adm.station_id,
                            error=f"{type(exc).__name__}: {str(exc)[:200]}")
