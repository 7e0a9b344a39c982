"""Benchmark: the whole control cycle at 10 Hz, both register layouts, 48 and 96 modules,
on a quiet machine and with two competing busy processes.

Per case the simulator runs as its own process (``python -m sim.cli modules --layout …``,
real time), as on a cabinet where the devices are elsewhere; the controller runs here on the
real clock with two simulated trucks as vehicle links (their battery stand-in in the
simulator is a constant voltage at the trucks' open-circuit voltage). "busy" starts two
processes that spin on the CPU for the whole case (the cabinet PC's OCPP/MQTT/other work at
its worst). Per case: cycle work time p50/p99 (poll, decide, safety, apply), the controller
process's CPU share of one core, overruns of the 100 ms period, safety violations, and the
Modbus requests per cycle the simulator served. The last line is JSON:
``{"cases": {"power_unit/48/quiet": {"cycle_ms_p50": …, "cycle_ms_p99": …, "cpu_percent": …,
"overruns": …, "violations": …}, …}, "goals_met": {…}}``.

Goals (issue 17): power-unit layout at 48 modules p99 ≤ 10 ms, ≤ 5 % of a core, 0 overruns
quiet, p99 ≤ 25 ms busy; per-module layout p99 ≤ 30 ms quiet; 0 violations everywhere.
``--loop uvloop`` runs the controller on uvloop when it is installed (item 4 of the issue).
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
from typing import Any

from controller import logs
from controller.config import parse_config
from controller.station import CycleEvent, Station, StationEvent
from power.modbus_base import DeviceEndpoint, LinkSettings
from power.modbus_driver import HardwareConfig
from power.power_unit import PowerUnitConfig
from sim.truck import TruckParams, TruckSim

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("power_unit", "port_per_device")


def hardware(layout: dict[str, Any], link: LinkSettings) -> HardwareConfig | PowerUnitConfig:
    """Driver configuration from the JSON line ``mwc sim modules`` prints."""
    host = str(layout["host"])
    meters = tuple(DeviceEndpoint(host, int(layout["meters"]["port"]), int(u))
                   for u in layout["meters"]["units"])
    if layout.get("layout") == "power_unit":
        pu = layout["power_unit"]
        return PowerUnitConfig(DeviceEndpoint(host, int(pu["port"])), int(pu["modules"]),
                               meters, link)
    return HardwareConfig(
        tuple(DeviceEndpoint(host, int(p)) for p in layout["modules"]["ports"]),
        DeviceEndpoint(host, int(layout["matrix"]["port"])), meters, link)


#: --sim-ordinary: the simulator at the ordinary priority too (not the controller's)
SIM_ORDINARY = False


def start_simulator(layout: str, modules: int, load_v: float, extra: list[str] | None = None
                    ) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get(
        "NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.cli", "modules", "--layout", layout, "--count",
         str(modules), "--guns", "2", "--port", "0", "--load-voltage", f"{load_v:.3f}",
         "--watchdog-ms", "1000", *(extra or [])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env,
        preexec_fn=_ordinary if SIM_ORDINARY else None,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError(f"simulator ({layout}, {modules} modules) did not start")
    return proc, json.loads(line)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _ordinary() -> None:
    """In a competing process: back to SCHED_OTHER at nice 0, whatever the bench runs at."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    os.nice(-os.nice(0))


def busy_processes(n: int) -> list[subprocess.Popen[bytes]]:
    """``n`` processes that spin on the CPU until killed (the competing load), always at the
    ordinary priority: the controller's Nice / policy is relative to them."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_ordinary)
            for _ in range(n)]


async def run_case(layout: str, modules: int, busy: bool, seconds: float,
                   warmup_s: float = 5.0) -> dict[str, float]:
    trucks = [TruckSim(TruckParams(name=n, start_soc_pct=30.0, id_token=f"TRUCK-{n}"))
              for n in ("A", "B")]
    proc, lay = start_simulator(layout, modules, trucks[0].ocv_v())
    spinners = busy_processes(2) if busy else []
    try:
        cfg = parse_config({
            "station": {"id": "BENCH", "max_kw": 1440.0, "fallback_grid_kw": 1440.0},
            "guns": [{"cable_rating_a": 1500.0, "max_voltage_v": 1000.0}] * 2,
            "modules": {"count": modules},
        })
        station = Station(cfg, trucks, hardware=hardware(lay, cfg.link_settings()))
        work: list[float] = []
        parts: dict[str, list[float]] = {"poll_ms": [], "decide_ms": [], "apply_ms": []}

        def on_event(ev: StationEvent) -> None:
            if isinstance(ev, CycleEvent):
                work.append(ev.record.work_ms)
                for k, v in station.last_timing.items():
                    parts.setdefault(k, []).append(v)

        station.subscribe(on_event)
        await station.start()
        for t in trucks:
            t.plug_in()
        stop = asyncio.Event()
        runner = asyncio.create_task(station.run(stop))
        await asyncio.sleep(warmup_s)  # sessions reach Charging, the kernel is switched in
        work.clear()
        for lst in parts.values():
            lst.clear()
        v0, o0 = station.violations, station.overruns
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        c1, w1 = time.process_time(), time.perf_counter()
        stop.set()
        await runner
        rec = station.last_record
        overruns, violations = station.overruns - o0, station.violations - v0
        await station.close()
    finally:
        for p in spinners:
            p.kill()
            p.wait()
        stop_process(proc)
    q = statistics.quantiles(work, n=100)
    guns = [(g.state, round(g.current_a), g.binding) for g in rec.guns] if rec else []
    name = f"{layout}/{modules}/{'busy' if busy else 'quiet'}"
    print(f"{name}: {len(work)} cycles over {w1 - w0:.1f} s; guns at the end: {guns}")
    print(f"  cycle work ms: p50 {q[49]:.2f}  p90 {q[89]:.2f}  p99 {q[98]:.2f}  "
          f"max {max(work):.2f}; overruns {overruns}; violations {violations}")
    for k, lst in parts.items():
        if len(lst) > 1:
            pq = statistics.quantiles(lst, n=100)
            print(f"  {k[:-3]:>6} ms: p50 {pq[49]:.2f}  p99 {pq[98]:.2f}")
    return {
        "cycle_ms_p50": round(q[49], 2),
        "cycle_ms_p99": round(q[98], 2),
        "cpu_percent": round(100.0 * (c1 - c0) / (w1 - w0), 1),
        "overruns": overruns,
        "violations": violations,
    }


def goals(cases: dict[str, dict[str, float]]) -> dict[str, bool]:
    """Issue 17's goals for the cases that ran."""
    out: dict[str, bool] = {}
    for name, r in cases.items():
        layout, modules, load = name.split("/")
        ok = r["violations"] == 0
        if layout == "power_unit" and modules == "48" and load == "quiet":
            ok = ok and r["cycle_ms_p99"] <= 10 and r["cpu_percent"] <= 5 and r["overruns"] == 0
        elif layout == "power_unit" and modules == "48":
            ok = ok and r["cycle_ms_p99"] <= 25
        elif layout == "port_per_device" and load == "quiet":
            ok = ok and r["cycle_ms_p99"] <= 30
        out[name] = ok
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured seconds per case")
    ap.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds per case")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--modules", default="48,96")
    ap.add_argument("--load", default="quiet,busy")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness increment of the controller (and the simulator it starts, "
                    "which stands for hardware off this CPU; the busy processes stay at 0); "
                    "negative needs CAP_SYS_NICE: the systemd unit's Nice= (issue 17, item 4)")
    ap.add_argument("--fifo", type=int, default=0,
                    help="SCHED_FIFO priority of the controller and simulator (0: off); the "
                    "unit's CPUSchedulingPolicy=fifo / CPUSchedulingPriority=")
    ap.add_argument("--sim-ordinary", action="store_true",
                    help="run the simulator at the ordinary priority, not the controller's")
    args = ap.parse_args()
    global SIM_ORDINARY
    SIM_ORDINARY = args.sim_ordinary
    if args.nice:
        os.nice(args.nice)
    if args.fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.fifo))
    logs.configure(level="WARNING", fmt="json", stream=sys.stderr)
    if args.loop == "uvloop":
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    cases: dict[str, dict[str, float]] = {}
    for layout in args.layouts.split(","):
        for modules in (int(m) for m in args.modules.split(",")):
            for load in args.load.split(","):
                name = f"{layout}/{modules}/{load}"
                cases[name] = asyncio.run(run_case(layout, modules, load == "busy",
                                                   args.seconds, args.warmup))
    print(json.dumps({"seconds": args.seconds, "loop": args.loop, "nice": args.nice,
                      "fifo": args.fifo, "sim_ordinary": args.sim_ordinary,
                      "load_avg_1m": round(os.getloadavg()[0], 2),
                      "cases": cases,
                      "goals_met": goals(cases)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
