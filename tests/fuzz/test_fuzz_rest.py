"""Fuzz: seeded hostile REST requests at ``ocpp_server``'s operator API, a station behind it.

About 2,000 cases (``FUZZ_CASES`` overrides). No 500; values that are invalid wherever they
sit (NaN, Infinity, 1e400, integers >= 2^63, lone surrogates, deep nesting) get a 4xx and
never reach the station; everything the station receives is strict JSON within limits;
stored data reads back; an honest station stays served; memory stays bounded.
"""

from __future__ import annotations

import os

from fuzz.server_boundaries import fuzz_rest

CASES = int(os.environ.get("FUZZ_CASES", "2000"))


async def test_fuzz_rest_bodies() -> None:
    res = await fuzz_rest(CASES, 1504)
    bad = {k: res[k] for k in ("crashes", "internal_errors", "unanswered", "closed",
                               "wrong_code", "read_errors") if res[k]}
    assert not bad, (bad, res["failures"])
    assert res["commands_sent"] > 0  # some requests were valid and did reach the station
    assert float(res["rss_growth_mb"]) < 40.0, res
    assert float(res["honest_max_ms"]) < 5000.0, res
