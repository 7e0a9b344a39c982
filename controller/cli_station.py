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
import json
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from controller.vehicle import VehicleLink, VehicleStatus

if TYPE_CHECKING:
    from controller.config import StationConfig
    from controller.control_socket import ControlServer
    from controller.station import Station
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
    logs.set_fold_interval(cfg.station.log_fold_s)
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
    feeder = asyncio.create_task(_feed_watchdog(notifier, stop))
    control: ControlServer | None = None
    try:
        for link in secc:  # (SECC polling runs before the first cycle reads the links)
            await link.start_io()
        await station.start()
        control = await _start_control(station, cfg)
        log.info("station running", cycle_ms=cfg.station.cycle_ms)
        await run_services(station, cfg, stop)
    finally:
        notifier.stopping()
        if control is not None:
            await control.close()
        stop.set()  # (also on an error: the watchdog is fed while the hardware is made safe)
        try:
            await station.close()  # the stop sequence: up to drain_timeout_s
        finally:
            feeder.cancel()
            for link in secc:  # after the station: a STOP to the vehicle goes last
                await link.close()
        notifier.close()
        log.info("station stopped", cycles=station.seq, overruns=station.overruns,
                 violations=station.violations)
    report = station.stop_report
    return 0 if report is not None and report.ok else 1  # (the error line says what not)


async def _feed_watchdog(notifier: Any, stop: asyncio.Event) -> None:
    """systemd's watchdog stays armed while the unit stops (WatchdogSec=2s), and from the
    signal on no cycle feeds it, while the OCPP close and the stop sequence (drain_timeout_s,
    3 s) may take longer: feed it from ``stop`` until the hardware is safe, so the drain is
    never cut short by the watchdog's SIGABRT (TimeoutStopSec still bounds it)."""
    await stop.wait()
    while True:
        notifier.watchdog()
        await asyncio.sleep(0.5)


async def _start_control(station: Station, cfg: StationConfig) -> ControlServer | None:
    """The local control socket (`mwc clear-fault`); one that cannot be bound is logged and
    the station runs on without it (docs/commissioning.md)."""
    if not cfg.control.enabled:
        return None
    from controller import logs
    from controller.control_socket import ControlError, ControlServer

    server = ControlServer(station, cfg.control.socket)
    try:
        await server.start()
    except ControlError as exc:
        logs.get_logger("controller.run").warning("control socket not started: mwc clear-fault "
                                                "will not reach this controller",
                                                error=str(exc))
        return None
    return server


def _clear_fault(args: argparse.Namespace) -> int:
    """`mwc clear-fault --gun N`: acknowledge gun N's latched fault in the running controller."""
    from controller.control_socket import DEFAULT_SOCKET, ControlError, request

    path = args.socket
    if path is None and args.config is not None:
        from controller.config import ConfigError, load_config

        try:
            path = load_config(args.config).control.socket
        except ConfigError as exc:
            print(f"mwc clear-fault: {exc}", file=sys.stderr)
            return 2
    try:
        ask = ({"command": "clear-fault", "gun": args.gun} if args.module is None
               else {"command": "clear-module", "module": args.module})
        reply = asyncio.run(request(path or DEFAULT_SOCKET, ask))
    except ControlError as exc:
        print(f"mwc clear-fault: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(reply))
    else:
        print(reply.get("message") or reply.get("error") or reply)
    if not reply.get("ok"):
        return 2
    return 0 if reply.get("cleared") else 1


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
    clear = sub.add_parser("clear-fault", help="acknowledge a gun's latched fault in the running "
                           "controller (over its control socket; no restart)")
    which = clear.add_mutually_exclusive_group(required=True)
    which.add_argument("--gun", type=int, metavar="N",
                       help="gun number from 1 (as on the cabinet, in `mwc doctor` and OCPP)")
    which.add_argument("--module", type=int, metavar="N",
                       help="module number from 1: give a module the fault-reset policy gave "
                            "up on its resets back")
    clear.add_argument("--config", default=None, metavar="FILE",
                       help="take control.socket from this configuration")
    clear.add_argument("--socket", default=None, metavar="PATH",
                       help="the control socket (default: /run/mwcharge/control.sock)")
    clear.add_argument("--json", action="store_true", help="print the reply as JSON")
    clear.set_defaults(handler=_clear_fault)
