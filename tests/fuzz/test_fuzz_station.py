"""Fuzz: the OCPP 2.0.1 and 1.6J station clients against a hostile backend (issue 15).

About 2,000 seeded hostile CALLs per version (``MWC_FUZZ_CASES`` / ``MWC_FUZZ_SEED`` change
the count and the seed; ``bench/fuzz.py`` runs the same function longer). Each run asserts:
the client kept running, every CALL was answered with an acceptable code (never
InternalError), the websocket never closed, memory stayed bounded, an honest request between
batches was answered promptly, and the stored profiles still load afterwards.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from fuzz.gen_ocpp import Generator, dumps, templates16, templates201
from fuzz.station_boundaries import fuzz_station

CASES = int(os.environ.get("MWC_FUZZ_CASES", "2000"))
SEED = int(os.environ.get("MWC_FUZZ_SEED", "15"))

pytestmark = pytest.mark.timeout(240)


def test_generator_is_seeded() -> None:
    """The same seed replays the same frames (a failure can be reproduced)."""
    a, b = Generator(templates201(), 7), Generator(templates201(), 7)
    assert [a.case().frame for _ in range(200)] == [b.case().frame for _ in range(200)]
    assert Generator(templates16(), 8).case().frame != Generator(templates16(), 9).case().frame
    assert dumps({"a": [1.5, None]}) == '{"a":[1.5,null]}'


@pytest.fixture
def quiet_library() -> Iterator[None]:
    """The ``ocpp`` library logs every frame at INFO, and pytest keeps every record it
    captures: 2,000 frames of up to 70 kB would count as the station's memory growth."""
    lib = logging.getLogger("ocpp")
    level = lib.level
    lib.setLevel(logging.WARNING)
    yield
    lib.setLevel(level)


@pytest.mark.parametrize("version", ["2.0.1", "1.6"])
async def test_station_client_survives_hostile_backend(version: str, quiet_library: None
                                                       ) -> None:
    r = await fuzz_station(CASES, SEED, version, hostile_answers=0.0)
    assert r["cases"] == CASES, r
    assert r["examples"] == [], r["examples"]
    assert (r["crashes"], r["internal_errors"], r["unanswered"], r["wrong_code"]) == (
        0, 0, 0, 0), r
    assert r["closed"] == 0, r
    assert r["honest_unanswered"] == 0 and r["honest_max_s"] < 2.0, r
    assert r["stored_invalid"] == 0 and r["reload_ok"], r
    assert r["rss_growth_mb"] < 40, r
    # the run exercised the boundary: answers of every kind came back
    assert {"result", "PropertyConstraintViolation"} <= set(r["codes"]), r["codes"]


@pytest.mark.parametrize("version", ["2.0.1", "1.6"])
async def test_hostile_answers_to_the_station_calls_keep_the_link(version: str,
                                                                 quiet_library: None) -> None:
    """The backend also answers a third of the station's own CALLs with hostile responses
    (a CallError, NaN/garbage fields, deep nesting, an unknown message id): the client
    drops or logs them, keeps its connection and keeps answering."""
    r = await fuzz_station(600, SEED, version, hostile_answers=0.3)
    assert r["hostile_answers"] > 0, r
    assert (r["crashes"], r["internal_errors"], r["unanswered"], r["wrong_code"]) == (
        0, 0, 0, 0), r
    assert r["closed"] == 0, r
    assert r["honest_unanswered"] == 0, r
