"""What one open live-view page costs a running station (issue 18: < 1 % of a core).

A 48-module, 2-gun station on the Modbus simulators (in real time, in this process) charges
two trucks in its run loop, and the live view on at 5 Hz (as `mwc run` starts it). Two
windows of ``WINDOW_S`` each: no page open, then one page (a `curl -N` on ``/events`` in its
own process, so the reader's CPU is not counted). Per window: this process's CPU time per
second (station + simulators + view) and the cycle's mean work time; the pusher's own time
(build + encode, ``LiveView.push_s``) is the direct figure. Prints the figures, JSON last.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

WINDOW_S = 10.0
RATE_HZ = 5.0


async def main() -> dict[str, float]:
    from cycle_fixtures import TEST_LINK, make_config, small_truck

    from controller.config import WebviewConfig
    from controller.station import CycleEvent, Station, StationEvent
    from controller.webview import start_webview
    from power.modbus_driver import Hardware
    from sim.modbus_server import StationSimulator
    from sim.modules import ModuleParams
    from sim.physics import StationPhysics
    from sim.truck import TruckSim

    trucks = [TruckSim(small_truck(n, capacity_kwh=600.0, start_soc_pct=20.0,
                                   target_soc_pct=95.0), time.monotonic) for n in "AB"]
    for t in trucks:
        t.plug_in()
    sim = StationSimulator(StationPhysics(48, 2, ModuleParams(), loads=trucks), realtime=True)
    await sim.start()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cfg = make_config(48, 2).model_copy(update={"webview": WebviewConfig(
        enabled=True, port=port, rate_hz=RATE_HZ)})
    station = Station(cfg, trucks, hardware=Hardware(sim.hardware_config(TEST_LINK),
                                                     time.monotonic))
    work: list[float] = []

    def note(ev: StationEvent) -> None:
        if isinstance(ev, CycleEvent):
            work.append(ev.record.work_ms)

    station.subscribe(note)
    await station.start()
    stop = asyncio.Event()
    view = await start_webview(station, cfg.webview)
    assert view is not None
    task = asyncio.create_task(station.run(stop))
    await asyncio.sleep(5.0)  # sessions start, currents settle

    async def window() -> tuple[float, float]:
        work.clear()
        c0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(WINDOW_S)
        cpu = (time.process_time() - c0) / (time.monotonic() - t0)
        return cpu, sum(work) / max(1, len(work))

    idle_cpu, idle_work = await window()
    curl = shutil.which("curl")
    reader = subprocess.Popen([curl or "curl", "-sN", f"http://127.0.0.1:{port}/events"],
                              stdout=subprocess.DEVNULL)
    await asyncio.sleep(1.0)
    view.push_s, view.pushes = 0.0, 0
    t_open = time.monotonic()
    open_cpu, open_work = await window()
    push_share = view.push_s / (time.monotonic() - t_open)
    pushes = view.pushes
    reader.terminate()
    reader.wait()
    stop.set()
    await asyncio.wait_for(task, 15)
    await view.close()
    await station.close()
    await sim.stop()
    figures = {
        "cpu_no_page_pct": round(idle_cpu * 100, 2), "cpu_one_page_pct": round(open_cpu * 100, 2),
        "cpu_added_pct": round((open_cpu - idle_cpu) * 100, 2),
        "cycle_work_ms_no_page": round(idle_work, 3),
        "cycle_work_ms_one_page": round(open_work, 3),
        "push_cost_pct": round(push_share * 100, 3), "pushes": float(pushes),
    }
    return figures


if __name__ == "__main__":
    got = asyncio.run(main())
    print(f"process CPU without a page: {got['cpu_no_page_pct']} % of a core; with one page "
          f"at {RATE_HZ:g} Hz: {got['cpu_one_page_pct']} % (added {got['cpu_added_pct']} %)")
    print(f"cycle work: {got['cycle_work_ms_no_page']} ms without, "
          f"{got['cycle_work_ms_one_page']} ms with the page")
    print(f"pushes: {got['push_cost_pct']} % of a core ({got['pushes']:g} pushes measured)")
    print(json.dumps(got))
