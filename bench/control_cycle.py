"""Benchmark: the whole control cycle at 10 Hz against 48 simulated modules over Modbus TCP.

The simulator runs as its own process (``python -m sim.cli modules``, real time), as on a
cabinet where the devices are elsewhere; the controller runs here on the real clock with two
simulated trucks as vehicle links (their battery stand-in in the simulator is a constant
voltage at the trucks' open-circuit voltage). Prints the cycle work time p50/p99 (poll,
decide, safety, apply), the controller process's CPU share of one core, overruns and safety
violations; the last line is JSON:
``{"cycle_ms_p50": …, "cycle_ms_p99": …, "cpu_percent": …, "violations": …}``.
Goals: p99 ≤ 20 ms, ≤ 15 % of one core, 0 violations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from controller import logs
from controller.config import parse_config
from controller.station import CycleEvent, Station, StationEvent
from power.modbus_base import DeviceEndpoint, LinkSettings
from power.modbus_driver import Hardware, HardwareConfig
from sim.truck import TruckParams, TruckSim

ROOT = Path(__file__).resolve().parents[1]


def _hardware(layout: dict[str, object], link: LinkSettings) -> HardwareConfig:
    host = str(layout["host"])
    modules, matrix, meters = layout["modules"], layout["matrix"], layout["meters"]
    assert isinstance(modules, dict) and isinstance(matrix, dict) and isinstance(meters, dict)
    return HardwareConfig(
        tuple(DeviceEndpoint(host, int(p)) for p in modules["ports"]),
        DeviceEndpoint(host, int(matrix["port"])),
        tuple(DeviceEndpoint(host, int(meters["port"]), int(u)) for u in meters["units"]),
        link,
    )


async def _bench(seconds: float, modules: int) -> dict[str, float]:
    trucks = [TruckSim(TruckParams(name=n, start_soc_pct=30.0, id_token=f"TRUCK-{n}"))
              for n in ("A", "B")]
    load_v = round(trucks[0].ocv_v())
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get(
        "NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.cli", "modules", "--count", str(modules), "--guns", "2",
         "--port", "0", "--load-voltage", str(load_v), "--watchdog-ms", "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env,
    )
    try:
        assert proc.stdout is not None
        layout = json.loads(proc.stdout.readline())
        cfg = parse_config({
            "station": {"id": "BENCH", "max_kw": 1440.0, "fallback_grid_kw": 1440.0},
            "guns": [{"cable_rating_a": 1500.0, "max_voltage_v": 1000.0}] * 2,
            "modules": {"count": modules},
        })
        hw = Hardware(_hardware(layout, cfg.link_settings()))
        station = Station(cfg, trucks, hardware=hw)
        work: list[float] = []
        parts: dict[str, list[float]] = {"poll_ms": [], "decide_ms": [], "apply_ms": []}

        def on_event(ev: StationEvent) -> None:
            if isinstance(ev, CycleEvent):
                work.append(ev.record.work_ms)
                for k, v in station.last_timing.items():
                    parts[k].append(v)

        station.subscribe(on_event)
        await station.start()
        for t in trucks:
            t.plug_in()
        # Warm-up: sessions reach Charging and the ramp settles (not measured).
        stop = asyncio.Event()
        runner = asyncio.create_task(station.run(stop))
        await asyncio.sleep(5.0)
        work.clear()
        for lst in parts.values():
            lst.clear()
        v0 = station.violations
        o0 = station.overruns
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        c1, w1 = time.process_time(), time.perf_counter()
        stop.set()
        await runner
        rec = station.last_record
        await station.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    q = statistics.quantiles(work, n=100)
    guns = [(g.state, round(g.current_a), g.binding) for g in rec.guns] if rec else []
    print(f"cycles measured: {len(work)} over {w1 - w0:.1f} s "
          f"({len(work) / (w1 - w0):.2f} Hz); guns at the end: {guns}")
    print(f"cycle work ms: p50 {q[49]:.2f}  p90 {q[89]:.2f}  p99 {q[98]:.2f}  "
          f"max {max(work):.2f}; overruns {station.overruns - o0}")
    for k, lst in parts.items():
        pq = statistics.quantiles(lst, n=100)
        print(f"  {k[:-3]:>6} ms: p50 {pq[49]:.2f}  p99 {pq[98]:.2f}")
    return {
        "cycle_ms_p50": round(q[49], 2),
        "cycle_ms_p99": round(q[98], 2),
        "cpu_percent": round(100.0 * (c1 - c0) / (w1 - w0), 1),
        "violations": station.violations - v0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--modules", type=int, default=48)
    args = ap.parse_args()
    logs.configure(level="WARNING", fmt="json", stream=sys.stderr)
    result = asyncio.run(_bench(args.seconds, args.modules))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
