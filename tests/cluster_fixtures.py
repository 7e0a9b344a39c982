"""Backend instances as processes on one private PostgreSQL, a private HAProxy in front
(deploy/haproxy/csms.cfg, unchanged), and raw OCPP-J 2.0.1 stations that behave like real
ones: they resend what was not answered after a reconnect and answer every CALL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from pg_fixtures import free_port

ROOT = Path(__file__).resolve().parent.parent
API_TOKEN = "cluster-api-token"
STEP_WH = 10.0  # per event: plausible (within the 10 Wh tolerance) however close in time


@dataclass
class Instance:
    name: str
    ocpp_port: int
    api_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.api_port}",
                                 headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=15)


def write_config(path: Path, url: str, name: str, ocpp_port: int, api_port: int,
                 **ocpp: Any) -> None:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in ocpp.items())
    path.write_text(f"""[storage]
url = "{url}"
[ocpp]
host = "127.0.0.1"
port = {ocpp_port}
call_timeout = 5.0
{extra}[api]
host = "127.0.0.1"
port = {api_port}
tokens = ["{API_TOKEN}"]
[cluster]
instance = "{name}"
presence_ttl = 6.0
""")


def start_instance(tmp: Path, url: str, name: str, **ocpp: Any) -> Instance:
    """An instance on ports the kernel chose (port 0), read back from its ready file."""
    cfg = tmp / f"{name}.toml"
    write_config(cfg, url, name, 0, 0, **ocpp)
    ready = tmp / f"{name}.ready"
    log = tmp / f"{name}.log"
    env = {**os.environ, "MWC_CSMS_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "ocpp_server", "--config", str(cfg), "serve",
                             "--ready-file", str(ready)], cwd=ROOT, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"instance {name} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    ports = json.loads(ready.read_text())
    return Instance(name, ports["ocpp_port"], ports["api_port"], proc, log)


def stop_instance(inst: Instance) -> None:
    if inst.proc.poll() is None:
        inst.proc.send_signal(signal.SIGTERM)
        try:
            inst.proc.wait(15)
        except subprocess.TimeoutExpired:
            inst.proc.kill()
            inst.proc.wait(5)


@dataclass
class Proxy:
    ocpp_port: int
    api_port: int
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def haproxy(tmp: Path, a: Instance, b: Instance) -> Iterator[Proxy]:
    """HAProxy cannot bind port 0 and report it: free ports are picked, and start-up is
    retried with others when one was taken in between (``free_port`` races)."""
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(exe).exists():
        raise RuntimeError("haproxy not installed: run `make system-deps`")
    proc: subprocess.Popen[bytes] | None = None
    for _ in range(5):
        proc, (ocpp_port, api_port) = _start_haproxy(exe, tmp, a, b)
        if proc is not None:
            break
    if proc is None:
        raise RuntimeError(f"haproxy did not start: {(tmp / 'haproxy.log').read_text()}")
    try:
        yield Proxy(ocpp_port, api_port, proc)
    finally:
        proc.terminate()
        proc.wait(10)


def _haproxy_maxconn() -> int:
    """As many connections as this process's file limit lets HAProxy hold (two descriptors
    each, ~25 of its own; it cannot raise the hard limit in a container): 9,987 at 20,000."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 12_000 if hard == resource.RLIM_INFINITY else min(12_000, (hard - 26) // 2)


def _start_haproxy(exe: str, tmp: Path, a: Instance,
                   b: Instance) -> tuple[subprocess.Popen[bytes] | None, tuple[int, int]]:
    """(the running proxy, its OCPP and API ports), or (None, …) when a port was taken."""
    ocpp_port, api_port, stats = free_port(), free_port(), free_port()
    env = {**os.environ, "CSMS_OCPP_BIND": f"127.0.0.1:{ocpp_port}",
           "CSMS_API_BIND": f"127.0.0.1:{api_port}", "CSMS_STATS_BIND": f"127.0.0.1:{stats}",
           "CSMS_A_OCPP": f"127.0.0.1:{a.ocpp_port}", "CSMS_A_API": f"127.0.0.1:{a.api_port}",
           "CSMS_A_API_PORT": str(a.api_port), "CSMS_B_OCPP": f"127.0.0.1:{b.ocpp_port}",
           "CSMS_B_API": f"127.0.0.1:{b.api_port}", "CSMS_B_API_PORT": str(b.api_port),
           "CSMS_MAXCONN": str(_haproxy_maxconn())}
    path = tmp / "haproxy.log"
    with path.open("wb") as log:
        proc = subprocess.Popen([exe, "-db", "-f", str(ROOT / "deploy/haproxy/csms.cfg")],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=2).status_code == 200 \
                    and proc.poll() is None:  # not someone else who holds that port
                return proc, (ocpp_port, api_port)
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if "Address already in use" in path.read_text(errors="replace"):
                return None, (0, 0)
            raise RuntimeError(f"haproxy did not start: {path.read_text()}")
        time.sleep(0.1)


_ids = itertools.count(1)


@dataclass
class RawStation:
    """An OCPP 2.0.1 station over a raw websocket with an offline queue.

    Every TransactionEvent stays queued until its CALLRESULT arrives; after a reconnect the
    queue is sent again in order (what OCPP asks of a station, E04), so the backend sees
    repeats of whatever it had stored but not answered.
    """

    url: str
    id: str
    queue: list[dict[str, Any]] = field(default_factory=list)
    confirmed: int = 0
    connects: int = 0
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    meter_wh: float = 1000.0
    seq: int = 0
    answer_calls: bool = True
    cap: int | None = None  # set: no new events beyond this many (a load run winding down)

    def add_event(self, kind: str) -> None:
        now = time.time()
        ms = int(now * 1000) % 1000
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{ms:03d}Z"
        p: dict[str, Any] = {
            "eventType": kind, "timestamp": ts, "triggerReason": "MeterValuePeriodic",
            "seqNo": self.seq, "evse": {"id": 1, "connectorId": 1},
            "transactionInfo": {"transactionId": f"{self.id}-TX"},
            "meterValue": [{"timestamp": ts, "sampledValue": [
                {"value": self.meter_wh, "unitOfMeasure": {"unit": "Wh"}}]}]}
        self.queue.append(p)
        self.seq += 1
        self.meter_wh += STEP_WH

    async def run(self, stop: asyncio.Event, period: float, events: int) -> None:
        """Connect (again) until ``events`` TransactionEvents are confirmed, one per period."""
        while True:
            try:
                async with websockets.connect(f"{self.url}/ocpp/{self.id}",
                                              subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                              open_timeout=10, close_timeout=1) as ws:
                    self.connects += 1
                    await self._session(ws, stop, period, events)
                    return
            except (OSError, TimeoutError, websockets.ConnectionClosed,
                    websockets.InvalidHandshake):
                await asyncio.sleep(0.2 + random.random() * 0.5)

    async def _session(self, ws: Any, stop: asyncio.Event, period: float, events: int) -> None:
        pending: dict[str, asyncio.Future[Any]] = {}

        async def reader() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                if msg[0] == 2:
                    self.received.append((msg[2], msg[3]))
                    if self.answer_calls:
                        await ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
                elif msg[1] in pending:
                    pending.pop(msg[1]).set_result(msg)

        async def call(action: str, payload: dict[str, Any]) -> Any:
            mid = f"m{next(_ids)}"
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            pending[mid] = fut
            await ws.send(json.dumps([2, mid, action, payload]))
            async with asyncio.timeout(15):
                return await fut

        task = asyncio.create_task(reader())
        try:
            res = await call("BootNotification", {"reason": "PowerUp", "chargingStation": {
                "model": "raw", "vendorName": "tests"}})
            assert res[0] == 3 and res[2]["status"] == "Accepted", res
            while True:
                if task.done():
                    task.result()
                    raise websockets.ConnectionClosed(None, None)
                while self.queue:
                    res = await call("TransactionEvent", self.queue[0])
                    if res[0] != 3:
                        raise AssertionError(f"{self.id}: {res}")
                    self.queue.pop(0)
                    self.confirmed += 1
                if self.confirmed >= (events if self.cap is None else min(events, self.cap)):
                    if stop.is_set():
                        return
                    await asyncio.sleep(0.05)
                    continue
                self.add_event("Started" if self.seq == 0 else
                               "Ended" if self.seq == events - 1 else "Updated")
                await asyncio.sleep(period * (0.5 + random.random()))
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
