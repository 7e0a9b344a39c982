"""Fuzz every boundary longer than ``make test`` does (issue 15).

    .venv/bin/python bench/fuzz.py                 # 50,000 cases per boundary
    .venv/bin/python bench/fuzz.py --cases 5000 --only csms_v201,csms_rest --seed 7

Boundaries: ``ocpp_server`` (OCPP 2.0.1 and 1.6 frames over websockets, handshake
Authorization headers, REST bodies: ``tests/fuzz/server_boundaries.py``) and the station
(OCPP client against a hostile backend, MQTT grid payloads, configuration files:
``tests/fuzz/station_boundaries.py``, reported as "missing" when that module is absent).
Each runs in this process, one after the other, with the same seeded generators as the tests.
Prints one line per boundary, then, last, JSON
``{boundary: {"cases", "crashes", "internal_errors", "unanswered", "closed", "rss_growth_mb"}}``.
A boundary that raises counts as one crash (its error goes to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

KEYS = ("cases", "crashes", "internal_errors", "unanswered", "closed", "rss_growth_mb")


def _quiet() -> None:
    """Logs to stderr, errors only: stdout carries the figures and the JSON line."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.basicConfig(stream=sys.stderr, level=logging.ERROR)


def boundaries() -> dict[str, Callable[[int, int], Any] | str]:
    """name -> fuzz(cases, seed) (a coroutine function or a plain one), or why it is missing."""
    from fuzz import server_boundaries as sb

    out: dict[str, Callable[[int, int], Any] | str] = {
        "csms_v201": lambda n, s: sb.fuzz_csms(n, s, "2.0.1"),
        "csms_v16": lambda n, s: sb.fuzz_csms(n, s, "1.6"),
        "csms_generic_v201": lambda n, s: sb.fuzz_csms_generic(n, s, "2.0.1"),
        "csms_generic_v16": lambda n, s: sb.fuzz_csms_generic(n, s, "1.6"),
        "csms_handshake": sb.fuzz_handshake,
        "csms_rest": sb.fuzz_rest,
    }
    try:  # the station's half (another helper's module): imported lazily
        from fuzz import station_boundaries as st
    except ImportError as exc:
        for name in ("station_v201", "station_v16", "mqtt", "config"):
            out[name] = f"missing ({exc})"
        return out
    out["station_v201"] = lambda n, s: st.fuzz_station(n, s, "2.0.1")
    out["station_v16"] = lambda n, s: st.fuzz_station(n, s, "1.6")
    out["mqtt"] = getattr(st, "fuzz_mqtt", "missing (no fuzz_mqtt)")
    out["config"] = getattr(st, "fuzz_config", "missing (no fuzz_config)")
    return out


async def run_one(fn: Callable[[int, int], Any], cases: int,
                  seed: int) -> dict[str, Any] | str:
    """The boundary's figures; "missing ..." when one of its fuzz modules does not exist yet.

    Runs with stdout sent to stderr: the code under test may log to stdout.
    """
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = fn(cases, seed)
            if inspect.isawaitable(result):
                result = await result
        return dict(result)
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("fuzz."):
            return f"missing ({exc})"
        traceback.print_exc(file=sys.stderr)
        return {"cases": cases, "crashes": 1, "internal_errors": 0, "unanswered": 0,
                "closed": 0, "rss_growth_mb": 0.0, "error": traceback.format_exc(limit=3)}
    except Exception:
        traceback.print_exc(file=sys.stderr)
        return {"cases": cases, "crashes": 1, "internal_errors": 0, "unanswered": 0,
                "closed": 0, "rss_growth_mb": 0.0, "error": traceback.format_exc(limit=3)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=50_000, help="cases per boundary")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--only", default="", help="comma-separated boundary names")
    args = parser.parse_args()
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    _quiet()
    table = boundaries()
    wanted = [b for b in args.only.split(",") if b] or list(table)
    unknown = [b for b in wanted if b not in table]
    if unknown:
        parser.error(f"unknown boundary {', '.join(unknown)}; known: {', '.join(table)}")
    summary: dict[str, Any] = {}
    for name in wanted:
        fn = table[name]
        if isinstance(fn, str):
            print(f"{name:16s} {fn}", flush=True)
            summary[name] = "missing"
            continue
        t0 = time.perf_counter()
        res = await run_one(fn, args.cases, args.seed)
        took = time.perf_counter() - t0
        if isinstance(res, str):
            print(f"{name:16s} {res}", flush=True)
            summary[name] = "missing"
            continue
        extra = {k: v for k, v in res.items() if k not in KEYS and k != "failures"}
        print(f"{name:16s} {res.get('cases', 0):>7} cases in {took:6.1f} s "
              f"({res.get('cases', 0) / took:,.0f}/s) "
              + " ".join(f"{k}={res.get(k)}" for k in KEYS[1:])
              + (f" {json.dumps(extra)}" if extra else ""), flush=True)
        for failure in res.get("failures", [])[:5]:
            print(f"    {failure}", flush=True)
        summary[name] = {k: res.get(k, 0) for k in KEYS}
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
