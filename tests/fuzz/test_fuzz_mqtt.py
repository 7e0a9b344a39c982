"""Fuzz: grid limit payloads through a private Mosquitto into the station (issue 15).

About 2,000 seeded payloads (``MWC_FUZZ_CASES`` / ``MWC_FUZZ_SEED``): every one is applied or
rejected with a ``grid_limit_rejected`` event naming the right field, none makes the handler
raise, the MQTT connection never drops, memory stays bounded and an honest limit between
batches is applied promptly.
"""

from __future__ import annotations

import os

import pytest
from mqtt_fixtures import needs_mosquitto

from fuzz.station_boundaries import fuzz_mqtt

CASES = int(os.environ.get("MWC_FUZZ_CASES", "2000"))
SEED = int(os.environ.get("MWC_FUZZ_SEED", "15"))

pytestmark = [needs_mosquitto, pytest.mark.timeout(240)]


async def test_grid_limits_survive_hostile_payloads() -> None:
    r = await fuzz_mqtt(CASES, SEED)
    assert r["cases"] == CASES, r
    assert r["examples"] == [], r["examples"]
    assert (r["crashes"], r["internal_errors"], r["unanswered"], r["closed"]) == (0, 0, 0, 0), r
    assert (r["wrong_field"], r["wrongly_applied"], r["wrongly_rejected"]) == (0, 0, 0), r
    assert r["honest_unanswered"] == 0 and r["honest_max_s"] < 2.0, r
    assert r["rss_growth_mb"] < 40, r
