"""Station sub-commands of `mwc` (demo, run, doctor), grown as the rooms land."""

from __future__ import annotations

import argparse
from typing import Any

_DEMO_PLAN = """\
mwc demo will start, on loopback and on a simulated clock:
  - the Modbus simulators: 48 liquid-cooled modules, a 48x2 contactor matrix, two DC meters
  - ocpp_server (the backend) with the station and tokens provisioned
  - a Mosquitto broker and the grid signal publisher
  - two simulated trucks and the controller itself
then run the default scenario and write a report with plots.
The station control cycle is not built yet (see the open issues); nothing was started."""


def _demo(args: argparse.Namespace) -> int:
    print(_DEMO_PLAN)
    return 0


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the whole station against simulated hardware")
    demo.set_defaults(handler=_demo)
