"""`mwc doctor --config FILE`: commissioning checks, one table of PASS/FAIL/SKIP.

Why: a cabinet is commissioned by someone with a laptop and a checklist. The doctor runs with
the controller stopped and answers in seconds whether the configuration is valid, every
Modbus device answers (with its rating and firmware), the contactor matrix feedback agrees
with its coils, and the broker and the backend accept the station's credentials — with the
reason for each failure. It only reads: no setpoint, no coil, no BootNotification.

Exit code 0 when every row is PASS or SKIP, 1 on any FAIL, 2 when the configuration is
invalid (then nothing else is tried). See ``docs/commissioning.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from controller import logs
from controller.config import ConfigError, StationConfig, load_config
from controller.doctor_checks import (
    CheckFailed,
    check_matrix,
    check_meter,
    check_module,
    check_mqtt,
    check_ocpp,
    check_vehicle,
    endpoint_label,
    stored_password,
)
from controller.doctor_power_unit import check_power_unit
from power.modbus_base import LinkSettings
from power.modbus_driver import HardwareConfig
from power.power_unit import PowerUnitConfig

Status = Literal["PASS", "FAIL", "SKIP"]

#: Per-check limit (``--timeout``); a Modbus request gets at most a quarter of it (``_link``).
DEFAULT_TIMEOUT_S = 5.0
EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One row of the table."""

    name: str
    status: Status
    detail: str
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Report:
    rows: list[CheckResult]
    seconds: float

    @property
    def exit_code(self) -> int:
        if self.rows and self.rows[0].name == "config" and self.rows[0].status == "FAIL":
            return EXIT_CONFIG
        return EXIT_FAIL if any(r.status == "FAIL" for r in self.rows) else EXIT_OK

    def count(self, status: Status) -> int:
        return sum(r.status == status for r in self.rows)


def one_line(text: str) -> str:
    """A multi-line message (a ConfigError lists one mistake a line) as one table cell."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {'; '.join(lines[1:])}"
    return "; ".join(lines)


async def _timed(name: str, check: Callable[[], Awaitable[str]], timeout_s: float
                 ) -> CheckResult:
    """Run one check under its own deadline; every outcome becomes a row, never a raise."""
    t0 = time.monotonic()
    status: Status = "FAIL"
    try:
        async with asyncio.timeout(timeout_s):
            detail = await check()
        status = "PASS"
    except CheckFailed as exc:
        detail = str(exc)
    except TimeoutError:
        detail = f"no result within {timeout_s:g} s (--timeout)"
    except Exception as exc:  # a surprise must cost one row, not the whole table
        detail = f"unexpected error: {exc!r}"
    return CheckResult(name, status, one_line(logs.scrub(detail)), time.monotonic() - t0)


def _link(cfg: StationConfig, timeout_s: float) -> LinkSettings:
    """The doctor's Modbus timing: the configured one, but patient enough for a first
    connect over a commissioning laptop's network (reachability, not cycle latency)."""
    link = cfg.link_settings()
    request = min(max(link.timeout_s, 0.5), max(timeout_s / 4, 0.05), 1.0)
    return LinkSettings(timeout_s=request, poll_budget_s=request * 3, max_missed=1,
                        heartbeat_stale_polls=0)


def _config_summary(cfg: StationConfig) -> str:
    parts = [f"station {cfg.station.id}: {cfg.modules.count} modules, {len(cfg.guns)} guns"]
    parts.append(f"mqtt {cfg.mqtt.host}:{cfg.mqtt.port}" if cfg.mqtt else "no [mqtt]")
    if cfg.ocpp is not None:
        parts.append(f"ocpp {cfg.ocpp.version} profile {cfg.ocpp.security_profile}")
    else:
        parts.append("no [ocpp]")
    return ", ".join(parts)


async def run_checks(cfg: StationConfig, timeout_s: float = DEFAULT_TIMEOUT_S
                     ) -> list[CheckResult]:
    """Every check of a valid configuration, concurrently; rows in table order."""
    hw = cfg.hardware_config()
    link = _link(cfg, timeout_s)
    station_id = cfg.station.id
    jobs: list[tuple[str, Callable[[], Awaitable[str]] | None]] = []
    if isinstance(hw, PowerUnitConfig):  # one device: the unit, its modules and matrix
        jobs.append((f"power unit ({endpoint_label(hw.unit)})",
                     functools.partial(check_power_unit, hw, link, cfg.modules)))
    for i, ep in enumerate(() if isinstance(hw, PowerUnitConfig) else hw.modules):
        jobs.append((f"module {i + 1} ({endpoint_label(ep)})",
                     functools.partial(check_module, i, ep, link, cfg.modules)))
    if isinstance(hw, HardwareConfig):
        mx = hw
        jobs.append((f"matrix feedback ({endpoint_label(hw.matrix)})",
                     lambda: check_matrix(len(mx.modules), mx.guns, mx.matrix, link)))
    for g, ep in enumerate(hw.meters):
        jobs.append((f"meter gun {g + 1} ({endpoint_label(ep)})",
                     functools.partial(check_meter, g, ep, link)))
    for g in range(len(cfg.guns)):
        secc = cfg.vehicle_endpoint(g)
        if secc is not None:
            jobs.append((f"vehicle link gun {g + 1} ({endpoint_label(secc)})",
                         functools.partial(check_vehicle, g, secc, link)))
    mqtt, ocpp = cfg.mqtt, cfg.ocpp
    jobs.append(("mqtt broker", None if mqtt is None else lambda: check_mqtt(mqtt, station_id)))
    ocpp_id = (ocpp.station_id if ocpp is not None else None) or station_id
    jobs.append(("ocpp backend", None if ocpp is None
                 else lambda: check_ocpp(ocpp, ocpp_id, timeout_s * 0.8)))
    tasks = [asyncio.create_task(_timed(name, job, timeout_s)) for name, job in jobs
             if job is not None]
    done = iter(await asyncio.gather(*tasks))
    rows = []
    for name, job in jobs:
        if job is None:
            section = name.split()[0]
            rows.append(CheckResult(name, "SKIP", f"no [{section}] section in the configuration"))
        else:
            rows.append(next(done))
    return rows


async def diagnose(path: str | Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> Report:
    """Validate the configuration, then (only if valid) run every check."""
    t0 = time.monotonic()
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return Report([CheckResult("config", "FAIL", one_line(logs.scrub(str(exc))))],
                      time.monotonic() - t0)
    logs.register_config_secrets(cfg)
    if cfg.ocpp is not None:
        with contextlib.suppress(CheckFailed):  # (the ocpp row reports an unreadable one)
            # a password the backend set must not be printed either
            logs.add_secret(stored_password(cfg.ocpp.database, cfg.ocpp.version),
                            user=cfg.ocpp.station_id or cfg.station.id)
    rows = [CheckResult("config", "PASS", _config_summary(cfg), time.monotonic() - t0)]
    rows += await run_checks(cfg, timeout_s)
    return Report(rows, time.monotonic() - t0)


# --------------------------------------------------------------------------- output
def render_table(report: Report) -> str:
    width = max(len("CHECK"), *(len(r.name) for r in report.rows))
    lines = [f"{'CHECK':<{width}}  STATUS  DETAIL"]
    lines += [f"{r.name:<{width}}  {r.status:<6}  {r.detail}" for r in report.rows]
    lines.append(f"doctor: {len(report.rows)} checks, {report.count('PASS')} PASS, "
                 f"{report.count('FAIL')} FAIL, {report.count('SKIP')} SKIP in "
                 f"{report.seconds:.2f} s; exit code {report.exit_code}")
    return "\n".join(lines)


def render_json(report: Report) -> str:
    body: dict[str, Any] = {"exit_code": report.exit_code, "seconds": round(report.seconds, 3),
                            "checks": [asdict(r) | {"seconds": round(r.seconds, 3)}
                                       for r in report.rows]}
    return json.dumps(body, ensure_ascii=False, indent=2)


def _run(args: argparse.Namespace) -> int:
    # Every failure is a row of the table: the libraries' own warnings (pymodbus says
    # "Failed to connect" per device) would only interleave with it on a terminal.
    for name in logs.FOLDED_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    report = asyncio.run(diagnose(args.config, args.timeout))
    out = render_json(report) if args.json else render_table(report)
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
    return report.exit_code


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="commissioning checks: configuration, Modbus devices, "
                       "contactor feedback, broker and backend (read-only)")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="station configuration (TOML, see deploy/mwc.example.toml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"limit of each check in seconds (default {DEFAULT_TIMEOUT_S:g})")
    p.set_defaults(handler=_run)
