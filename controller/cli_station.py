"""Station sub-commands of `mwc` (`run`; `demo` lives with the simulators in sim/cli.py).

``mwc run --config FILE`` runs the station against the configured hardware until SIGINT or
SIGTERM. A gun whose configuration has ``vehicle = {host, port, unit}`` talks to its SECC
bridge over Modbus TCP (``controller/vehicle_modbus.py``); any other gun gets a never-plugged
link.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from controller.vehicle import VehicleLink, VehicleStatus

if TYPE_CHECKING:
    from controller.config import StationConfig
    from controller.vehicle_modbus import ModbusVehicleLink


class NoVehicleLink:
    """The vehicle link of a gun without an SECC integration: never plugged."""

    def status(self) -> VehicleStatus:
        return VehicleStatus(plugged=False, read_at=time.monotonic())

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def set_available(self, current_a: float, voltage_v: float) -> None:
        pass


def _vehicle_links(cfg: StationConfig) -> tuple[list[VehicleLink], list[ModbusVehicleLink]]:
    """(one link per gun, the Modbus SECC links among them whose I/O the caller runs)."""
    from controller.vehicle_modbus import ModbusVehicleLink

    links: list[VehicleLink] = []
    secc: list[ModbusVehicleLink] = []
    for g in range(len(cfg.guns)):
        ep = cfg.vehicle_endpoint(g)
        if ep is None:
            links.append(NoVehicleLink())
            continue
        link = ModbusVehicleLink(ep, cfg.link_settings(),
                                 clock=time.monotonic, name=f"SECC gun {g}")
        secc.append(link)
        links.append(link)
    return links, secc


async def _run_station(path: str) -> int:
    from controller import logs
    from controller.config import ConfigError, load_config
    from controller.sdnotify import Notifier
    from controller.services import run_services
    from controller.startup import StartupWatch
    from controller.station import Station

    entry_t = time.monotonic()
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"mwc run: {exc}", file=sys.stderr)
        return 2
    logs.register_config_secrets(cfg)  # before anything connects or logs
    logs.bind_context(station=cfg.station.id)  # on every line, libraries' included
    log = logs.get_logger("controller.run", station=cfg.station.id)
    links, secc = _vehicle_links(cfg)
    station = Station(cfg, links)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    notifier = Notifier.from_env()
    station.subscribe(StartupWatch(station, notifier, entry_t).observe)  # READY, WATCHDOG
    try:
        for link in secc:  # (SECC polling runs before the first cycle reads the links)
            await link.start_io()
        await station.start()
        log.info("station running", cycle_ms=cfg.station.cycle_ms)
        await run_services(station, cfg, stop)
    finally:
        notifier.stopping()
        try:
            await station.close()
        finally:
            for link in secc:  # after the station: a STOP to the vehicle goes last
                await link.close()
        notifier.close()
        log.info("station stopped", cycles=station.seq, overruns=station.overruns,
                 violations=station.violations)
    return 0


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(_run_station(args.config))


def _compile(_args: argparse.Namespace) -> int:
    """Fill the numba cache so the service's first start is warm (install, upgrade)."""
    from power import allocator, jit_cache

    seconds = allocator.warm_up()
    print(f"allocator {allocator.jit_source()} in {seconds:.2f} s "
          f"(cache under {jit_cache.base_dir()})")
    return 0


def register(sub: Any) -> None:
    comp = sub.add_parser("compile", help="compile the allocator into NUMBA_CACHE_DIR "
                          "(run once after install or upgrade: the first start is then warm)")
    comp.set_defaults(handler=_compile)
    run = sub.add_parser("run", help="run the station against the configured hardware "
                         "until SIGINT/SIGTERM")
    run.add_argument("--config", required=True, metavar="FILE",
                     help="station configuration (TOML, see deploy/mwc.example.toml)")
    run.set_defaults(handler=_run, log_stdout=True)  # JSON lines on stdout for journald
