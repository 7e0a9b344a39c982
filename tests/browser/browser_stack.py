"""The browser tests' station: everything real, on loopback, in real time.

One stack per test module: the Modbus simulators stepping in real time with two trucks, the
station with its services as `mwc run` wires them (OCPP client, MQTT grid source, live view),
``ocpp_server`` in-process with its operator API and console, a private Mosquitto, and
Debian's chromium driven by Playwright (no browser download: ``executable_path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suite's helper modules

from csms_fixtures import (
    API_TOKEN,
    PASSWORD,
    add_token,
    make_config,
    provision,
    running_csms,
)
from cycle_fixtures import TEST_LINK, small_truck
from cycle_fixtures import make_config as station_cfg
from helpers import eventually, logged, logged_events
from mqtt_fixtures import MOSQUITTO, broker, station_config

from controller.config import WebviewConfig
from controller.ocpp.config import OcppConfig
from controller.services import run_services
from controller.station import Station
from ocpp_server.app import CsmsServer
from power.modbus_driver import Hardware
from sim.modbus_server import StationSimulator
from sim.modules import ModuleParams
from sim.physics import StationPhysics
from sim.truck import TruckSim

CHROMIUM = "/usr/bin/chromium"
MODULES = 12  # 480 kW: both trucks at their 300 A maximum
needs_browser = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) or not os.path.exists(MOSQUITTO),
    reason="chromium or mosquitto missing (make system-deps)")


@dataclass
class Stack:
    station: Station
    trucks: list[TruckSim]
    sim: StationSimulator
    csms: CsmsServer
    broker_port: int
    view_url: str
    console_url: str
    out: Path
    browser: Any = None
    errors: list[str] = field(default_factory=list)

    async def page(self, url: str) -> Any:
        """A new page that records console errors and uncaught exceptions."""
        page = await self.browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on("console", lambda m: self.errors.append(f"{url}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"{url}: {e}"))
        await page.goto(url)
        return page

    async def shot(self, page: Any, name: str) -> Path:
        path = self.out / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async_api = pytest.importorskip("playwright.async_api", reason="playwright not installed")
    async_playwright = async_api.async_playwright

    tmp = tmp_path_factory.mktemp("browser")
    trucks = [TruckSim(small_truck(n, capacity_kwh=400.0, ev_max_current_a=300.0,
                                   start_soc_pct=30.0, target_soc_pct=95.0), time.monotonic)
              for n in ("A", "B")]
    physics = StationPhysics(MODULES, 2, ModuleParams(), loads=trucks)
    sim = StationSimulator(physics, realtime=True)
    with broker(tmp / "mq") as b:
        async with running_csms(make_config(tmp)) as csms:
            await provision(csms, "TEST-1")
            for truck in trucks:  # known to the backend, or it de-authorizes the session
                await add_token(csms, truck.params.id_token)
            await sim.start()
            cfg = station_cfg(MODULES, 2).model_copy(update={
                "mqtt": station_config(b),
                "ocpp": OcppConfig(url=f"ws://127.0.0.1:{csms.ocpp_port}/ocpp",
                                   password=PASSWORD, database=str(tmp / "station.sqlite3"),
                                   sampled_interval_s=1, retry_backoff_wait_minimum_s=0,
                                   retry_backoff_random_range_s=0),
                "webview": WebviewConfig(enabled=True, port=0, rate_hz=5.0)})
            station = Station(cfg, trucks, hardware=Hardware(sim.hardware_config(TEST_LINK),
                                                             time.monotonic))
            stop = asyncio.Event()
            task: asyncio.Task[None] | None = None
            try:
                await station.start()
                with logged_events("controller.webview") as events:  # its bound port
                    task = asyncio.create_task(run_services(station, cfg, stop))
                    view_url = await eventually(
                        lambda: logged(events, "webview_listening", "url"), 20,
                        what="the live view listens")
                async with async_playwright() as pw:
                    browser = await pw.chromium.launch(executable_path=CHROMIUM,
                                                       args=["--no-sandbox"])
                    s = Stack(station, trucks, sim, csms, b.port,
                              view_url,
                              f"http://127.0.0.1:{csms.api_port}/", tmp, browser)
                    await eventually(lambda: csms.session("TEST-1") is not None, 20,
                                     what="the station connects to the CSMS")
                    try:
                        yield s
                    finally:
                        await browser.close()
            finally:
                stop.set()
                if task is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(task, 15)
                await station.close()
                await sim.stop()


__all__ = ["API_TOKEN", "MODULES", "Stack", "needs_browser"]
