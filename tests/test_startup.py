"""sd_notify READY/WATCHDOG/STOPPING and the start-up time of `mwc run` (issue 9).

The notify socket is a real AF_UNIX datagram socket made by the test, as systemd makes one;
the last test runs the real `mwc run` process under it against the Modbus simulators.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cycle_fixtures import SimClock, rig, small_truck
from helpers import eventually

from controller.sdnotify import Notifier, process_age_s
from controller.startup import StartupWatch
from sim.layout import station_toml
from sim.modbus_server import StationSimulator
from sim.physics import StationPhysics

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield path, sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_notifier_is_a_no_op_outside_systemd() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False and n.stopping() is False


def test_watchdog_pings_at_a_quarter_of_the_interval(
        notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    clock = SimClock(0.0)
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, clock)
    sent = []
    for _ in range(40):  # 4 s in 100 ms cycles
        sent.append(n.watchdog())
        clock.t += 0.1
    assert sent.count(True) == 8  # every 0.5 s = 2 s / 4
    assert received(sock) == ["WATCHDOG=1"] * 8


def test_watchdog_for_another_pid_is_not_ours(notify_socket: tuple[str, socket.socket]) -> None:
    path, _ = notify_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
                           "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog() is False and n.ready() is True


def test_abstract_socket_and_a_missing_socket(tmp_path: Path) -> None:
    name = f"mwc-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        assert Notifier(f"@{name}").ready("ok")
        assert sock.recv(100).decode() == "READY=1\nSTATUS=ok"
    finally:
        sock.close()
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert gone.ready() is False  # logged once, never raised
    assert gone.ready() is False


def test_process_age_is_measured() -> None:
    age = process_age_s()
    assert age is not None and 0.0 < age < 3600.0


async def test_ready_only_after_the_first_cycle(
        notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    async with rig([small_truck("A"), small_truck("B")]) as r:
        n = Notifier(path, 400_000, r.clock)
        watch = StartupWatch(r.station, n)
        r.station.subscribe(watch.observe)
        assert received(sock) == []  # started (allocator warm, devices armed): not ready yet
        await r.step()
        msgs = received(sock)
        assert msgs[0].startswith("READY=1")
        assert watch.ready_after_s is not None and watch.ready_after_s > 0
        pings = []
        for _ in range(20):  # 2 s of cycles, watchdog 0.4 s → a ping every 0.1 s
            await r.step()
            pings += received(sock)  # drained as systemd does (the queue holds ~10)
        assert pings == ["WATCHDOG=1"] * 20
        assert [m for m in n.sent if m.startswith("READY")] == [msgs[0]]  # READY once


def _config(layout: dict[str, object], tmp_path: Path) -> Path:
    path = tmp_path / "mwc.toml"
    path.write_text(station_toml(layout, {"id": "STARTUP-1", "max_kw": 600.0,
                                          "fallback_grid_kw": 600.0}, cable_rating_a=1000.0))
    return path


async def test_mwc_run_under_systemd_notify(
        notify_socket: tuple[str, socket.socket], tmp_path: Path) -> None:
    """The real process: READY=1 once it cycles, WATCHDOG=1 from its cycles at the asked
    rate, STOPPING=1 and exit 0 on SIGTERM; the start-up time is logged."""
    path, sock = notify_socket
    sim = StationSimulator(StationPhysics(4, 1), realtime=True)
    await sim.start()
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000",
           "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache/numba"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "--log-format", "json", "run", "--config",
        str(_config(sim.describe(), tmp_path)), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        msgs: list[str] = []

        def ready() -> bool:
            msgs.extend(received(sock))
            return any(m.startswith("READY=1") for m in msgs)

        await eventually(ready, 30, 0.05, what="READY=1 from the controller", proc=proc,
                         detail=lambda: msgs)
        msgs = []
        await asyncio.sleep(1.0)  # the subject: the ping rate over 10 cycles (≤ 1 per 100 ms)
        msgs += received(sock)
        assert 4 <= msgs.count("WATCHDOG=1") <= 12, msgs
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, out.decode()[-2000:]
        assert "STOPPING=1" in received(sock)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await sim.stop()
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    first = [e for e in events if e.get("event") == "first cycle done: ready"]
    assert len(first) == 1, [e.get("event") for e in events]
    assert first[0]["station"] == "STARTUP-1"
    assert 0 < first[0]["startup_s"] < 30 and first[0]["allocator_code"] in (
        "cache", "compiled", "reference")


def test_mwc_compile_fills_the_cache_for_a_warm_first_start(tmp_path: Path) -> None:
    """`mwc compile` at install time: the next process loads the allocator from the cache."""
    import subprocess

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    runs = [subprocess.run([sys.executable, "-m", "controller.cli", "compile"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    assert runs[0].stdout.startswith("allocator compiled")
    assert runs[1].stdout.startswith("allocator cache")
    assert str(tmp_path / "numba") in runs[1].stdout
