"""The processes around the station in the demo, each started as in production and stopped.

- :class:`Broker`: a private ``mosquitto`` on a free loopback port with its own configuration
  (when the binary exists);
- :class:`Backend`: ``ocpp_server`` as a subprocess (``python -m ocpp_server serve``) with the
  station and the trucks' tokens provisioned through its CLI;
- :class:`GridFeed`: the energy manager stand-in. Over MQTT it publishes grid limit payloads
  (``sim.grid.payload``) on the simulated clock's schedule, with ``issued_at`` on the
  simulated wall clock the station's grid source is given; without a broker it writes the same
  limit into the station's ``LimitBook`` in-process (same key, same expiry rules).

Every ``stop()`` is idempotent and safe after a failed start, so the runner's ``finally`` can
call them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.clock import Monotonic, WallSeconds
from sim.demo.scenario import GridSpec


class PortTaken(RuntimeError):
    """Mosquitto could not bind its port: another process has it."""


def free_port() -> int:
    """A loopback port free now, for mosquitto, which cannot bind port 0 and report it;
    ``Broker.start`` moves to another when it is taken before the broker binds it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None


class Broker:
    """A private Mosquitto on 127.0.0.1:<free port>, no persistence, anonymous."""

    def __init__(self, directory: Path, binary: str) -> None:
        self.directory = directory
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 5.0, tries: int = 3) -> None:
        """Start the broker and wait until it accepts connections. Mosquitto cannot bind
        port 0 and report it: the port is picked first, and when another process takes it
        before the broker binds it, the broker moves to a new one (up to ``tries`` times)."""
        for attempt in range(tries):
            try:
                await self._start_once(timeout)
                return
            except PortTaken:
                if attempt == tries - 1:
                    raise
                self.port = free_port()

    async def _start_once(self, timeout: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto.conf"
        log = self.directory / "mosquitto.log"
        log.unlink(missing_ok=True)
        lines = ["user root" if os.geteuid() == 0 else "", "persistence false",
                 f"log_dest file {log}",
                 f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else ""
                if "in use" in text:
                    raise PortTaken(f"mosquitto: port {self.port} is taken")
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {text}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2):
                return
            await asyncio.sleep(0.02)  # polling a child process: no event to wait on
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Backend:
    """``ocpp_server`` in its own process, its SQLite file and configuration in ``directory``."""

    API_TOKEN = "demo-api-token"
    PASSWORD = "demo-station-password"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.config = directory / "csms.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, Any] = {}

    def _cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MWC_DEMO_STATION_PASSWORD": self.PASSWORD}
        return subprocess.run([sys.executable, "-m", "ocpp_server", "--config",
                               str(self.config), *args], capture_output=True, text=True,
                              env=env, timeout=60, check=False)

    async def start(self, station_id: str, tokens: list[str], timeout: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f'[storage]\npath = "{self.directory / "csms.db"}"\n'
            f'[ocpp]\nhost = "127.0.0.1"\nport = 0\ncall_timeout = 10\n'
            f'[api]\nhost = "127.0.0.1"\nport = 0\ntokens = ["{self.API_TOKEN}"]\n')
        steps: list[tuple[str, ...]] = [
            ("station", "add", station_id, "--password-env", "MWC_DEMO_STATION_PASSWORD")]
        steps += [("token", "add", tok) for tok in tokens]
        for step in steps:
            done = await asyncio.to_thread(self._cli, *step)
            if done.returncode != 0:
                raise RuntimeError(f"ocpp_server {' '.join(step)}: {done.stderr.strip()}")
        await self.serve()

    async def serve(self, timeout: float = 30.0) -> None:
        """Start the server process (again: on the same ports as before, same database)."""
        ready = self.directory / "ready.json"
        ready.unlink(missing_ok=True)
        ports: list[str] = []
        if self.ports:
            ports = ["--ocpp-port", str(self.ports["ocpp_port"]),
                     "--api-port", str(self.ports["api_port"])]
        log = (self.directory / "ocpp_server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ocpp_server", "--config", str(self.config), "serve",
             "--ready-file", str(ready), *ports], stdout=log, stderr=log,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ocpp_server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("ocpp_server did not become ready")
            await asyncio.sleep(0.05)
        self.ports = json.loads(ready.read_text())

    @property
    def ocpp_url(self) -> str:
        return f"ws://127.0.0.1:{self.ports.get('ocpp_port')}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.get('api_port')}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _terminate(self.proc, timeout=10.0)
        self.proc = None


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


class GridFeed:
    """The grid schedule on the simulated clock: what is in force, and its delivery.

    ``setting`` is changed by scenario events; :meth:`tick` (called by the runner after each
    cycle) publishes when the setting changed or every ``cadence_s`` of simulated time, unless
    the signal is lost. ``wall`` is the simulated wall clock (epoch + simulated seconds).
    """

    def __init__(self, spec: GridSpec, station_id: str, wall: WallSeconds, mono: Monotonic,
                 publish: Callable[[str, bytes], None] | None = None,
                 book: Any = None) -> None:
        self.spec = spec
        self.station_id = station_id
        self.wall = wall
        self.mono = mono
        self.limit_kw = spec.normal_kw
        self.storage_kw = spec.storage_kw
        self.label = "normal"
        self.lost = False
        self.published = 0
        self._publish = publish
        self._book = book
        self._last_at = -float("inf")
        self._dirty = True
        self._run_id = int(time.time())
        self.topic = f"mwc/{station_id}/grid/limit"

    @property
    def mode(self) -> str:
        return "mqtt" if self._publish is not None else "in-process"

    def set(self, limit_kw: float, storage_kw: float, label: str) -> None:
        self.limit_kw, self.storage_kw, self.label = limit_kw, storage_kw, label
        self._dirty = True

    def tick(self) -> None:
        now = self.mono()
        if self.lost or not (self._dirty or now - self._last_at >= self.spec.cadence_s):
            return
        self.published += 1
        self._dirty, self._last_at = False, now
        pid = f"{self.spec.source}-{self._run_id}-{self.published}"
        if self._publish is not None:
            from sim.grid import Setting, payload

            body = payload(Setting(self.limit_kw, self.storage_kw, label=self.label), id=pid,
                           issued_at=self.wall(), valid_for_s=self.spec.valid_for_s,
                           source=self.spec.source)
            self._publish(self.topic, json.dumps(body).encode())
        else:
            from controller.limits import STATION, Limit, LimitKey

            cap_w = max(0.0, self.limit_kw + self.storage_kw) * 1000.0
            self._book.set(STATION, LimitKey.GRID, Limit(
                value=cap_w, source=f"grid:{self.spec.source}:{pid}", issued_at=now,
                expires_at=now + self.spec.valid_for_s,
                detail=f"in-process: limit {self.limit_kw:g} kW + storage "
                       f"{self.storage_kw:g} kW ({self.label})"))


class MqttPublisher:
    """One aiomqtt client of the energy manager; ``publish`` queues, a task sends (QoS 1)."""

    def __init__(self, port: int, client_id: str) -> None:
        self.port = port
        self.client_id = client_id
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.connected = asyncio.Event()

    def publish(self, topic: str, body: bytes) -> None:
        self.queue.put_nowait((topic, body))

    async def run(self) -> None:
        import aiomqtt

        async with aiomqtt.Client("127.0.0.1", self.port, identifier=self.client_id) as client:
            self.connected.set()
            while True:
                topic, body = await self.queue.get()
                await client.publish(topic, body, qos=1)
