"""Shared helpers of the fail-safe tests (issue 14): a real-time simulated station, the real
`mwc run` process against it, and an independent Modbus master reading the contactor matrix.

The module/matrix/meter servers (``hw``) and the SECC bridges (``secc``) are two simulators
over one physics, so a test can take the power hardware away (``outage``) while the trucks'
bridges keep answering — the vehicle-link edge is issue 14's other half.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import eventually
from pymodbus.client import AsyncModbusTcpClient

from sim.layout import station_toml
from sim.modbus_server import StationSimulator
from sim.physics import RealTimeStepper, StationPhysics
from sim.secc_server import serve_trucks
from sim.truck import TruckParams, TruckSim

ROOT = Path(__file__).resolve().parents[1]
MODULES = 8
DRAIN_S = 3.0


class MatrixMaster:
    """An independent Modbus master on the matrix port: what the coils really are."""

    def __init__(self, host: str, port: int, modules: int, guns: int) -> None:
        self.client = AsyncModbusTcpClient(host, port=port, timeout=1.0, retries=0)
        self.n = modules * guns

    async def coils_on(self) -> int:
        if not self.client.connected:
            await self.client.connect()
        rr = await self.client.read_coils(0, count=self.n, device_id=1)
        assert not rr.isError(), rr
        return sum(bool(b) for b in rr.bits[: self.n])

    def close(self) -> None:
        self.client.close()


@dataclass
class Rig:
    physics: StationPhysics
    hw: StationSimulator
    secc: StationSimulator
    trucks: list[TruckSim]
    config: Path
    log: Path
    master: MatrixMaster

    def gun_a(self) -> list[float]:
        return [self.physics.meters[g].current_a for g in range(self.physics.guns)]

    def modules_on(self) -> list[int]:
        return [m.index for m in self.physics.modules if m.output_on]

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": line})
        return out

    def violations(self) -> list[dict[str, Any]]:
        return [x for x in self.log_lines() if x.get("event") == "safety violation"]

    async def outage(self, seconds: float, restart_state: bool = True) -> None:
        """The power hardware's Modbus servers go away for ``seconds`` (the physics runs on:
        module watchdogs cut the current); ``restart_state`` then resets it as a restarted
        simulator process would come back: coils open, modules off, default watchdog."""
        await self.hw.stop()
        stepper = RealTimeStepper(self.physics)
        stepper.start()
        await asyncio.sleep(seconds)  # the outage itself: its length is the test's input
        await stepper.stop()
        if restart_state:
            mx = self.physics.matrix
            n = len(mx.coils)
            mx.coils, mx.closed = [False] * n, [False] * n
            for m in self.physics.modules:
                m.enabled = False
                m.watchdog_ms = m.params.watchdog_ms
        await self.hw.start()


@asynccontextmanager
async def rig(tmp_path: Path, station: dict[str, Any] | None = None, sections: str = "",
              amps: tuple[float, float] = (300.0, 250.0)) -> AsyncIterator[Rig]:
    trucks = [TruckSim(TruckParams(name=n, capacity_kwh=600.0, start_soc_pct=soc,
                                   ev_max_current_a=a, id_token=f"TRUCK-{n}"))
              for n, soc, a in (("A", 30.0, amps[0]), ("B", 50.0, amps[1]))]
    for t in trucks:
        t.plug_in()
    physics = StationPhysics(MODULES, 2, loads=trucks)
    hw = StationSimulator(physics, realtime=True)
    secc = StationSimulator(physics, realtime=False)  # bridges only; hw steps the physics
    serve_trucks(secc, trucks)
    await hw.start()
    await secc.start()
    layout = hw.describe()
    layout["secc"] = secc.describe()["secc"]
    st = {"id": "FAILSAFE-1", "max_kw": 640.0, "fallback_grid_kw": 640.0, "watchdog_ms": 500,
          "cable_check_s": 0.3, "drain_timeout_s": DRAIN_S, **(station or {})}
    config = tmp_path / "mwc.toml"
    config.write_text(station_toml(layout, st, cable_rating_a=1000.0, sections=sections))
    master = MatrixMaster(hw.ports.host, hw.ports.matrix, MODULES, 2)
    r = Rig(physics, hw, secc, trucks, config, tmp_path / "controller.log", master)
    try:
        yield r
    finally:
        master.close()
        for sim in (secc, hw):  # bounded: a stuck server shutdown must not hang the suite
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sim.stop(), 10.0)


async def controller(r: Rig) -> asyncio.subprocess.Process:
    """`mwc run` (JSON logs into ``r.log``)."""
    env = {**os.environ,
           "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache/numba"))}
    with r.log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "--log-format", "json", "run",
            "--config", str(r.config), cwd=ROOT, env=env, stdout=out, stderr=out)


async def until(what: str, cond: Callable[[], Awaitable[bool] | bool], timeout: float,
                proc: asyncio.subprocess.Process | None = None) -> float:
    """Wait for ``cond``; returns the seconds it took (fails with ``what`` on timeout)."""
    t0 = time.monotonic()
    await eventually(cond, timeout, 0.05, what, proc=proc)
    return time.monotonic() - t0


async def end(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
