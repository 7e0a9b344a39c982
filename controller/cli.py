"""The `mwc` command line: one entry point, sub-commands registered by each room.

Each room adds its sub-commands through a ``register(subparsers)`` function listed in
``_ROOMS``; a room that is not importable (an optional dependency missing) is skipped, so
`mwc --help` always works.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from controller import logs

# Modules that expose register(subparsers: argparse._SubParsersAction) -> None.
_ROOMS: tuple[str, ...] = (
    "controller.cli_station",
    "controller.doctor",
    "controller.status_cli",
    "sim.cli",
    "ocpp_server.cli",
)
#: Rooms whose dependencies are an optional extra (pyproject): a cabinet PC installs only the
#: controller, and `mwc` still works there without them.
_EXTRAS = {"sim.cli": "sim", "ocpp_server.cli": "csms"}


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Parser(argparse.ArgumentParser):
    """An operator's mistake is one line naming the option and the command, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in _LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown level {value!r} (use one of {', '.join(_LEVELS)})")
    return level


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mwc", description="mwcharge station controller")
    parser.add_argument("--log-level", default="INFO", type=_log_level,
                        help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--log-format", default="auto", choices=["auto", "json", "console"],
        help="log line format (auto: console on a terminal, JSON otherwise)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    missing: list[str] = []
    for name in _ROOMS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # room not built yet
            if name in _EXTRAS:
                missing.append(f"{_EXTRAS[name]} ({exc.name} missing: "
                               f"pip install 'mwcharge[{_EXTRAS[name]}]')")
                continue
            raise
        module.register(sub)
    if missing:
        parser.epilog = "not installed: " + "; ".join(missing)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Logs go to stderr unless the command says otherwise: `mwc run` logs to stdout (journald
    # reads it), `mwc demo` keeps stdout for its summary.
    # (By name: the handler writes to the process's stream of the moment, see logs.configure.)
    stream: logs.StdName = "stdout" if getattr(args, "log_stdout", False) else "stderr"
    logs.configure(level=args.log_level, fmt=args.log_format, stream=stream)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result = handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
