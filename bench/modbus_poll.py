"""Benchmark: one full poll of 48 modules + matrix + 2 meters against the simulator.

The simulator runs as its own process (``mwc sim modules``), as on a cabinet where the devices
are elsewhere; ``--in-process`` runs it in the same event loop instead. Prints p50/p99 over
``--polls`` back-to-back polls, the last line as JSON:
``{"poll_ms_p50": …, "poll_ms_p99": …, "devices": …}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time

from power.modbus_base import DeviceEndpoint, LinkSettings
from power.modbus_driver import Hardware, HardwareConfig


def _config(layout: dict[str, object], link: LinkSettings) -> HardwareConfig:
    host = str(layout["host"])
    modules = layout["modules"]
    matrix = layout["matrix"]
    meters = layout["meters"]
    assert isinstance(modules, dict) and isinstance(matrix, dict) and isinstance(meters, dict)
    return HardwareConfig(
        tuple(DeviceEndpoint(host, int(p)) for p in modules["ports"]),
        DeviceEndpoint(host, int(matrix["port"])),
        tuple(DeviceEndpoint(host, int(meters["port"]), int(u)) for u in meters["units"]),
        link,
    )


async def _measure(cfg: HardwareConfig, polls: int) -> list[float]:
    async with Hardware(cfg) as hw:
        for _ in range(20):  # warm-up: connects, rating reads
            await hw.poll_all()
        times: list[float] = []
        bad = 0
        for _ in range(polls):
            t0 = time.perf_counter()
            snap = await hw.poll_all()
            times.append((time.perf_counter() - t0) * 1000.0)
            bad += len(snap.unavailable) > 0
        if bad:
            print(f"warning: {bad} polls had unavailable devices", file=sys.stderr)
    return times


async def main(args: argparse.Namespace) -> dict[str, float | int]:
    link = LinkSettings(timeout_s=0.08)
    proc = None
    sim = None
    if args.in_process:
        from sim.modbus_server import StationSimulator
        from sim.physics import StationPhysics

        sim = StationSimulator(StationPhysics(args.count, args.guns))
        await sim.start()
        layout = sim.describe()
    else:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sim.cli", "modules",
            "--count", str(args.count), "--guns", str(args.guns), "--port", "0",
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        layout = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
    try:
        times = await _measure(_config(layout, link), args.polls)
    finally:
        if sim is not None:
            await sim.stop()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    times.sort()
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, round(0.99 * len(times)) - 1)]
    devices = args.count + 1 + args.guns
    print(f"{args.polls} polls of {devices} devices ({args.count} modules, matrix, "
          f"{args.guns} meters), simulator {'in-process' if args.in_process else 'subprocess'}")
    print(f"min {times[0]:.2f} ms  p50 {p50:.2f} ms  p99 {p99:.2f} ms  max {times[-1]:.2f} ms")
    return {"poll_ms_p50": round(p50, 3), "poll_ms_p99": round(p99, 3), "devices": devices}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--guns", type=int, default=2)
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--in-process", action="store_true")
    from controller import logs

    logs.configure(level="WARNING", fmt="console", stream=sys.stderr)
    result = asyncio.run(main(parser.parse_args()))
    print(json.dumps(result))
