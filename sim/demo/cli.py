"""Command line of the demo: ``mwc demo`` and ``mwc sim run <scenario>`` share these options."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import sys
from pathlib import Path
from typing import Any


def _number(minimum: float, inclusive: bool) -> Any:
    """An argparse type: a finite float ≥ (or >) ``minimum``; the error names the bound."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = f"≥ {minimum:g}" if inclusive else f"> {minimum:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {bound})")
        return value
    return parse


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speed", type=_number(0.0, inclusive=True), default=None,
                   help="simulated seconds per wall second (default: the scenario's; 0 = as "
                   "fast as the lockstep goes)")
    p.add_argument("--out", default=None, help="report directory (default ./out/<timestamp>/)")
    p.add_argument("--no-mqtt", action="store_true",
                   help="feed the grid schedule in-process even when mosquitto is installed")
    p.add_argument("--no-backend", action="store_true", help="do not start ocpp_server")
    p.add_argument("--quiet", action="store_true", help="no live lines (summary only)")
    p.add_argument("--shorten", type=_number(0.0, inclusive=False), default=1.0,
                   help="scale batteries and event times by this factor (CI: e.g. 0.25)")
    p.add_argument("--layout", choices=("port_per_device", "power_unit"),
                   default="port_per_device",
                   help="register layout of the simulated hardware (docs/modbus-map.md)")
    p.add_argument("--log-file", default=None,
                   help="structured logs go here (default: <out>/mwc.log)")


def run_scenario(name: str, args: argparse.Namespace) -> int:
    from controller import logs
    from sim.demo import report
    from sim.demo.runner import Options, run
    from sim.demo.scenario import ScenarioError, load_scenario

    try:
        sc = load_scenario(name)
    except ScenarioError as exc:
        print(f"mwc: {exc}", file=sys.stderr)
        return 2
    from sim.demo import chaos

    if chaos.is_chaos(sc):  # real processes on the real clock (sim/demo/chaos.py)
        return chaos.main(sc, args)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("out") / stamp
    log_path = Path(args.log_file) if args.log_file else out / "mwc.log"
    try:
        out.mkdir(parents=True, exist_ok=True)
        log_stream: Any = log_path.open("a", encoding="utf-8")
    except FileExistsError:
        print(f"mwc: error: --out {out}: exists and is not a directory", file=sys.stderr)
        return 2
    except OSError as exc:
        what = "--log-file" if args.log_file and exc.filename == str(log_path) else "--out"
        print(f"mwc: error: {what} {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    logs.configure(level="INFO", stream=log_stream)
    opts = Options(speed=args.speed, out=out, use_mqtt=not args.no_mqtt,
                   use_backend=not args.no_backend, live=not args.quiet,
                   shorten=args.shorten, layout=getattr(args, "layout", "port_per_device"))
    print(f"mwc demo: scenario {sc.name!r} — {sc.description}")
    print(f"  logs: {log_path}")
    try:
        state = asyncio.run(run(sc, opts))
    finally:
        logs.configure(level="INFO", stream="stderr")  # off the file before it is closed
        log_stream.close()
    import json

    rep = json.loads((out / "report.json").read_text())
    report.print_summary(rep, out)
    failed = [k for k, v in rep["checks"].items() if v["verdict"] == "fail"]
    if state.interrupted:
        return 130
    return 1 if failed else 0


def register_sim_run(sub: Any) -> None:
    """``mwc sim run <scenario>`` (added to the sim group by ``sim.cli``)."""
    from sim.demo.scenario import bundled

    p = sub.add_parser("run", help="run a demo scenario (sim/scenarios/*.toml or a path)",
                       description=f"Bundled scenarios: {', '.join(bundled())}.")
    p.add_argument("scenario", help="bundled scenario name or path to a TOML file")
    add_options(p)
    p.set_defaults(handler=lambda args: run_scenario(args.scenario, args))
