"""`mwc status`: the live view in a terminal (a refreshing table; ``--once --json`` for
scripts).

Why it reads the live view's ``/api/state`` rather than the station itself: the station runs
in another process (``mwc run``), and the live view is its one read-only window, with the
same numbers (guns and modules from 1) and the same token when the LAN is allowed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx

CLEAR = "\x1b[H\x1b[2J"


def _f(v: Any, nd: int = 0, scale: float = 1.0) -> str:
    return "–" if v is None else f"{float(v) / scale:.{nd}f}"


def render_table(snap: dict[str, Any] | None) -> str:
    """The snapshot as plain text lines (no colour: fit for a log or a serial console)."""
    if snap is None:
        return "the station has not completed a cycle yet\n"
    st = snap["station"]
    out = [f"{snap['station_id']}  {snap['wall_time']}  cycle #{snap['seq']} "
           f"({_f(snap['work_ms'], 1)} ms)",
           f"station {_f(st['power_w'], 1, 1000)} kW of cap {_f(st['cap_w'], 1, 1000)} kW "
           f"from {st['cap_source']} (expires in {_f(st['cap_expires_in_s'], 0)} s), "
           f"headroom {_f(st['headroom_w'], 1, 1000)} kW", ""]
    head = (f"{'gun':>3} {'state':<14} {'V':>6} {'A':>6} {'kW':>7} {'kWh':>7} {'SoC':>5} "
            f"{'req A':>6}  binding")
    out.append(head)
    out.append("-" * len(head))
    for g in snap["guns"]:
        exp = g["binding_expires_in_s"]
        out.append(
            f"{g['n']:>3} {g['state']:<14} {_f(g['voltage_v']):>6} {_f(g['current_a']):>6} "
            f"{_f(g['power_w'], 1, 1000):>7} {_f(g['session_energy_wh'], 2, 1000):>7} "
            f"{_f(g['soc_pct'], 1):>5} {_f(g['request_a']):>6}  {g['binding']} "
            f"({g['binding_source']}" + (f", {exp:.0f} s left)" if exp is not None else ")"))
    out.append("")
    tiles = []
    for m in snap["modules"]:
        mark = "F" if m["fault"] else ("d" if m["derated"] else ("~" if m["draining"] else ""))
        where = f"g{m['gun']}" if m["gun"] else "--"
        tiles.append(f"{m['n']:>3}:{where}{mark:<1}{_f(m['current_a']):>4}A")
    for i in range(0, len(tiles), 8):
        out.append("  ".join(tiles[i:i + 8]))
    out.append("(F fault, d derated, ~ draining)")
    faults = [m for m in snap["modules"] if m["fault"]]
    for m in faults:
        out.append(f"module {m['n']}: {m['fault']}")
    if snap["events"]:
        out.append("")
        for e in snap["events"][-5:]:
            gun = f"gun {e['gun']}: " if e["gun"] else ""
            out.append(f"{e['wall_time'][11:19]} {gun}{e['text']}")
    return "\n".join(out) + "\n"


def _url(args: argparse.Namespace) -> tuple[str, str | None, Any]:
    """(base URL, token, TLS verify) from ``--url`` or the station's ``[webview]``."""
    if args.url:
        return args.url.rstrip("/"), args.token, args.cafile or True
    from controller.config import load_config

    cfg = load_config(args.config).webview
    if not cfg.enabled:
        raise SystemExit(f"mwc status: [webview] is not enabled in {args.config}: "
                         "set webview.enabled = true (the live view is what it reads)")
    scheme = "https" if cfg.certfile else "http"
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{cfg.port}", args.token or cfg.token, args.cafile or True


def fetch(base: str, token: str | None, verify: Any, timeout: float = 5.0) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.get(f"{base}/api/state", headers=headers, timeout=timeout, verify=verify)
    if resp.status_code == 401:
        raise RuntimeError("the live view wants a token: --token or webview.token")
    resp.raise_for_status()
    doc: dict[str, Any] = resp.json()
    return doc


def _status(args: argparse.Namespace) -> int:
    from controller.config import ConfigError

    try:
        base, token, verify = _url(args)
    except ConfigError as exc:
        print(f"mwc status: {exc}", file=sys.stderr)
        return 2
    while True:
        try:
            snap = fetch(base, token, verify)["snapshot"]
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            print(f"mwc status: live view at {base} not readable ({exc}); is `mwc run` "
                  "running with [webview] enabled?", file=sys.stderr)
            if args.once:
                return 1
            time.sleep(args.interval)
            continue
        if args.json:
            print(json.dumps(snap, indent=None if not args.once else 2))
        else:
            sys.stdout.write(("" if args.once else CLEAR) + render_table(snap))
        sys.stdout.flush()
        if args.once:
            return 0
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def _interval(text: str) -> float:
    v = float(text)
    if not 0.2 <= v <= 60:
        raise argparse.ArgumentTypeError(f"--interval {text}: give 0.2 to 60 seconds")
    return v


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="the live view in the terminal (refreshing table; "
                       "--once --json for scripts)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="FILE", help="station configuration: its [webview]")
    src.add_argument("--url", help="the live view's address, e.g. http://127.0.0.1:8088")
    p.add_argument("--token", help="bearer token (default: webview.token of the config)")
    p.add_argument("--cafile", help="CA certificate of the live view's TLS certificate")
    p.add_argument("--once", action="store_true", help="print once and exit")
    p.add_argument("--json", action="store_true", help="the snapshot as JSON")
    p.add_argument("--interval", type=_interval, default=1.0, help="refresh period (s)")

    def handler(args: argparse.Namespace) -> int:
        try:
            return _status(args)
        except KeyboardInterrupt:
            return 0

    p.set_defaults(handler=handler)
