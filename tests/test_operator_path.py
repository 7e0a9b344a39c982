"""The README's "Running pieces by hand" steps, run as written, as processes on loopback.

The commands are read from the README's code block and the configurations from
``deploy/lab/`` (copied), with one change: the lab's fixed ports (OCPP 9000, REST 8180, MQTT
1883, simulators from 15020) are replaced by free ones, so the test runs next to anything
else. It checks what an operator following the README should see: two trucks charged through
``ocpp_server``, each transaction with its truck's token (authorized by the backend) and
energy, and the lab's 600 kW grid limit binding the station.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port_block

ROOT = Path(__file__).resolve().parents[1]
STATION = "MWC-LAB-01"
API_TOKEN = "lab-operator-token"
TOKENS = {"EACTROS600-1", "MAN_MCS-2"}
GRID_W = 600_000.0
MODULES = 48


def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


pytestmark = pytest.mark.skipif(_mosquitto() is None, reason="mosquitto is not installed")


def readme_steps() -> list[str]:
    """The command lines of the README's "Running pieces by hand" code block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Running pieces by hand", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _until(what: str, cond: Callable[[], Any], procs: list[subprocess.Popen[bytes]],
           timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        for p in procs:
            assert p.poll() is None, f"{p.args!r} exited with {p.returncode} while {what}"
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):  # controller first: it ends its transactions cleanly
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def _telemetry(port: int, seen: list[dict[str, Any]]) -> subprocess.Popen[bytes]:
    """A subscriber process printing the station's telemetry (keeps the test synchronous)."""
    code = (
        "import asyncio, sys, aiomqtt\n"
        "async def main():\n"
        f"    async with aiomqtt.Client('127.0.0.1', {port}) as c:\n"
        f"        await c.subscribe('mwc/{STATION}/telemetry')\n"
        "        async for m in c.messages:\n"
        "            print(m.payload.decode(), flush=True)\n"
        "asyncio.run(main())\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)


def test_readme_lab_steps_charge_two_trucks_with_authorization_and_grid_limit(
        tmp_path: Path) -> None:
    # The README's commands bind the ports its configuration names, so they cannot bind 0:
    # one block below the ephemeral range for all of them (the modules' block comes last).
    base = free_port_block(3 + MODULES + 4)
    ports = {"9000": str(base), "8180": str(base + 1), "1883": str(base + 2),
             "15020": str(base + 3)}
    control = str(int(ports["15020"]) + MODULES + 2)
    ports["15070"] = control  # the fault control port the README names

    def subst(text: str) -> str:
        return re.sub(r"\b(9000|8180|1883|15020|15070)\b", lambda m: ports[m[1]], text)

    (tmp_path / "deploy" / "lab").mkdir(parents=True)
    for f in (ROOT / "deploy" / "lab").iterdir():
        (tmp_path / "deploy" / "lab" / f.name).write_text(subst(f.read_text()))
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get(
        "NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba")), "PYTHONUNBUFFERED": "1"}
    logs = tmp_path / "logs"
    logs.mkdir()
    api = f"http://127.0.0.1:{ports['8180']}/api/v1"
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    # What each long-running step must be doing before the next one starts.
    ready: dict[str, Callable[[], bool]] = {
        "serve": lambda: _listening(int(ports["9000"])) and _listening(int(ports["8180"])),
        "mosquitto": lambda: _listening(int(ports["1883"])),
        "modules": lambda: _listening(int(control) + 1),  # the SECC bridges come last
    }
    curl: list[str] | None = None
    with _processes() as procs:
        for n, line in enumerate(readme_steps()):
            words = shlex.split(subst(line), comments=True)
            background = words[-1] == "&"
            words = [w for w in words if w != "&"]
            step_env = dict(env)
            while "=" in words[0] and not words[0].startswith((".", "/")):
                key, _, value = words.pop(0).partition("=")
                step_env[key] = value
            if words[0] == "curl":
                curl = words
                continue
            if words[0] == "mosquitto":
                words[0] = _mosquitto() or "mosquitto"
            if not background:
                done = subprocess.run(words, cwd=tmp_path, env=step_env, capture_output=True,
                                      text=True, timeout=120)
                assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
                if "doctor" in words:  # the commissioning line checks both trucks' SECCs too
                    shown = done.stdout + done.stderr
                    assert "vehicle link gun 1" in shown and "vehicle link gun 2" in shown, shown
                continue
            log = (logs / f"{n}.log").open("wb")
            procs.append(subprocess.Popen(words, cwd=tmp_path, env=step_env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
            for key, cond in ready.items():
                if key in line:
                    _until(f"waiting for `{line}`", cond, procs, 60)

        seen: list[dict[str, Any]] = []
        sub = _telemetry(int(ports["1883"]), seen)
        procs.insert(0, sub)
        assert sub.stdout is not None
        os.set_blocking(sub.stdout.fileno(), False)

        def grid_binds() -> bool:
            for raw in iter(sub.stdout.readline, b""):  # type: ignore[union-attr]
                seen.append(json.loads(raw))
            for t in seen[-20:]:
                st = t["station"]
                if (st["cap_w"] == GRID_W and st["cap_source"].startswith("grid:lab-ems")
                        and st["power_w"] is not None and st["power_w"] > 0.9 * GRID_W
                        and sum(1 for g in t["guns"] if g["state"] == "Charging") == 2):
                    return True
            return False

        def transactions(active: bool) -> list[dict[str, Any]] | None:
            res = httpx.get(f"{api}/transactions", headers=headers, timeout=10)
            txs = [tx for tx in res.json() if tx["station_id"] == STATION]
            if {tx["id_token"] for tx in txs} != TOKENS:
                return None
            if any(tx["active"] != active for tx in txs):
                return None
            return txs

        _until("two transactions started", lambda: transactions(active=True), procs, 60)
        _until("the 600 kW grid limit binding with both trucks charging", grid_binds, procs, 60)
        # Once the station is down to the grid limit, never above it again (+0.5 %).
        capped = [t["station"] for t in seen if t["station"]["cap_w"] == GRID_W]
        first = next(i for i, s in enumerate(capped) if (s["power_w"] or 0) <= GRID_W)
        assert all(s["power_w"] is None or s["power_w"] <= GRID_W * 1.005
                   for s in capped[first:]), capped

        for gun in (0, 1):  # the truck drivers unplug (README)
            done = subprocess.run(
                [str(tmp_path / ".venv" / "bin" / "mwc"), "sim", "fault", "vehicle-unplug",
                 "--target", str(gun), "--port", control],
                env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
        ended = _until("both transactions ended", lambda: transactions(active=False), procs,
                       60)
        for tx in ended:
            assert tx["energy_wh"] is not None and tx["energy_wh"] > 100, tx
            detail = httpx.get(f"{api}/transactions/{tx['id']}", headers=headers,
                               timeout=10).json()
            # The truck's own token, as the README documents it, authorized by the backend
            # (free_charging = false: the station waited for the Accepted answer).
            gun = int(tx["id_token"].rsplit("-", 1)[1])
            assert tx["evse_id"] == gun
            tokens = [e["payload"].get("idToken") for e in detail["events"]]
            assert {"idToken": tx["id_token"], "type": "Central"} in tokens, tokens
        # The README's last line shows the same transactions.
        if curl is not None and shutil.which("curl"):
            listed = subprocess.run(curl, capture_output=True, text=True, timeout=30)
            assert {tx["id_token"] for tx in json.loads(listed.stdout)} == TOKENS
