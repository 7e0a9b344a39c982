"""``mwc sim grid``: the profile, the payloads it publishes, and a run against a broker."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import jsonschema
import pytest

from controller.grid import Accepted, RecentIds, evaluate
from sim.grid import EXAMPLE_PROFILE, ProfileError, parse_profile, payload
from tests.mqtt_fixtures import Listener, broker, eventually, needs_mosquitto

ROOT = Path(__file__).parent.parent
SCHEMA = json.loads((ROOT / "docs/schemas/grid-limit.schema.json").read_text())


def at(hh: int, mm: int) -> dt.datetime:
    return dt.datetime(2026, 11, 27, hh, mm, tzinfo=dt.UTC)


def test_example_profile_peak_window_at_40_percent() -> None:
    p = parse_profile(tomllib.loads(EXAMPLE_PROFILE))
    assert p.setting_at(at(16, 59), 0).limit_kw == 1440
    assert p.setting_at(at(17, 0), 0).limit_kw == pytest.approx(576)
    assert p.setting_at(at(18, 59), 0).label == "window 17:00-19:00"
    assert p.setting_at(at(19, 0), 0).limit_kw == 1440


def test_window_across_midnight_steps_and_storage() -> None:
    p = parse_profile({"normal_kw": 1000, "storage_kw": 50, "timezone": "Europe/Berlin",
                       "window": [{"start": "22:00", "end": "06:00", "limit_kw": 800,
                                   "site_load_kw": 100}],
                       "step": [{"at_s": 60, "fraction": 0.25}]})
    night = p.setting_at(at(21, 30), 0)  # 22:30 in Berlin
    assert (night.limit_kw, night.storage_kw, night.site_load_kw) == (800, 50, 100)
    assert p.setting_at(at(12, 0), 0).limit_kw == 1000
    assert p.setting_at(at(12, 0), 61).limit_kw == 250  # the step wins once reached


@pytest.mark.parametrize(("data", "words"), [
    ({}, "normal_kw: missing"),
    ({"normal_kw": -1}, "normal_kw = -1"),
    ({"normal_kw": 1, "window": [{"start": "5pm", "end": "19:00"}]}, "window[0].start"),
    ({"normal_kw": 1, "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"normal_kw": 1, "step": [{"at_s": 1, "limit_kw": 1, "fraction": 1}]}, "not both"),
])
def test_profile_mistakes_name_the_key(data: dict[str, object], words: str) -> None:
    with pytest.raises(ProfileError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_profile(data)


def test_published_payload_is_valid_and_accepted() -> None:
    p = parse_profile({"normal_kw": 600, "storage_kw": 200, "site_load_kw": 50})
    now = time.time()
    body = payload(p.normal, id="sim-1", issued_at=now, valid_for_s=30, source="sim-ems")
    jsonschema.validate(body, SCHEMA)
    r = evaluate(json.dumps(body).encode(), now, 10.0, RecentIds())
    assert isinstance(r, Accepted) and r.limit.value == 750_000.0


@needs_mosquitto
async def test_cli_publishes_schedule_to_the_station_topic(tmp_path: Path) -> None:
    profile = tmp_path / "peak.toml"
    profile.write_text('normal_kw = 1440\nvalid_for_s = 10\n[[step]]\nat_s = 0.2\n'
                       'fraction = 0.4\n')
    with broker(tmp_path / "mq") as b:
        async with Listener(b, "mwc/ST9/grid/limit") as ems:
            proc = subprocess.run(
                [sys.executable, "-m", "sim.cli", "grid", "--station", "ST9", "--profile",
                 str(profile), "--port", str(b.port), "--count", "2", "--cadence-s", "5"],
                capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)
            assert proc.returncode == 0, proc.stderr
            got = await eventually(lambda: len(ems.messages) == 2 and ems.json(
                "mwc/ST9/grid/limit"))
    # the second publication comes at once when the step is reached, not after the cadence
    assert [m["limit_kw"] for m in got] == [1440, 576]
    assert len({m["id"] for m in got}) == 2
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [p["why"] for p in printed] == ["normal", "step at 0.2 s"]
