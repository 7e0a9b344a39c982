"""Benchmark: start-up time of `mwc run` to its first control cycle (issues 9 and 17).

Runs the real controller process against the Modbus simulator (48 modules, 2 guns, served
in this process) twice per round: with a cold numba cache (a fresh empty NUMBA_CACHE_DIR:
the allocator kernel compiles in another process while the first cycles allocate on the
pure-Python reference) and with a warm one (the same directory again: loaded from the cache).
The controller logs ``first cycle done: ready`` (READY=1, after the first cycle and so after
the first allocation) with ``startup_s`` measured from its own process start (interpreter and
imports included); this script reads that line, and on cold starts also the switch to the
compiled kernel (``switch_s``: from process start). Goals: ≤ 1 s warm, ≤ 2 s cold. Last
line JSON: ``{"startup_s": {"cold": …, "warm": …}, "switch_s": …, "goal_met": {...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sim.layout import station_toml
from sim.modbus_server import StationSimulator
from sim.physics import StationPhysics

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"warm": 1.0, "cold": 2.0}


def _toml(layout: dict[str, object]) -> str:
    return station_toml(layout, {"id": "BENCH-START", "max_kw": 1440.0,
                                 "fallback_grid_kw": 1440.0}, max_voltage_v=1250.0)


async def _once(config: Path, cache: str, wait_switch: bool) -> tuple[float, float | None]:
    """(startup_s, switch_s): READY from the controller's own log line; on a cold start the
    switch to the compiled kernel (seconds since launch), waited for so that the compile in
    the other process completes into the cache before the warm start."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    t_launch = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "--log-format", "json", "run", "--config",
        str(config), cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    startup: float | None = None
    try:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 300)
            if not line:
                raise RuntimeError("controller exited before its first cycle")
            if b"first cycle done" in line:
                startup = float(json.loads(line)["startup_s"])
                if not wait_switch:
                    return startup, None
            elif b"allocator switched" in line and startup is not None:
                return startup, time.monotonic() - t_launch
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await proc.communicate()


async def main(rounds: int) -> dict[str, object]:
    sim = StationSimulator(StationPhysics(48, 2), realtime=True)
    await sim.start()
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    switches: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "mwc.toml"
            config.write_text(_toml(sim.describe()))
            for r in range(rounds):
                cache = str(Path(tmp) / f"numba-{r}")
                cold, switch = await _once(config, cache, True)
                times["cold"].append(cold)
                switches.append(switch or math.nan)
                times["warm"].append((await _once(config, cache, False))[0])
    finally:
        await sim.stop()
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:>4}: median {med[k]:.3f} s over {len(v)} starts "
              f"(min {min(v):.3f}, max {max(v):.3f}); goal ≤ {GOALS[k]} s")
    print(f"cold: switched to the compiled kernel after {statistics.median(switches):.1f} s "
          "(median; cycles ran on the reference until then)")
    return {"startup_s": med, "switch_s": round(statistics.median(switches), 2),
            "goal_s": GOALS,
            "goal_met": {k: med[k] <= GOALS[k] for k in GOALS}}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    print(json.dumps(asyncio.run(main(ap.parse_args().rounds))))
