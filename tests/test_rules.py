"""Rules in one place (issue 20): the one clock, named limit keys, defaults in the config model."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import sys
import time

import pytest
from cycle_fixtures import make_config
from helpers import certificate, eventually

from controller.clock import Clock, SimClock, SystemClock, iso_utc
from controller.config import MqttConfig, StationSection, TopicsConfig, reveal
from controller.cycle import CYCLE_KEYS, StationParams, gun_limits, install_static_limits
from controller.limits import (
    EXTERNAL_KEYS,
    STATION,
    Limit,
    LimitBook,
    LimitKey,
    gun,
    install_grid_fallback,
)
from controller.recovery import CommRecovery
from controller.session import SessionTiming


# ---------------------------------------------------------------------------- the clock
def test_sim_clock_moves_only_when_told_and_keeps_wall_in_lock_step() -> None:
    start = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
    c = SimClock(50.0, wall_start=start)
    assert isinstance(c, Clock)
    assert (c.monotonic(), c(), c.wall()) == (50.0, 50.0, start)
    assert c.advance(1.5) == 51.5
    c.t += 0.5  # the station tests step it directly
    assert c.monotonic() == 52.0 and c.elapsed == 2.0
    assert c.wall() == start + dt.timedelta(seconds=2)
    assert c.time() == pytest.approx(start.timestamp() + 2)
    assert iso_utc(c.wall()) == "2026-03-01T08:00:02.000Z"
    c.set_wall(dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC))  # NTP steps the wall clock
    assert c.monotonic() == 52.0 and c.wall().hour == 9


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_sim_clock_refuses_to_go_back_or_to_nowhere(bad: float) -> None:
    with pytest.raises(ValueError, match="advance"):
        SimClock().advance(bad)


def test_naive_wall_times_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SimClock(wall_start=dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        iso_utc(dt.datetime(2026, 1, 1))


def test_system_clock_is_the_operating_systems() -> None:
    c = SystemClock()
    assert isinstance(c, Clock)
    a, b = c.monotonic(), c.monotonic()
    assert b >= a and abs(a - time.monotonic()) < 5.0
    assert c.wall().tzinfo is not None
    assert abs(c.wall().timestamp() - time.time()) < 5.0


# ---------------------------------------------------------------------------- limit keys
def test_every_limit_in_the_book_carries_its_key() -> None:
    book = LimitBook()
    book.set(STATION, "grid", Limit(1000.0, "grid:mqtt", 0.0, 10.0))  # text still accepted
    book.set_fallback(STATION, LimitKey.GRID, Limit(500.0, "grid:fallback"))
    assert book.get(STATION, LimitKey.GRID).key is LimitKey.GRID  # type: ignore[union-attr]
    assert [lim.key for lim in book.in_force(STATION, 20.0)] == [LimitKey.GRID]  # fallback
    assert book.in_force(STATION, 20.0)[0].source == "grid:fallback"


def test_an_unknown_key_is_an_error_naming_it() -> None:
    book = LimitBook()
    with pytest.raises(ValueError, match=r"unknown limit key 'gird'.*grid"):
        book.set(STATION, "gird", Limit(1.0, "typo"))
    with pytest.raises(ValueError, match="carries key 'ocpp'"):
        book.set(STATION, LimitKey.GRID, Limit(1.0, "x", key=LimitKey.OCPP))


def test_the_vehicle_request_is_told_apart_by_its_key_not_its_source_text() -> None:
    book = LimitBook()
    book.set(gun(0), LimitKey.CABLE, Limit(800.0, "cable:config"))
    book.set(gun(0), LimitKey.EV_REQUEST, Limit(300.0, "secc:bridge", 0.0, 10.0))
    book.set(gun(0), LimitKey.EV_MAX, Limit(600.0, "ev_request-looking:max", 0.0, 10.0))
    got = gun_limits(book, 0, 1.0)
    assert (got.request_a, got.max_a, got.max_binding.key) == (300.0, 600.0, LimitKey.EV_MAX)


def test_the_grid_fallback_is_written_once_for_cycle_and_mqtt() -> None:
    cfg = make_config(fallback_grid_kw=250.0)
    book = LimitBook()
    install_static_limits(book, cfg)
    from_cycle = book.fallback(STATION, LimitKey.GRID)
    other = LimitBook()
    install_grid_fallback(other, 250_000.0)
    assert from_cycle == other.fallback(STATION, LimitKey.GRID)
    assert from_cycle is not None and from_cycle.source == "grid:fallback"
    book.clear_fallback(STATION, LimitKey.GRID)
    assert book.fallback(STATION, "grid") is None


def test_cycle_keys_and_outside_keys_split_the_enum() -> None:
    assert set(LimitKey) == CYCLE_KEYS | EXTERNAL_KEYS
    assert not CYCLE_KEYS & EXTERNAL_KEYS


# ---------------------------------------------------------------------------- defaults
def test_defaults_are_read_from_the_config_model() -> None:
    thr = StationSection.default_of("switch_threshold_a")
    assert thr == 5.0
    p = StationParams.from_config(make_config())
    assert p.switch_threshold_a == thr == CommRecovery(1, 1).threshold_a
    assert SessionTiming().low_current_a == thr
    for name in ("cable_check_s", "precharge_timeout_s", "vehicle_silence_s"):
        assert getattr(SessionTiming(), name) == StationSection.default_of(name)
    with pytest.raises(KeyError, match="max_kw has no default"):
        StationSection.default_of("max_kw")


def test_mqtt_sections_live_with_the_config_and_keep_their_old_import() -> None:
    import controller.mqtt as mqtt

    assert mqtt.MqttConfig is MqttConfig and mqtt.TopicsConfig is TopicsConfig
    cfg = MqttConfig(password="s3cret")
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.safe_dump())
    assert reveal(cfg.password) == "s3cret" and reveal(None) == ""


# ---------------------------------------------------------------------------- test helpers
async def test_eventually_returns_the_value_and_names_what_it_waited_for() -> None:
    box: list[int] = []
    asyncio.get_running_loop().call_later(0.05, box.append, 7)
    assert await eventually(lambda: box, 10.0, what="the box") == [7]

    async def never() -> bool:
        return False

    with pytest.raises(AssertionError, match=r"the thing not met within 0\.05 s; 'seen'"):
        await eventually(never, 0.05, what="the thing", detail=lambda: "seen")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await proc.wait()
    with pytest.raises(AssertionError, match=r"process exited \(0\)"):
        await eventually(lambda: False, 30.0, what="a dead server", proc=proc)


def test_certificates_chain_to_their_ca() -> None:
    ca = certificate("test CA", ca=True, key_usage=True)
    leaf = certificate("localhost", ca, server=True)
    leaf.cert.verify_directly_issued_by(ca.cert)
    assert leaf.cert.issuer == ca.cert.subject
