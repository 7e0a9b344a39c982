"""Fuzz: seeded hostile OCPP 2.0.1 and 1.6 frames at ``ocpp_server`` over real websockets.

About 2,000 cases per version and seed (``FUZZ_CASES`` overrides; ``bench/fuzz.py`` runs
50,000). Every CALL must be answered with the message's id and an allowed code, never
InternalError; the connection stays open; an honest station beside it stays served; memory
stays bounded; what was stored can be read back (messages, transactions, metrics).
"""

from __future__ import annotations

import os

import pytest

from fuzz.server_boundaries import fuzz_csms, fuzz_csms_generic, fuzz_handshake

CASES = int(os.environ.get("FUZZ_CASES", "2000"))
RSS_BOUND_MB = 40.0
HONEST_BOUND_MS = 5000.0  # generous: two shared cores; a stalled loop would take longer


def assert_clean(res: dict[str, object]) -> None:
    bad = {k: res[k] for k in ("crashes", "internal_errors", "unanswered", "closed",
                               "wrong_code", "read_errors") if res[k]}
    assert not bad, (bad, res["failures"])
    assert float(res["rss_growth_mb"]) < RSS_BOUND_MB, res  # type: ignore[arg-type]
    assert float(res["honest_max_ms"]) < HONEST_BOUND_MS, res  # type: ignore[arg-type]


@pytest.mark.parametrize(("version", "seed"), [("2.0.1", 1501), ("1.6", 1502)])
async def test_fuzz_csms_frames(version: str, seed: int) -> None:
    res = await fuzz_csms(CASES, seed, version)
    assert res["cases"] == CASES
    assert_clean(res)


async def test_fuzz_csms_handshake_authorization_headers() -> None:
    res = await fuzz_handshake(max(50, CASES // 10), 1503)
    assert not res["internal_errors"] and not res["unanswered"] and not res["crashes"], res


@pytest.mark.parametrize(("version", "seed"), [("2.0.1", 1505), ("1.6", 1506)])
async def test_fuzz_csms_with_the_generic_frame_generator(version: str, seed: int) -> None:
    """The station side's generator (``gen_ocpp``), over the backend's request templates."""
    res = await fuzz_csms_generic(max(200, CASES // 2), seed, version)
    assert_clean(res)
