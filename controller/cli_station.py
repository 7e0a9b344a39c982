"""Station sub-commands of `mwc` (`run`; `demo` lives with the simulators in sim/cli.py).

``mwc run --config FILE`` runs the station against the configured hardware until SIGINT or
SIGTERM. The vehicle side has no SECC integration yet: every gun gets a never-plugged link.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import Any

from controller.vehicle import VehicleStatus


class NoVehicleLink:
    """The vehicle link of a gun without an SECC integration yet: never plugged."""

    def status(self) -> VehicleStatus:
        return VehicleStatus(plugged=False, read_at=time.monotonic())

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def set_available(self, current_a: float, voltage_v: float) -> None:
        pass


async def _run_station(path: str) -> int:
    from controller import logs
    from controller.config import ConfigError, load_config
    from controller.services import run_services
    from controller.station import Station

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"mwc run: {exc}", file=sys.stderr)
        return 2
    log = logs.get_logger("controller.run", station=cfg.station.id)
    station = Station(cfg, [NoVehicleLink() for _ in cfg.guns])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await station.start()
        log.info("station running", cycle_ms=cfg.station.cycle_ms)
        await run_services(station, cfg, stop)
    finally:
        await station.close()
        log.info("station stopped", cycles=station.seq, overruns=station.overruns,
                 violations=station.violations)
    return 0


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(_run_station(args.config))


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run the station against the configured hardware "
                         "until SIGINT/SIGTERM")
    run.add_argument("--config", required=True, metavar="FILE",
                     help="station configuration (TOML, see deploy/mwc.example.toml)")
    run.set_defaults(handler=_run)
