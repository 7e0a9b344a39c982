"""Fuzz the backend's boundaries for real: OCPP frames over websockets, REST bodies over HTTP.

Each ``fuzz_*`` coroutine starts a real ``CsmsServer`` on loopback (temporary database), throws
``cases`` seeded hostile inputs at it (``gen_server.py``) while an honest station on a parallel
connection keeps sending Heartbeats, then reads back what was stored through the REST API. It
returns figures, never asserts, so the tests and ``bench/fuzz.py`` share it:

``cases``, ``crashes`` (server no longer answering, or an error escaping to the stdlib log:
"connection handler failed", "Task exception was never retrieved"), ``internal_errors``
(CALLERROR InternalError / HTTP 500), ``unanswered``, ``closed`` (connection closed by the
server), ``wrong_code`` (answer not among the codes the case allows), ``read_errors`` (a later
read failed), ``rss_growth_mb``, ``honest_max_ms`` (slowest Heartbeat of the honest peer),
``failures`` (the first few, with the case index, to reproduce by seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:  # ``fuzz.*`` the way the test modules import it
    sys.path.insert(0, _TESTS)

import httpx  # noqa: E402
import websockets  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from fuzz.gen_server import (  # noqa: E402
    Case,
    csms_case,
    handshake_headers,
    rest_case,
    templates_16,
    templates_201,
)
from ocpp_server.app import CsmsServer  # noqa: E402
from ocpp_server.config import CsmsConfig  # noqa: E402
from ocpp_server.limits import InvalidInput, NotJson, check_outgoing, parse_json  # noqa: E402
from ocpp_server.metrics import KNOWN_ACTIONS  # noqa: E402
from ocpp_server.repository import StationRecord  # noqa: E402

TOKEN = "fuzz-api-token"
REPLY_TIMEOUT = 15.0  # generous: the machine is shared; a real hang is far longer
MAX_FAILURES = 10


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _ErrorLog(logging.Handler):
    """Counts stdlib log records at ERROR: what escapes our own handling ends up there."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()[:200]}")


def _result(cases: int) -> dict[str, Any]:
    return {"cases": cases, "crashes": 0, "internal_errors": 0, "unanswered": 0, "closed": 0,
            "wrong_code": 0, "read_errors": 0, "rss_growth_mb": 0.0, "honest_max_ms": 0.0,
            "failures": []}


def _fail(res: dict[str, Any], key: str, what: str) -> None:
    res[key] += 1
    if len(res["failures"]) < MAX_FAILURES:
        res["failures"].append(f"{key}: {what}")


@contextlib.asynccontextmanager
async def _backend(rated_w: float | None = 22000.0) -> AsyncIterator[CsmsServer]:
    with tempfile.TemporaryDirectory(prefix="csms-fuzz-") as tmp:
        cfg = CsmsConfig()
        cfg.storage.path = str(Path(tmp) / "csms.db")
        cfg.storage.synchronous = "NORMAL"  # fsyncs are not what is under test
        cfg.ocpp.host, cfg.ocpp.port, cfg.ocpp.call_timeout = "127.0.0.1", 0, 5
        cfg.ocpp.rate_per_s, cfg.ocpp.rate_burst = 1e6, 10**6
        cfg.api.port, cfg.api.tokens = 0, [TOKEN]
        server = CsmsServer(cfg)
        errors = _ErrorLog()
        logging.getLogger().addHandler(errors)
        await server.start()
        for sid in ("FUZZ", "HONEST", "REST1"):
            await server.repo.add_station(StationRecord(
                id=sid, security_profile=0, approved=True,
                rated_power_w=rated_w if sid == "FUZZ" else None))
        server.fuzz_errors = errors  # type: ignore[attr-defined]
        try:
            yield server
        finally:
            await server.stop()
            logging.getLogger().removeHandler(errors)


async def _honest(url: str, stop: asyncio.Event, res: dict[str, Any]) -> None:
    """A well-behaved station beside the hostile one: it must stay promptly served."""
    async with websockets.connect(f"{url}/ocpp/HONEST", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                  open_timeout=REPLY_TIMEOUT) as ws:
        n = 0
        while not stop.is_set():
            n += 1
            t0 = time.perf_counter()
            await ws.send(json.dumps([2, f"h{n}", "Heartbeat", {}]))
            try:
                async with asyncio.timeout(REPLY_TIMEOUT):
                    reply = json.loads(await ws.recv())
            except TimeoutError:
                _fail(res, "unanswered", "honest peer's Heartbeat")
                continue
            res["honest_max_ms"] = max(res["honest_max_ms"], (time.perf_counter() - t0) * 1e3)
            if reply[:2] != [3, f"h{n}"]:
                _fail(res, "wrong_code", f"honest peer got {str(reply)[:100]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)


def _check_reply(res: dict[str, Any], case: Case, i: int, raw: str | bytes) -> None:
    try:
        msg = json.loads(raw)
    except ValueError:
        _fail(res, "wrong_code", f"case {i} ({case.kind}): answer is not JSON")
        return
    if not isinstance(msg, list) or len(msg) < 3 or msg[1] != case.reply_id:
        _fail(res, "wrong_code", f"case {i} ({case.kind}): answer {str(msg)[:120]}")
        return
    if msg[0] == 3:
        if not case.result_ok:
            _fail(res, "wrong_code", f"case {i} ({case.kind}): CALLRESULT, wanted {case.codes}")
        return
    code = msg[2]
    if code == "InternalError":
        _fail(res, "internal_errors", f"case {i} ({case.kind}): {str(msg)[:160]}")
    elif case.codes is not None and code not in case.codes:
        _fail(res, "wrong_code", f"case {i} ({case.kind}): {code}, wanted {set(case.codes)}")


async def _later_reads(server: CsmsServer, station_id: str, res: dict[str, Any]) -> None:
    """What was stored must not break a later read: messages, transactions, metrics."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.api_port}",
                                 headers={"Authorization": f"Bearer {TOKEN}"},
                                 timeout=60) as client:
        paths = [f"/api/v1/stations/{station_id}/messages",
                 f"/api/v1/stations/{station_id}", f"/api/v1/stations/{station_id}/messages"
                 "?action=DataTransfer", f"/api/v1/stations/{station_id}/charging-profiles",
                 f"/api/v1/stations/{station_id}/security-events",
                 f"/api/v1/transactions?station_id={station_id}&limit=1000", "/api/v1/metrics"]
        for path in paths:
            r = await client.get(path)
            if r.status_code != 200:
                _fail(res, "read_errors", f"GET {path}: {r.status_code} {r.text[:120]}")
            elif path.endswith("limit=1000"):
                for tx in r.json()[:100]:
                    d = await client.get(f"/api/v1/transactions/{tx['id']}")
                    if d.status_code != 200:
                        _fail(res, "read_errors", f"GET transaction {tx['id']}: "
                                                  f"{d.status_code}")
            elif path.endswith("/metrics"):
                labels = set(r.json()["calls"]) | set(r.json()["errors"])
                if not labels <= KNOWN_ACTIONS | {"(unknown)"}:
                    _fail(res, "read_errors", f"metrics labels not closed: {len(labels)}")


async def _finish(server: CsmsServer, res: dict[str, Any], url: str) -> None:
    """Still alive? A new station must connect and get its Heartbeat answered."""
    try:
        async with websockets.connect(f"{url}/ocpp/HONEST", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                      open_timeout=REPLY_TIMEOUT) as ws:
            await ws.send(json.dumps([2, "alive", "Heartbeat", {}]))
            async with asyncio.timeout(REPLY_TIMEOUT):
                assert json.loads(await ws.recv())[:2] == [3, "alive"]
    except Exception as exc:
        _fail(res, "crashes", f"backend no longer serves: {exc!r}")
    for record in server.fuzz_errors.records:  # type: ignore[attr-defined]
        _fail(res, "crashes", record)


async def fuzz_csms(cases: int, seed: int, version: str = "2.0.1") -> dict[str, Any]:
    """``cases`` hostile frames at one station connection of ``version`` (2.0.1 or 1.6)."""
    res = _result(cases)
    proto = "ocpp2.0.1" if version == "2.0.1" else "ocpp1.6"
    r = random.Random(seed)
    async with _backend() as server:
        url = f"ws://127.0.0.1:{server.ocpp_port}"
        stop = asyncio.Event()
        honest = asyncio.create_task(_honest(url, stop, res))
        ws: Any = None
        rss0 = 0.0
        try:
            for i in range(cases):
                if i == min(200, cases // 4):  # schemas compiled, caches warm
                    rss0 = rss_mb()
                case = csms_case(r, i, version)
                if ws is None:
                    ws = await websockets.connect(f"{url}/ocpp/FUZZ", subprotocols=[proto],  # type: ignore[list-item]
                                                  max_size=None, open_timeout=REPLY_TIMEOUT)
                try:
                    await ws.send(case.frame)
                    if case.reply_id is None:
                        continue
                    async with asyncio.timeout(REPLY_TIMEOUT):
                        raw = await ws.recv()
                    _check_reply(res, case, i, raw)
                except TimeoutError:
                    _fail(res, "unanswered", f"case {i} ({case.kind}): {str(case.frame)[:80]}")
                except ConnectionClosed as exc:
                    _fail(res, "closed", f"case {i} ({case.kind}): {exc}")
                    ws = None
            res["rss_growth_mb"] = round(rss_mb() - rss0, 1)
        finally:
            stop.set()
            if ws is not None:
                await ws.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(honest, REPLY_TIMEOUT)
        await _later_reads(server, "FUZZ", res)
        await _finish(server, res, url)
    res["honest_max_ms"] = round(res["honest_max_ms"], 1)
    return res


async def _fake_station(url: str, res: dict[str, Any], sent: list[str]) -> None:
    """Station REST1: answers every command Accepted; checks what the backend sends it."""
    async with websockets.connect(f"{url}/ocpp/REST1", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                  open_timeout=REPLY_TIMEOUT) as ws:
        async for raw in ws:
            try:
                msg = parse_json(raw)
                check_outgoing(msg[3])
            except (NotJson, InvalidInput, IndexError, TypeError) as exc:
                _fail(res, "wrong_code", f"backend sent an invalid CALL: {exc} {str(raw)[:100]}")
                continue
            sent.append(msg[2])
            await ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))


async def fuzz_rest(cases: int, seed: int) -> dict[str, Any]:
    """``cases`` hostile requests at the REST API, a connected station behind it."""
    res = _result(cases)
    r = random.Random(seed)
    async with _backend() as server:
        url = f"ws://127.0.0.1:{server.ocpp_port}"
        stop = asyncio.Event()
        sent: list[str] = []
        station = asyncio.create_task(_fake_station(url, res, sent))
        honest = asyncio.create_task(_honest(url, stop, res))
        async with asyncio.timeout(REPLY_TIMEOUT):
            while server.session("REST1") is None:
                await asyncio.sleep(0.01)
        rss0 = 0.0
        nodelay = httpx.AsyncHTTPTransport(  # else Nagle + delayed ACK: 40 ms a request
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.api_port}",
                                     timeout=REPLY_TIMEOUT, transport=nodelay) as client:
            for i in range(cases):
                if i == min(200, cases // 4):
                    rss0 = rss_mb()
                case = rest_case(r, "REST1")
                headers = {"Authorization": f"Bearer {TOKEN}",
                           "Content-Type": "application/json", **case.headers}
                try:
                    resp = await client.request(case.method, case.path, content=case.body,
                                                headers=headers)
                except httpx.TimeoutException:
                    _fail(res, "unanswered", f"case {i} ({case.kind}) {case.path}")
                    continue
                except httpx.HTTPError as exc:
                    _fail(res, "crashes", f"case {i} ({case.kind}) {case.path}: {exc!r}")
                    continue
                if resp.status_code >= 500 and resp.status_code not in (502, 504):
                    _fail(res, "internal_errors", f"case {i} ({case.kind}) {case.method} "
                          f"{case.path}: {resp.status_code} {str(case.body)[:120]}")
                elif case.must_reject and resp.status_code < 400:
                    _fail(res, "wrong_code", f"case {i} ({case.kind}) {case.path}: "
                          f"{resp.status_code} for {str(case.body)[:120]}")
            res["rss_growth_mb"] = round(rss_mb() - rss0, 1)
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(honest, REPLY_TIMEOUT)
        if station.done():
            _fail(res, "closed", f"station connection ended: {station.exception()!r}")
        station.cancel()
        await _later_reads(server, "REST1", res)
        await _finish(server, res, url)
    res["commands_sent"] = len(sent)
    res["honest_max_ms"] = round(res["honest_max_ms"], 1)
    return res


async def fuzz_handshake(cases: int, seed: int) -> dict[str, Any]:
    """Hostile Authorization headers on the websocket handshake: 4xx, never 500."""
    res = _result(cases)
    r = random.Random(seed)
    async with _backend() as server:
        for i in range(cases):
            sid = r.choice(["FUZZ", "CS1", "NOPE"])
            lines = [f"GET /ocpp/{sid} HTTP/1.1".encode(), b"Host: 127.0.0.1",
                     b"Upgrade: websocket", b"Connection: Upgrade",
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                     b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Protocol: ocpp2.0.1"]
            lines += [k + b": " + v for k, v in handshake_headers(r)]
            try:
                async with asyncio.timeout(REPLY_TIMEOUT):
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.ocpp_port)
                    writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
                    status = await reader.readline()
                    writer.close()
            except TimeoutError:
                _fail(res, "unanswered", f"case {i}")
                continue
            code = int(status.split()[1]) if len(status.split()) > 1 else 0
            if code >= 500 or code == 0:
                _fail(res, "internal_errors", f"case {i}: {status!r}")
        await _finish(server, res, f"ws://127.0.0.1:{server.ocpp_port}")
    return res


async def fuzz_csms_generic(cases: int, seed: int, version: str = "2.0.1") -> dict[str, Any]:
    """The station side's generic frame generator (``gen_ocpp.Generator``) at the backend.

    A second, independently written generator over the backend's own request templates. Its
    codes are the station's choices, so here every answer must only carry the frame's id (any
    id when it is unreadable), be a CALLRESULT for valid frames, and never be InternalError.
    """
    from fuzz.gen_ocpp import Generator

    res = _result(cases)
    r = random.Random(seed)
    pick = templates_201 if version == "2.0.1" else templates_16
    names = sorted({a for a, _ in pick(r)})
    templates = {a: (lambda rng, a=a: dict(next(p for n, p in pick(rng) if n == a)))
                 for a in names}
    gen = Generator(templates, seed)
    proto = "ocpp2.0.1" if version == "2.0.1" else "ocpp1.6"
    async with _backend() as server:
        url = f"ws://127.0.0.1:{server.ocpp_port}"
        stop = asyncio.Event()
        honest = asyncio.create_task(_honest(url, stop, res))
        ws: Any = None
        rss0 = 0.0
        try:
            for i in range(cases):
                if i == min(200, cases // 4):
                    rss0 = rss_mb()
                case = gen.case()
                if ws is None:
                    ws = await websockets.connect(f"{url}/ocpp/FUZZ", subprotocols=[proto],  # type: ignore[list-item]
                                                  max_size=None, open_timeout=REPLY_TIMEOUT)
                size = len(case.frame.encode() if isinstance(case.frame, str) else case.frame)
                if size > server.cfg.ocpp.max_message_bytes:  # the one legitimate close
                    await ws.send(case.frame)
                    with contextlib.suppress(ConnectionClosed, TimeoutError):
                        async with asyncio.timeout(REPLY_TIMEOUT):
                            await ws.recv()
                    if ws.close_code != 1009:
                        _fail(res, "wrong_code", f"case {i}: {size} bytes, close {ws.close_code}")
                    res["oversize_closed"] = res.get("oversize_closed", 0) + 1
                    ws = None
                    continue
                try:
                    await ws.send(case.frame)
                    async with asyncio.timeout(REPLY_TIMEOUT):
                        msg = json.loads(await ws.recv())
                except TimeoutError:
                    _fail(res, "unanswered", f"case {i}: {case.what}")
                    continue
                except ConnectionClosed as exc:
                    _fail(res, "closed", f"case {i} ({case.what}): {exc}")
                    ws = None
                    continue
                if case.uid is not None and msg[1] != case.uid:
                    _fail(res, "wrong_code", f"case {i} ({case.what}): id {msg[1]!r}")
                elif msg[0] == 4 and msg[2] == "InternalError":
                    _fail(res, "internal_errors", f"case {i} ({case.what}): {str(msg)[:160]}")
                elif case.expect == frozenset({"result"}) and msg[0] != 3:
                    _fail(res, "wrong_code", f"case {i} ({case.what}): {str(msg)[:160]}")
            res["rss_growth_mb"] = round(rss_mb() - rss0, 1)
        finally:
            stop.set()
            if ws is not None:
                await ws.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(honest, REPLY_TIMEOUT)
        await _later_reads(server, "FUZZ", res)
        await _finish(server, res, url)
    res["honest_max_ms"] = round(res["honest_max_ms"], 1)
    return res
