"""``mwc sim grid``: a stand-in for the site's energy manager, publishing grid limits.

It reads a limit profile (TOML), works out the limit in force now and publishes it as a grid
limit payload (``docs/mqtt.md``) at a fixed cadence, and at once whenever the value changes,
so a station sees a peak window begin within a tick. Each publication has a new ``id`` and a
``valid_for_s`` longer than the cadence, so a station keeps its limit between publications
and falls back only when the publisher is gone.

Profile keys (all optional except ``normal_kw``)::

    normal_kw = 1440          # the limit outside any window
    source = "sim-ems"
    valid_for_s = 30
    cadence_s = 5
    timezone = "UTC"          # windows are in this zone ("local" for the machine's)
    storage_kw = 0            # defaults for every publication
    site_load_kw = 0
    [[window]]                # a daily window, may wrap midnight
    start = "17:00"
    end = "19:00"
    fraction = 0.4            # of normal_kw; or limit_kw = 576 (storage_kw, site_load_kw too)
    [[step]]                  # seconds after start; the last step reached wins over windows
    at_s = 60
    limit_kw = 300
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import ssl
import sys
import time
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXAMPLE_PROFILE = """\
# Peak shaving: 40 % of the normal 1440 kW from 17:00 to 19:00 UTC, every day.
normal_kw = 1440
source = "sim-ems"
valid_for_s = 30
cadence_s = 5
timezone = "UTC"

[[window]]
start = "17:00"
end = "19:00"
fraction = 0.4
"""


@dataclass(frozen=True, slots=True)
class Setting:
    """A limit with its optional storage and site load (kW); ``label`` says why."""

    limit_kw: float
    storage_kw: float = 0.0
    site_load_kw: float = 0.0
    label: str = "normal"


@dataclass(frozen=True, slots=True)
class Window:
    start: dt.time
    end: dt.time
    setting: Setting

    def contains(self, t: dt.time) -> bool:
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # wraps midnight


@dataclass(frozen=True, slots=True)
class Step:
    at_s: float
    setting: Setting


@dataclass(frozen=True)
class Profile:
    normal: Setting
    source: str = "sim-ems"
    valid_for_s: float = 30.0
    cadence_s: float = 5.0
    tz: dt.tzinfo = dt.UTC
    windows: tuple[Window, ...] = ()
    steps: tuple[Step, ...] = field(default_factory=tuple)

    def setting_at(self, when: dt.datetime, elapsed_s: float) -> Setting:
        """What to publish at wall time ``when``, ``elapsed_s`` after the publisher started."""
        reached = [s for s in self.steps if s.at_s <= elapsed_s]
        if reached:
            return max(reached, key=lambda s: s.at_s).setting
        local = when.astimezone(self.tz).time()
        for w in self.windows:
            if w.contains(local):
                return w.setting
        return self.normal


class ProfileError(ValueError):
    """A profile mistake, with the key and the value."""


def _num(d: dict[str, Any], key: str, default: float, where: str) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ProfileError(f"{where}{key} = {value!r}: expected a number >= 0")
    return float(value)


def _clock(value: Any, where: str) -> dt.time:
    try:
        return dt.time.fromisoformat(str(value))
    except ValueError:
        raise ProfileError(f"{where} = {value!r}: expected a time of day like \"17:00\"") from None


def _setting(d: dict[str, Any], base: Setting, normal_kw: float, where: str,
             label: str) -> Setting:
    if "limit_kw" in d and "fraction" in d:
        raise ProfileError(f"{where}: give limit_kw or fraction, not both")
    if "fraction" in d:
        limit = normal_kw * _num(d, "fraction", 1.0, where)
    else:
        limit = _num(d, "limit_kw", normal_kw, where)
    return Setting(limit, _num(d, "storage_kw", base.storage_kw, where),
                   _num(d, "site_load_kw", base.site_load_kw, where), label)


def parse_profile(data: dict[str, Any]) -> Profile:
    """A :class:`Profile` from parsed TOML; :class:`ProfileError` names the bad key."""
    if "normal_kw" not in data:
        raise ProfileError("normal_kw: missing (the limit outside any window, kW)")
    normal_kw = _num(data, "normal_kw", 0.0, "")
    normal = Setting(normal_kw, _num(data, "storage_kw", 0.0, ""),
                     _num(data, "site_load_kw", 0.0, ""), "normal")
    tz_name = str(data.get("timezone", "UTC"))
    try:
        tz: dt.tzinfo = (dt.datetime.now().astimezone().tzinfo or dt.UTC
                         if tz_name == "local" else zoneinfo.ZoneInfo(tz_name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ProfileError(f"timezone = {tz_name!r}: unknown time zone") from None
    windows = []
    for i, w in enumerate(data.get("window", [])):
        where = f"window[{i}]."
        start, end = _clock(w.get("start"), where + "start"), _clock(w.get("end"), where + "end")
        label = f"window {start:%H:%M}-{end:%H:%M}"
        windows.append(Window(start, end, _setting(w, normal, normal_kw, where, label)))
    steps = []
    for i, s in enumerate(data.get("step", [])):
        where = f"step[{i}]."
        at = _num(s, "at_s", 0.0, where)
        steps.append(Step(at, _setting(s, normal, normal_kw, where, f"step at {at:g} s")))
    valid_for = _num(data, "valid_for_s", 30.0, "")
    cadence = _num(data, "cadence_s", 5.0, "")
    if valid_for <= 0 or cadence <= 0:
        raise ProfileError("valid_for_s and cadence_s must be > 0")
    return Profile(normal, str(data.get("source", "sim-ems")), valid_for, cadence, tz,
                   tuple(windows), tuple(steps))


def load_profile(path: str | Path) -> Profile:
    try:
        return parse_profile(tomllib.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: {exc}") from None


def payload(s: Setting, *, id: str, issued_at: float, valid_for_s: float,
            source: str) -> dict[str, Any]:
    """The grid limit message for setting ``s`` (``docs/schemas/grid-limit.schema.json``)."""
    body: dict[str, Any] = {
        "id": id, "limit_kw": round(s.limit_kw, 3), "valid_for_s": valid_for_s,
        "issued_at": dt.datetime.fromtimestamp(issued_at, dt.UTC)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "source": source,
    }
    if s.storage_kw:
        body["storage_kw"] = round(s.storage_kw, 3)
    if s.site_load_kw:
        body["site_load_kw"] = round(s.site_load_kw, 3)
    return body


async def publish_schedule(profile: Profile, args: argparse.Namespace) -> int:
    """Publish until stopped (or ``--count`` publications); one JSON line per publication."""
    import aiomqtt

    cadence = args.cadence_s or profile.cadence_s
    tls = None
    if args.ca_file or args.tls:
        tls = aiomqtt.TLSParameters(ca_certs=args.ca_file, certfile=args.cert_file,
                                    keyfile=args.key_file, cert_reqs=ssl.CERT_REQUIRED)
    client = aiomqtt.Client(args.host, args.port, username=args.username,
                            password=args.password, tls_params=tls,
                            identifier=f"mwc-sim-grid-{args.station}")
    topic = args.topic or f"mwc/{args.station}/grid/limit"
    start_mono, run_id = time.monotonic(), int(time.time())
    seq, last, last_at = 0, None, -float("inf")
    async with client:
        while args.count == 0 or seq < args.count:
            now_mono, now_wall = time.monotonic(), time.time()
            setting = profile.setting_at(dt.datetime.fromtimestamp(now_wall, dt.UTC),
                                         (now_mono - start_mono) * args.speed)
            if setting != last or now_mono - last_at >= cadence:
                seq += 1
                body = payload(setting, id=f"{profile.source}-{run_id}-{seq}",
                               issued_at=now_wall, valid_for_s=profile.valid_for_s,
                               source=profile.source)
                await client.publish(topic, json.dumps(body).encode(), qos=1)
                print(json.dumps({"topic": topic, "why": setting.label, **body}), flush=True)
                last, last_at = setting, now_mono
            await asyncio.sleep(min(0.1, cadence))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.example_profile:
        print(EXAMPLE_PROFILE, end="")
        return 0
    if not args.station or not args.profile:
        print("mwc sim grid: --station and --profile are required", file=sys.stderr)
        return 2
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        print(f"mwc sim grid: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(publish_schedule(profile, args))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # broker unreachable, TLS mistakes: a message, not a traceback
        print(f"mwc sim grid: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def register(sub: Any) -> None:
    """Add ``grid`` to the ``mwc sim`` group (``sim.cli.sim_subparsers()``)."""
    p = sub.add_parser("grid", help="publish a grid limit schedule over MQTT (an energy manager)",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--station", help="station id (topic mwc/<station>/grid/limit)")
    p.add_argument("--profile", help="limit profile, TOML (see --example-profile)")
    p.add_argument("--example-profile", action="store_true", help="print an example and exit")
    p.add_argument("--topic", default=None, help="publish here instead (e.g. a site topic)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username", default=None)
    p.add_argument("--password", default=None)
    p.add_argument("--tls", action="store_true", help="TLS with the system trust store")
    p.add_argument("--ca-file", default=None)
    p.add_argument("--cert-file", default=None)
    p.add_argument("--key-file", default=None)
    p.add_argument("--cadence-s", type=float, default=None, help="override the profile's")
    p.add_argument("--speed", type=float, default=1.0,
                   help="profile seconds per real second for [[step]] schedules")
    p.add_argument("--count", type=int, default=0, help="stop after N publications (0: never)")
    p.set_defaults(handler=_run)
