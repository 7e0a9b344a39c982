"""Benchmark: how fast a lowered grid limit shows at the meters (peak shaving).

The whole station on loopback, in real time: a private Mosquitto, the module simulator as its
own process (``python -m sim.cli modules --count 48 --guns 2 --port 0 --layout …``), and in
this process the controller (``controller.station.Station``, 100 ms cycle) with two
simulated trucks as vehicle links, the grid limit source and telemetry on MQTT. An
energy-manager client publishes the normal limit, waits until both trucks draw full power
again, then publishes a lowered one and measures from just before the publish to the first
cycle whose measured station power (sum of the DC meters) is at or below the new limit.
Repeated ``--repeat`` times (default 50).

Prints one line per repetition, the last line as JSON:
``{"response_ms_p50": …, "response_ms_p99": …, …}``. Goal (issue 17): p99 ≤ 150 ms at a
100 ms cycle in the power-unit layout (``--layout``, the default); a lowered limit wakes the
cycle at once instead of waiting for the period, and a confirmation cycle reads the meters one
module response time (``[modules] response_ms``) after it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt

from controller import logs
from controller.config import parse_config
from controller.grid import GridLimitSource
from controller.limits import STATION, LimitBook
from controller.mqtt import MqttConfig, MqttConnection
from controller.station import CycleEvent, Station, StationEvent
from controller.telemetry import TelemetryPublisher
from sim.demo.services import Broker, mosquitto_binary
from sim.truck import TruckParams, TruckSim

STATION_ID = "BENCH-1"
TOPIC = f"mwc/{STATION_ID}/grid/limit"


def start_simulator(load_v: float, layout: str = "power_unit"
                    ) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.cli", "modules", "--count", "48", "--guns", "2",
         "--port", "0", "--load-voltage", f"{load_v:.3f}", "--layout", layout],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("module simulator did not start")
    return proc, json.loads(line)


def station_config(layout: dict[str, Any], cycle_ms: float) -> Any:
    host = layout["host"]
    if layout.get("layout") == "power_unit":
        return parse_config({
            "station": {"id": STATION_ID, "max_kw": 1440.0, "fallback_grid_kw": 1440.0,
                        "cycle_ms": cycle_ms},
            "guns": [{"cable_rating_a": 1500.0, "max_voltage_v": 1000.0,
                      "meter": {"host": host, "port": layout["meters"]["port"], "unit": u}}
                     for u in layout["meters"]["units"]],
            "modules": {"count": 48, "rated_power_w": 40_000.0, "rated_current_a": 100.0},
            "hardware": {"layout": "power_unit", "host": host,
                         "port": layout["power_unit"]["port"]},
        })
    return parse_config({
        "station": {"id": STATION_ID, "max_kw": 1440.0, "fallback_grid_kw": 1440.0,
                    "cycle_ms": cycle_ms},
        "guns": [{"cable_rating_a": 1500.0, "max_voltage_v": 1000.0,
                  "meter": {"host": host, "port": layout["meters"]["port"], "unit": u}}
                 for u in layout["meters"]["units"]],
        "modules": {"count": 48, "rated_power_w": 40_000.0, "rated_current_a": 100.0,
                    "addresses": [{"host": host, "port": p} for p in layout["modules"]["ports"]]},
        "matrix": {"address": {"host": host, "port": layout["matrix"]["port"]}},
    })


def limit(id: str, kw: float, valid_for_s: float = 120.0) -> bytes:
    now = time.time()
    issued = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    return json.dumps({"id": id, "limit_kw": kw, "valid_for_s": valid_for_s,
                       "issued_at": issued, "source": "bench"}).encode()


class Meter:
    """Every cycle record as it arrives: (perf_counter, measured station power, cap source,
    overrun). A record with a meter not read (``power_w`` NaN, counted as 0 in the station
    power) is kept out and counted in ``dropouts``."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, str, bool]] = []
        self.changed = asyncio.Event()
        self.dropouts = 0

    def __call__(self, event: StationEvent) -> None:
        if isinstance(event, CycleEvent):
            r = event.record
            if not all(math.isfinite(g.power_w) for g in r.guns):
                self.dropouts += 1
                return
            self.samples.append((time.perf_counter(), r.station_power_w, r.cap_source,
                                 r.overrun))
            self.changed.set()

    async def until(self, pred: Any, timeout: float) -> tuple[float, float, str, bool] | None:
        deadline = time.perf_counter() + timeout
        seen = len(self.samples)
        while time.perf_counter() < deadline:
            for s in self.samples[seen:]:
                if pred(s):
                    return s
            seen = len(self.samples)
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), deadline - time.perf_counter())
        return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    truck_params = [TruckParams(name=n, r_internal_ohm=0.0, start_soc_pct=30.0,
                                target_soc_pct=95.0, capacity_kwh=1000.0, id_token=f"T-{n}")
                    for n in ("A", "B")]
    trucks = [TruckSim(p, time.monotonic) for p in truck_params]
    load_v = trucks[0].ocv_v()  # the simulator's battery stand-in matches the truck's voltage
    tmp = Path(tempfile.mkdtemp(prefix="mwc-bench-"))
    # mosquitto cannot bind port 0 and report it: the shared Broker moves to another port
    # when the one it picked is taken before it binds
    broker = Broker(tmp / "mq", mosquitto_binary() or "/usr/sbin/mosquitto")
    await broker.start()
    port = broker.port
    sim, layout = start_simulator(load_v, args.layout)
    try:
        cfg = station_config(layout, args.cycle_ms)
        station = Station(cfg, trucks, clock=time.monotonic)
        mqtt_cfg = MqttConfig(port=port, telemetry_period_s=1.0)
        conn = MqttConnection(mqtt_cfg, STATION_ID)
        telemetry = TelemetryPublisher(conn)
        grid = GridLimitSource(station.limits, conn,
                               fallback_w=cfg.station.fallback_grid_kw * 1000.0, events=telemetry)
        meter = Meter()
        station.subscribe(meter)
        station.subscribe(telemetry.observe)
        await station.start()
        tasks = [asyncio.create_task(c) for c in (station.run(), conn.run(), telemetry.run())]
        try:
            await asyncio.wait_for(conn.wait_connected(), 10)
            for t in trucks:
                t.plug_in()
            async with aiomqtt.Client("127.0.0.1", port, identifier="bench-ems") as ems:

                async def publish(payload: bytes) -> object:
                    if args.direct:  # the same handler, without the broker hop
                        grid.handle(TOPIC, payload)
                    else:
                        await ems.publish(TOPIC, payload, qos=1)
                    return None

                result = await measure(args, publish, meter, station.limits)
            # context for the figures: the cycle's own health while they were taken
            result.update(cycle_overruns=station.overruns, safety_violations=station.violations,
                          wakeups=station.wakeups, confirmations=station.confirmations,
                          telemetry=telemetry.stats())
            return result
        finally:
            station.stop()
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5)
            await station.close()
    finally:
        sim.terminate()
        broker.stop()
        sim.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


Publish = Callable[[bytes], Awaitable[object]]


async def measure(args: argparse.Namespace, publish: Publish, meter: Meter,
                  book: LimitBook) -> dict[str, Any]:
    """Normal limit → full power → lowered limit, ``--repeat`` times; the response times.

    A hit counts only when every meter was read in that cycle, the cycle had the lowered
    limit as its cap (``cap_source``) and the trucks were still charging (power above half
    the lowered limit): a meter dropout is counted as such, never taken for a response.
    """
    normal_kw, low_kw = args.normal_kw, args.normal_kw * args.fraction
    full_w, low_w = 0.97 * normal_kw * 1000, low_kw * 1000

    await publish(limit("normal-0", normal_kw))
    full = await meter.until(lambda s: s[1] >= full_w, timeout=60)
    if full is None:
        raise RuntimeError(f"station never reached full power; last {meter.samples[-1:]}")
    print(f"full power: {full[1] / 1000:.0f} kW ({full[2]})", flush=True)
    times: list[float] = []
    seen_ms: list[float] = []  # publish → the first cycle record carrying the new cap
    handled_ms: list[float] = []  # publish → the limit in the book (broker hop + handler)
    misses = 0
    for i in range(args.repeat):
        await publish(limit(f"normal-{i + 1}", normal_kw))
        for _ in range(20):  # at full power, and still there after settling
            if await meter.until(lambda s: s[1] >= full_w, timeout=20) is None:
                raise RuntimeError("station did not return to full power")
            await asyncio.sleep(args.settle_s)
            if meter.samples[-1][1] >= full_w:
                break
        t0, t0_mono = time.perf_counter(), time.monotonic()
        await publish(limit(f"low-{i + 1}", low_kw))
        source = f"grid:bench:low-{i + 1}"
        hit = await meter.until(lambda s, t0=t0, source=source: s[0] > t0 and s[2] == source
                                and 0.5 * low_w < s[1] <= low_w, timeout=5)
        if hit is None:
            misses += 1
            seen = [(round((t - t0) * 1000), round(p / 1000, 1), src)
                    for t, p, src, _ in meter.samples if t > t0]
            print(f"{i + 1:3d}: no response within 5 s; cycles after the publish "
                  f"(ms, kW, cap source): {seen[:4]} ... {seen[-2:]}", flush=True)
            continue
        ms = (hit[0] - t0) * 1000.0
        times.append(ms)
        window = [s for s in meter.samples if t0 < s[0] <= hit[0]]
        in_cycle = next(s[0] for s in window if s[2] == source)
        seen_ms.append((in_cycle - t0) * 1000.0)
        applied = book.get(STATION, "grid")  # issued_at: when the handler put it in the book
        if applied is not None and applied.source == source:
            handled_ms.append((applied.issued_at - t0_mono) * 1000.0)
        overran = sum(s[3] for s in window)
        print(f"{i + 1:3d}: {ms:6.1f} ms  {hit[1] / 1000:7.1f} kW  {hit[2]}  (in the book after "
              f"{handled_ms[-1] if handled_ms else math.nan:4.1f} ms, in a cycle record after "
              f"{seen_ms[-1]:5.1f} ms; {len(window)} cycles, {overran} overran)", flush=True)
        if ms > args.explain_over_ms:  # where a slow one spent its time
            rows = [(round((t - t0) * 1000), round(p / 1000), src, o) for t, p, src, o in window]
            print(f"     cycle records (ms after publish, kW, cap source, overran): {rows}",
                  flush=True)
    times.sort()
    seen_ms.sort()
    handled_ms.sort()
    return {
        "response_ms_p50": round(statistics.median(times), 1) if times else None,
        "response_ms_p99": round(times[min(len(times) - 1, int(0.99 * len(times)))], 1)
        if times else None,
        "response_ms_max": round(times[-1], 1) if times else None,
        "in_book_ms_p50": round(statistics.median(handled_ms), 2) if handled_ms else None,
        "in_book_ms_max": round(handled_ms[-1], 2) if handled_ms else None,
        "cap_in_record_ms_p50": round(statistics.median(seen_ms), 1) if seen_ms else None,
        "cap_in_record_ms_max": round(seen_ms[-1], 1) if seen_ms else None,
        "repeats": args.repeat, "misses": misses, "cycle_ms": args.cycle_ms,
        "normal_kw": normal_kw, "lowered_kw": round(low_kw, 1),
        "path": "direct (no broker)" if args.direct else "mqtt", "layout": args.layout,
        "meter_dropouts": meter.dropouts, "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--layout", choices=("power_unit", "port_per_device"),
                        default="power_unit", help="register layout of the simulated hardware")
    parser.add_argument("--cycle-ms", type=float, default=100.0)
    parser.add_argument("--normal-kw", type=float, default=1440.0)
    parser.add_argument("--fraction", type=float, default=0.4, help="lowered limit / normal")
    parser.add_argument("--direct", action="store_true",
                        help="hand the payload to the grid source directly (no broker hop), "
                        "to separate MQTT latency from the cycle's")
    parser.add_argument("--explain-over-ms", type=float, default=300.0,
                        help="list the cycle records of responses slower than this")
    parser.add_argument("--settle-s", type=float, default=0.3,
                        help="wait at full power before each lowered limit")
    args = parser.parse_args()
    logs.configure(level="WARNING", stream=sys.stderr)
    result = asyncio.run(run(args))
    print(json.dumps(result))
    return 0 if result["misses"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
