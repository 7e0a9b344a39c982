"""``mwc sim …``: the simulator sub-command group.

``register(sub)`` adds the ``sim`` group; its own sub-commands are ``modules`` (serve the
power stage over Modbus TCP until stopped) and ``fault`` (inject a fault into a running
simulator through its control device). Other simulators add their sub-commands to the same
group through ``sim_subparsers``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

from power.modbus_map import SIM_TARGET_ALL, SimCommand
from power.secc_map import SeccSimCommand

#: ``mwc sim fault`` kinds: the simulator's commands and the SECC bridges' (vehicle-plug, …).
_FAULT_KINDS: dict[str, int] = {
    c.name.lower().replace("_", "-"): int(c) for c in (*SimCommand, *SeccSimCommand)
}

_GROUP: dict[str, Any] = {}


def sim_subparsers() -> Any:
    """The ``sim`` group's subparsers action (after ``register``), for other simulators."""
    return _GROUP["sub"]


def register(sub: Any) -> None:
    """Add ``mwc sim`` with its sub-commands to the top-level subparsers ``sub``."""
    group = sub.add_parser("sim", help="simulated hardware (Modbus TCP servers with physics)")
    group_sub = group.add_subparsers(dest="sim_command", metavar="SIM_COMMAND")
    group.set_defaults(handler=lambda _args: (group.print_help(), 2)[1])
    _GROUP["sub"] = group_sub

    p = group_sub.add_parser(
        "modules", help="serve power modules, the contactor matrix and the DC meters",
        description="Port layout: module i on PORT+i (unit 1), matrix on PORT+COUNT (unit 1), "
        "meters on PORT+COUNT+1 (unit g+1), fault control on PORT+COUNT+2, with --trucks the "
        "SECC bridges on PORT+COUNT+3 (unit g+1). "
        "Prints the layout as one JSON line on stdout, then serves until stopped.",
    )
    p.add_argument("--count", type=int, default=48, help="number of power modules")
    p.add_argument("--guns", type=int, default=2, help="number of guns (one meter each)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=15020, help="base port (0: any free ports)")
    p.add_argument("--gateway-port", type=int, default=None,
                   help="also serve every device on this port by unit id")
    p.add_argument("--layout", choices=("port_per_device", "power_unit"),
                   default="port_per_device",
                   help="power_unit: one power-unit device on PORT in front of every module "
                   "and the matrix, meters on PORT+1, control on PORT+2 (docs/modbus-map.md)")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    p.add_argument("--tick-ms", type=float, default=5.0, help="physics step period")
    p.add_argument("--load-voltage", type=float, default=600.0,
                   help="battery stand-in voltage at each gun (V)")
    p.add_argument("--chiller", type=float, default=25.0, help="coolant supply temperature °C")
    p.add_argument("--watchdog-ms", type=int, default=1000, help="module watchdog default")
    p.add_argument("--trucks", default=None, metavar="PRESET,…",
                   help="one simulated truck per gun, served as SECC bridges (presets: "
                   "eactros600, man_mcs, ccs_truck; 'none' for an empty gun); replaces the "
                   "constant-voltage loads")
    p.add_argument("--start-soc", type=float, default=None,
                   help="state of charge of every truck at start, %% (default: preset)")
    p.add_argument("--plugged", action=argparse.BooleanOptionalAction, default=True,
                   help="trucks start plugged in (default); unplug/plug with `mwc sim fault "
                   "vehicle-unplug|vehicle-plug --target GUN`")
    p.set_defaults(handler=_run_modules)

    f = group_sub.add_parser("fault", help="inject or clear a fault in a running simulator")
    f.add_argument("kind", choices=list(_FAULT_KINDS))
    f.add_argument("--target", type=int, default=SIM_TARGET_ALL,
                   help="module, gun, or coil index m*G+g (default: all)")
    f.add_argument("--value", type=int, default=0, help="fault code, volts or °C")
    f.add_argument("--host", default="127.0.0.1")
    f.add_argument("--port", type=int, required=True,
                   help="the simulator's control port (PORT+COUNT+2)")
    f.set_defaults(handler=_run_fault)

    from sim import grid  # the energy manager stand-in: mwc sim grid

    grid.register(sim_subparsers())

    from sim.demo.cli import add_options, register_sim_run, run_scenario

    register_sim_run(sim_subparsers())  # the demo's scenarios: mwc sim run
    # `mwc demo` is a simulator tool exposed at the top level; it lives here so that
    # controller/ never imports sim/ (the controller must run without the simulators).
    demo = sub.add_parser("demo", help="run the whole station against simulated hardware",
                          description="Starts the Modbus simulators, ocpp_server, Mosquitto "
                          "(when installed), the grid signal publisher, two simulated trucks "
                          "and the controller on loopback, runs a scenario on a simulated "
                          "clock and writes a report (see docs/scenarios.md).")
    demo.add_argument("--scenario", default="default",
                      help="bundled scenario name or TOML path (default: default)")
    add_options(demo)
    demo.set_defaults(handler=lambda args: run_scenario(args.scenario, args))


def _trucks(args: argparse.Namespace) -> list[Any] | None:
    """The TruckSims of ``--trucks`` (None per empty gun); raises ValueError naming the bad
    preset or count."""
    import dataclasses

    from sim.truck import PRESETS, TruckSim

    if args.trucks is None:
        return None
    names = [n.strip() for n in args.trucks.split(",")]
    if len(names) > args.guns:
        raise ValueError(f"--trucks lists {len(names)} trucks for {args.guns} guns")
    names += ["none"] * (args.guns - len(names))
    out: list[Any] = []
    for g, name in enumerate(names):
        if name == "none":
            out.append(None)
            continue
        if name not in PRESETS:
            raise ValueError(f"--trucks: unknown preset {name!r} for gun {g} (known: "
                             f"{', '.join(PRESETS)}, none)")
        params = PRESETS[name]
        params = dataclasses.replace(params, id_token=f"{name[:14].upper()}-{g + 1}")
        if args.start_soc is not None:
            params = dataclasses.replace(params, start_soc_pct=args.start_soc)
        truck = TruckSim(params)
        if args.plugged:
            truck.plug_in()
        out.append(truck)
    return out


async def _serve(args: argparse.Namespace) -> int:
    from controller import logs
    from sim.modbus_server import StationSimulator
    from sim.modules import ModuleParams
    from sim.physics import ConstantVoltageLoad, GunLoad, StationPhysics
    from sim.secc_server import serve_trucks

    log = logs.get_logger("sim.modules")
    try:
        trucks = _trucks(args)
    except ValueError as exc:
        print(f"mwc sim modules: {exc}", file=sys.stderr)
        return 2
    loads: list[GunLoad | None] = (
        [ConstantVoltageLoad(args.load_voltage) for _ in range(args.guns)] if trucks is None
        else list(trucks))
    physics = StationPhysics(
        args.count, args.guns, ModuleParams(watchdog_ms=args.watchdog_ms),
        loads=loads, chiller_c=args.chiller,
    )
    if args.layout == "power_unit":
        from sim.power_unit import PowerUnitSimulator

        if args.gateway_port is not None:
            print("mwc sim modules: --gateway-port does not apply to --layout power_unit",
                  file=sys.stderr)
            return 2
        sim: StationSimulator = PowerUnitSimulator(
            physics, host=args.host, base_port=args.port, speed=args.speed,
            tick_s=args.tick_ms / 1000.0)
    else:
        sim = StationSimulator(physics, host=args.host, base_port=args.port,
                               gateway_port=args.gateway_port, speed=args.speed,
                               tick_s=args.tick_ms / 1000.0)
    if trucks is not None:
        serve_trucks(sim, trucks)
    await sim.start()
    layout = sim.describe()
    print(json.dumps(layout), flush=True)
    log.info("simulator serving", **layout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()
        log.info("simulator stopped")
    return 0


def _run_modules(args: argparse.Namespace) -> int:
    if args.count < 1 or args.guns < 1:
        print("mwc sim modules: error: --count and --guns must be at least 1", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args))
    except OSError as exc:  # a port in use: which one, and what uses the range
        print(f"mwc sim modules: error: {exc} (--port {args.port} needs ports {args.port}.."
              f"{args.port + args.count + (3 if args.trucks else 2)} free; is another "
              "simulator running?)", file=sys.stderr)
        return 2


async def send_command(host: str, port: int, command: int, target: int, value: int) -> str:
    """Write one command to a simulator's control device; returns "ok" or the error."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0, reconnect_delay=0)
    try:
        if not await client.connect():
            return f"cannot connect to {host}:{port}"
        reply = await client.write_registers(0, [int(command), target & 0xFFFF, value & 0xFFFF],
                                             device_id=1)
        if reply.isError():
            return f"refused (Modbus exception {reply.exception_code})"
        return "ok"
    finally:
        client.close()


def _run_fault(args: argparse.Namespace) -> int:
    command = _FAULT_KINDS[args.kind]
    result = asyncio.run(send_command(args.host, args.port, command, args.target, args.value))
    print(result)
    return 0 if result == "ok" else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.cli modules …``: the sim group without the other rooms' imports."""
    from controller import logs

    parser = argparse.ArgumentParser(prog="python -m sim.cli")
    parser.add_argument("--log-level", default="INFO")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["--log-level", "INFO", "sim", *(sys.argv[1:] if argv is None
                                                           else argv)])
    logs.configure(level=args.log_level, stream="stderr")
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
