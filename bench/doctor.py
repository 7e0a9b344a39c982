"""Benchmark: `mwc doctor` against a full cabinet (48 modules, the matrix, 2 meters).

Moved here from tests/test_doctor.py, where it was a timed assertion (house rule: speed
goals live in bench/). The Modbus simulator serves in this process, realtime off, and
``doctor.diagnose`` runs on the same loop, as the test ran it. Every check must PASS (a
round that does not is an error, not a slow result). Goal: a full diagnosis in ≤ 3 s wall.
CPU seconds of this process are printed too: on a shared machine they say more than wall
time. Last line JSON: ``{"wall_s": …, "cpu_s": …, "goal_s": 3.0, "goal_met": …}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from controller import doctor, logs
from sim.layout import station_toml
from sim.modbus_server import StationSimulator
from sim.physics import ConstantVoltageLoad, StationPhysics

GOAL_S = 3.0
MODULES = 48


async def main(rounds: int) -> dict[str, object]:
    logs.configure(level="WARNING", fmt="console", stream="stderr")
    physics = StationPhysics(MODULES, 2, loads=[ConstantVoltageLoad(600.0) for _ in range(2)])
    sim = StationSimulator(physics, realtime=False)
    await sim.start()
    walls: list[float] = []
    cpus: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "mwc.toml"
            config.write_text(station_toml(sim.describe(), {
                "id": "BENCH-DOCTOR", "max_kw": 1440.0, "fallback_grid_kw": 1000.0},
                cable_rating_a=1200.0, max_voltage_v=1250.0))
            for _ in range(rounds):
                t0, c0 = time.monotonic(), time.process_time()
                report = await doctor.diagnose(config)
                walls.append(time.monotonic() - t0)
                cpus.append(time.process_time() - c0)
                if report.exit_code != 0:
                    raise RuntimeError("doctor did not pass:\n" + doctor.render_table(report))
    finally:
        await sim.stop()
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(f"mwc doctor, {MODULES} modules + matrix + 2 meters: median {wall:.3f} s wall "
          f"(min {min(walls):.3f}, max {max(walls):.3f}), {cpu:.3f} s CPU over {rounds} "
          f"rounds; goal ≤ {GOAL_S} s")
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "goal_s": GOAL_S,
            "goal_met": wall <= GOAL_S}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    print(json.dumps(asyncio.run(main(ap.parse_args().rounds))))
