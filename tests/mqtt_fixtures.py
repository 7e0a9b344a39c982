"""Helpers for the MQTT tests: a private Mosquitto per test, a test PKI, clocks, a listener.

Plain helpers imported by the test modules (no conftest): each test starts its own
``mosquitto`` on a free loopback port with its own configuration file (plain, TLS with a test
CA, or a password file) and stops it, so tests never touch the system broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from helpers import certificate, listening_ports
from helpers import eventually as eventually  # the shared one; tests import it from here

from controller.clock import SimClock, iso_utc
from controller.mqtt import MqttConfig, TlsConfig

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

needs_mosquitto = pytest.mark.skipif(not os.path.exists(MOSQUITTO),
                                     reason="mosquitto not installed (make system-deps)")


class PortTaken(RuntimeError):
    """The broker could not bind its port: another process has it."""


def _pick_port() -> int:
    """A loopback port free *now*, for a server that cannot bind port 0 and report it
    (mosquitto). It may be taken before the server binds it: such a server's fixture retries
    (``Mosquitto.start``); every server that can bind port 0 does so instead."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- PKI
@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path) -> Pki:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = certificate("mwc test CA", ca=True, key_usage=True)
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key",
              directory / "client.pem", directory / "client.key")
    ca.write(pki.ca)
    certificate("localhost", ca, server=True).write(pki.server_cert, pki.server_key)
    certificate("station-ST1", ca, client=True).write(pki.client_cert, pki.client_key)
    return pki


# ---------------------------------------------------------------------------- broker
@dataclass
class Mosquitto:
    """A private broker: ``start``, ``stop``, ``restart`` on the same port."""

    directory: Path
    pki: Pki | None = None
    require_client_cert: bool = False
    users: dict[str, str] | None = None
    port: int = field(default_factory=_pick_port)
    #: the test uses ``port`` before the first start: a taken port fails the start instead
    #: of moving the broker (see ``start``)
    pinned: bool = False
    proc: subprocess.Popen[bytes] | None = None
    _started: bool = field(default=False, init=False, repr=False)

    @property
    def conf(self) -> Path:
        return self.directory / "mosquitto.conf"

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = ["user root" if os.geteuid() == 0 else "", "persistence false",
                 f"log_dest file {self.directory / 'mosquitto.log'}",
                 "log_type error", "log_type warning", "log_type notice",
                 f"listener {self.port} 127.0.0.1"]
        if self.users is not None:
            pw = self.directory / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.pki is not None:
            lines += [f"cafile {self.pki.ca}", f"certfile {self.pki.server_cert}",
                      f"keyfile {self.pki.server_key}",
                      f"require_certificate {'true' if self.require_client_cert else 'false'}"]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 5.0, tries: int = 3) -> None:
        """Start the broker and wait until it accepts connections.

        Mosquitto cannot bind port 0 and report it, so the port is picked first and another
        process may take it before the broker binds it: on "address in use" the *first*
        start of a broker whose configuration this fixture writes moves to a new port, up to
        ``tries`` times. A ``pinned`` broker (the test handed its port out before starting
        it), a restart (clients know the port) or a configuration the test wrote fails."""
        own_conf = not self.conf.exists()
        for attempt in range(tries):
            if own_conf:
                self.write_config()
            try:
                self._start_once(timeout)
                self._started = True
                return
            except PortTaken:
                if not own_conf or self.pinned or self._started or attempt == tries - 1:
                    raise
                self.port = _pick_port()
                (self.directory / "mosquitto.log").unlink(missing_ok=True)

    def _start_once(self, timeout: float) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self.stop()
                log = self.log()
                if "in use" in err + log:
                    raise PortTaken(f"mosquitto: port {self.port} is taken: {err} {log}")
                raise RuntimeError(f"mosquitto exited: {err} {log}")
            if self.port in listening_ports(self.proc.pid):  # ours, not another listener
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", self.port), timeout=0.2):
                    return
            time.sleep(0.01)  # polling a child process: no event to wait on
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        p = self.directory / "mosquitto.log"
        return p.read_text() if p.exists() else ""


@contextlib.contextmanager
def broker(directory: Path, **kw: Any) -> Any:
    b = Mosquitto(directory, **kw)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def station_config(b: Mosquitto, **kw: Any) -> MqttConfig:
    """An MqttConfig for ``b``: fast reconnects and a short telemetry period for tests."""
    base: dict[str, Any] = {"host": "127.0.0.1", "port": b.port, "reconnect_min_s": 0.05,
                            "reconnect_max_s": 0.2, "telemetry_period_s": 0.1,
                            "timeout_s": 2.0}
    if b.pki is not None:
        base["tls"] = TlsConfig(ca_file=str(b.pki.ca),
                                cert_file=str(b.pki.client_cert) if b.require_client_cert
                                else None,
                                key_file=str(b.pki.client_key) if b.require_client_cert
                                else None)
    base.update(kw)
    return MqttConfig(**base)


# ---------------------------------------------------------------------------- clocks, tasks
class Clocks(SimClock):
    """The package's simulated clock, started at these tests' wall and monotonic times."""

    def __init__(self, wall: float = 1_795_000_000.0, mono: float = 1000.0) -> None:
        super().__init__(mono, wall_start=wall)

    def iso(self, offset: float = 0.0) -> str:
        return iso_utc(self.wall() + dt.timedelta(seconds=offset))


def limit_payload(clocks: Clocks, id: str, limit_kw: float, valid_for_s: float = 30.0,
                  **extra: Any) -> bytes:
    body: dict[str, Any] = {"id": id, "limit_kw": limit_kw, "valid_for_s": valid_for_s,
                            "issued_at": clocks.iso(), "source": "ems"}
    body.update(extra)
    return json.dumps(body).encode()


@contextlib.asynccontextmanager
async def tasks(*coros: Coroutine[Any, Any, Any]) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """Run ``coros`` as tasks for the block; cancel them and wait at the end."""
    running = [asyncio.create_task(c) for c in coros]
    try:
        yield running
    finally:
        for t in running:
            t.cancel()
        for t in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


# ---------------------------------------------------------------------------- a listener
class Listener:
    """An independent MQTT client that records every message on its topics."""

    def __init__(self, b: Mosquitto, *topics: str, **client_kw: Any) -> None:
        self.broker = b
        self.topics = topics
        self.client_kw = client_kw
        self.messages: list[tuple[str, bytes, bool, float]] = []  # topic, payload, retain, t
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Listener:
        self._client = aiomqtt.Client("127.0.0.1", self.broker.port, **self.client_kw)
        await self._client.__aenter__()
        for topic in self.topics:
            await self._client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._client is not None
        loop = asyncio.get_running_loop()
        async for m in self._client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            self.messages.append((str(m.topic), payload, bool(m.retain), loop.time()))

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        assert self._client is not None
        await self._client.publish(topic, payload, qos=1, retain=retain)

    def json(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p, _, _ in self.messages if t == topic]

    def events(self, topic: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.json(topic) if e.get("kind") == kind]
