"""The live view: a small web page served by the controller itself (``[webview]``).

Why a bare asyncio HTTP server (as ``controller/metrics.py``): the page reads station state
that belongs to the event loop, and the whole server is a few routes. Serving never blocks
the cycle: the cycle only hands its record to :class:`LiveState` (an observer, O(1)); one
pusher task builds the JSON at ``rate_hz`` (only while a page is open; otherwise it only
keeps the chart's history) and hands the same bytes to every open page through a bounded
queue per client, so a slow client loses updates, never holds the loop. Everything the
page needs is in ``controller/web/``; nothing is fetched from outside.

Routes: ``/`` the page, ``/static/<file>``, ``/api/state`` (JSON), ``/events`` (server-sent
events: one ``history`` event, then the state at ``rate_hz``), ``POST
/api/guns/<n>/clear-fault`` with body ``{"confirm": true}`` (gun numbered from 1). With a
``token`` configured every route but ``/`` and ``/static`` wants ``Authorization: Bearer``
or ``?token=`` (EventSource cannot send headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import ssl
import time
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from controller import logs
from controller.operator import clear_gun_fault
from controller.webview_state import LiveState

if TYPE_CHECKING:
    from controller.config import WebviewConfig
    from controller.station import Station

STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
MAX_CLIENTS = 16
MAX_HEADER_LINES = 100
MAX_BODY = 4096
READ_TIMEOUT_S = 5.0


def _asset(name: str) -> bytes:
    return resources.files("controller").joinpath("web", name).read_bytes()


class HttpError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class LiveView:
    """The page server; ``start`` binds, ``close`` stops serving and observing."""

    def __init__(self, station: Station, config: WebviewConfig) -> None:
        self.station = station
        self.config = config
        self.state = LiveState(station, config.history_s, config.rate_hz)
        self.port: int | None = None
        self.clients: set[asyncio.Queue[bytes]] = set()
        self.push_s = 0.0  # time spent building and encoding pushes (the serving cost)
        self.pushes = 0
        self._server: asyncio.Server | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._off = station.subscribe(self.state.observe)
        self.log = logs.get_logger("controller.webview", station=station.config.station.id)

    @property
    def url(self) -> str:
        scheme = "https" if self.config.certfile else "http"
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{scheme}://{host}:{self.port}/"

    async def start(self) -> None:
        """Bind (host, port); OSError when the port is taken (the caller logs and goes on)."""
        ctx = None
        if self.config.certfile and self.config.keyfile:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(self.config.certfile, self.config.keyfile)
        self._server = await asyncio.start_server(self._handle, self.config.host,
                                                  self.config.port, ssl=ctx, limit=16 * 1024)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._pusher = asyncio.create_task(self._push_loop())
        self.log.info("webview_listening", url=self.url)

    async def close(self) -> None:
        self._off()
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
        for q in list(self.clients):
            _offer(q, b"")  # ends the stream
        if self._server is not None:
            self._server.close()
            await logs.closing_step(asyncio.wait_for(self._server.wait_closed(), 2.0),
                                    self.log, "webview server")
            self._server = None

    # ------------------------------------------------------------------ pushing
    def build(self) -> bytes | None:
        """One push: the snapshot as an SSE ``data`` frame (None before the first cycle)."""
        t0 = time.perf_counter()
        snap = self.state.snapshot()
        if snap is None:
            return None
        frame = b"data: " + json.dumps(snap, separators=(",", ":")).encode() + b"\n\n"
        self.push_s += time.perf_counter() - t0
        self.pushes += 1
        return frame

    async def _push_loop(self) -> None:
        period = 1.0 / self.config.rate_hz
        while True:
            await asyncio.sleep(period)
            if not self.clients:
                self.state.sample()  # the chart's history, a few microseconds
                continue
            try:
                frame = self.build()
            except Exception:
                self.log.exception("webview_push_failed")
                continue
            if frame is not None:
                for q in list(self.clients):
                    _offer(q, frame)

    # ------------------------------------------------------------------ HTTP
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = ""
        try:
            method, target, headers, body = await self._request(reader)
            url = urlsplit(target)
            path, query = url.path, parse_qs(url.query)
            if method == "GET" and path == "/events":
                self._authorize(headers, query)
                await self._stream(writer)
                return
            status, ctype, payload = self._answer(method, path, headers, query, body)
        except HttpError as exc:
            status, ctype = exc.status, "application/json"
            payload = json.dumps({"error": str(exc)}).encode()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            writer.close()
            return
        except Exception:  # a bug here must not look like a hang to the page
            self.log.exception("webview_request_failed")
            status, ctype = "500 Internal Server Error", "application/json"
            payload = b'{"error": "internal error: see the station log"}'
        try:
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(payload)}\r\nCache-Control: no-store\r\n"
                    "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n")
            writer.write(head.encode("latin-1") + (payload if method != "HEAD" else b""))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            await logs.closing_step(writer.wait_closed(), self.log, "webview connection")

    @staticmethod
    async def _request(reader: asyncio.StreamReader
                       ) -> tuple[str, str, dict[str, str], bytes]:
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES):
            raw = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            raise HttpError("431 Request Header Fields Too Large", "too many header lines")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise HttpError("400 Bad Request", "not an HTTP request line")
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            raise HttpError("400 Bad Request", "Content-Length is not a number") from None
        if length < 0 or length > MAX_BODY:
            raise HttpError("413 Content Too Large", f"body over {MAX_BODY} bytes")
        body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S) if length \
            else b""
        return parts[0], parts[1], headers, body

    def _authorize(self, headers: dict[str, str], query: dict[str, list[str]]) -> None:
        want = self.config.token
        if want is None:
            return
        given = headers.get("authorization", "")
        given = given[7:] if given.lower().startswith("bearer ") else ""
        given = given or (query.get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), want.encode()):
            raise HttpError("401 Unauthorized", "missing or wrong token")

    def _answer(self, method: str, path: str, headers: dict[str, str],
                query: dict[str, list[str]], body: bytes) -> tuple[str, str, bytes]:
        if path == "/" or path.startswith("/static/"):
            if method not in ("GET", "HEAD"):
                raise HttpError("405 Method Not Allowed", "only GET here")
            name = "index.html" if path == "/" else path.removeprefix("/static/")
            if name not in STATIC:
                raise HttpError("404 Not Found", f"no asset {name!r}")
            return "200 OK", STATIC[name], _asset(name)
        if path == "/api/state":
            self._authorize(headers, query)
            snap = self.state.snapshot()
            doc = {"snapshot": snap, "history": list(self.state.history)}
            return "200 OK", "application/json", json.dumps(doc).encode()
        if path.startswith("/api/guns/") and path.endswith("/clear-fault"):
            if method != "POST":
                raise HttpError("405 Method Not Allowed", "clear-fault wants POST")
            self._authorize(headers, query)
            return "200 OK", "application/json", self._clear_fault(path, body)
        raise HttpError("404 Not Found", f"no route {path!r}")

    def _clear_fault(self, path: str, body: bytes) -> bytes:
        number = path.removeprefix("/api/guns/").removesuffix("/clear-fault")
        guns = self.station.params.guns
        if not number.isdigit() or not 1 <= int(number) <= guns:
            raise HttpError("404 Not Found", f"gun {number!r}: guns are numbered 1..{guns}")
        try:
            doc = json.loads(body or b"{}")
        except ValueError as exc:
            raise HttpError("400 Bad Request", f"body is not JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("confirm") is not True:
            raise HttpError("400 Bad Request", 'clearing a fault needs {"confirm": true}')
        result = clear_gun_fault(self.station, int(number) - 1, "web")
        return json.dumps(result.to_dict()).encode()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        if len(self.clients) >= MAX_CLIENTS:
            raise HttpError("503 Service Unavailable", f"{MAX_CLIENTS} pages open already")
        q: asyncio.Queue[bytes] = asyncio.Queue(maxsize=2)
        self.clients.add(q)
        try:
            history = json.dumps(list(self.state.history), separators=(",", ":"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
                         b"retry: 1000\nevent: history\ndata: " + history.encode() + b"\n\n")
            await writer.drain()
            while True:
                frame = await q.get()
                if not frame:
                    break
                writer.write(frame)
                await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.clients.discard(q)
            writer.close()
            await logs.closing_step(writer.wait_closed(), self.log, "webview connection")


def _offer(q: asyncio.Queue[bytes], frame: bytes) -> None:
    """Put without waiting; a client that fell behind loses its oldest frame."""
    if q.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            q.get_nowait()
    q.put_nowait(frame)


async def start_webview(station: Station, config: WebviewConfig) -> LiveView | None:
    """The live view when ``[webview] enabled``; a port that cannot be bound is logged and
    the station runs on without it."""
    if not config.enabled:
        return None
    view = LiveView(station, config)
    try:
        await view.start()
    except (OSError, ssl.SSLError) as exc:
        await view.close()
        logs.get_logger("controller.webview", station=station.config.station.id).error(
            "live view not started", host=config.host, port=config.port, error=str(exc))
        return None
    return view

