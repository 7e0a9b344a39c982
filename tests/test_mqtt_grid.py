"""Grid limits over a real Mosquitto: applied, expiring, storage, bad payloads, broker loss."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.grid import GridLimitSource
from controller.limits import STATION, Limit, LimitBook
from controller.mqtt import MqttConfig, MqttConnection, TlsConfig, TopicsConfig
from controller.telemetry import TelemetryPublisher
from tests.mqtt_fixtures import (
    Clocks,
    Listener,
    Mosquitto,
    broker,
    eventually,
    limit_payload,
    make_pki,
    needs_mosquitto,
    station_config,
    tasks,
)

pytestmark = [needs_mosquitto, pytest.mark.timeout(60)]

LIMIT_TOPIC = "mwc/ST1/grid/limit"
EVENTS = "mwc/ST1/events"
FALLBACK_W = 100_000.0


@dataclass
class Rig:
    broker: Mosquitto
    clocks: Clocks
    book: LimitBook
    conn: MqttConnection
    telemetry: TelemetryPublisher
    grid: GridLimitSource
    ems: Listener

    def cap(self) -> tuple[float, str]:
        eff = self.book.effective(STATION, self.clocks.monotonic())
        return eff.value, eff.binding.source

    async def send(self, payload: bytes, topic: str = LIMIT_TOPIC) -> None:
        await self.ems.publish(topic, payload)


@contextlib.asynccontextmanager
async def rig(b: Mosquitto, cfg: MqttConfig | None = None) -> AsyncIterator[Rig]:
    clocks = Clocks()
    book = LimitBook()
    book.set(STATION, "station_max", Limit(1_440_000.0, "config:max_kw"))
    conn = MqttConnection(cfg or station_config(b), "ST1", version="9.9.9", wall=clocks.time)
    telemetry = TelemetryPublisher(conn, wall=clocks.time)
    grid = GridLimitSource(book, conn, fallback_w=FALLBACK_W, events=telemetry,
                           mono=clocks.monotonic, wall=clocks.time)
    async with Listener(b, EVENTS) as ems, tasks(conn.run(), telemetry.run()):
        await eventually(lambda: conn.connected)
        yield Rig(b, clocks, book, conn, telemetry, grid, ems)


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[Rig]:
    with broker(tmp_path / "mq") as b:
        async with rig(b) as r:
            yield r


async def test_limit_applied_then_expires_to_fallback(plain: Rig) -> None:
    r = plain
    assert r.cap() == (FALLBACK_W, "grid:fallback")  # nothing received yet
    await r.send(limit_payload(r.clocks, "L1", 600, valid_for_s=30))
    await eventually(lambda: r.cap()[0] == 600_000.0)
    assert r.cap()[1] == "grid:ems:L1"
    changed = await eventually(lambda: r.ems.events(EVENTS, "grid_limit_changed"))
    assert changed[0]["limit_w"] == 600_000.0 and changed[0]["previous_w"] is None
    r.clocks.advance(29.9)
    assert r.cap() == (600_000.0, "grid:ems:L1")
    assert r.grid.check_expiry() == []
    r.clocks.advance(0.1)
    assert r.cap() == (FALLBACK_W, "grid:fallback")
    assert r.grid.check_expiry() == ["grid"]
    assert r.grid.check_expiry() == []  # reported once
    expired = await eventually(lambda: r.ems.events(EVENTS, "grid_limit_expired"))
    assert expired[0]["station_cap_w"] == FALLBACK_W
    assert expired[0]["source"] == "grid:ems:L1"


async def test_storage_support_raises_the_cap_up_to_the_station_max(plain: Rig) -> None:
    r = plain
    await r.send(limit_payload(r.clocks, "S1", 400))
    await eventually(lambda: r.cap()[0] == 400_000.0)
    await r.send(limit_payload(r.clocks, "S2", 400, storage_kw=300, site_load_kw=100))
    await eventually(lambda: r.cap()[0] == 600_000.0)
    lim = r.book.get(STATION, "grid")
    assert lim is not None and lim.detail == "limit 400 kW + storage 300 kW - site 100 kW"
    await r.send(limit_payload(r.clocks, "S3", 1400, storage_kw=200))
    await eventually(lambda: r.cap() == (1_440_000.0, "config:max_kw"))


def _bad_payloads(c: Clocks) -> list[tuple[bytes, str]]:
    good: dict[str, Any] = json.loads(limit_payload(c, "B0", 300))
    stale = limit_payload(c, "B1", 300, valid_for_s=5, issued_at=c.iso(-6))
    return [
        (b"not json at all", "not valid JSON"),
        (json.dumps({**good, "id": "B2", "limit_kw": -10}).encode(), "limit_kw = -10"),
        (json.dumps({**good, "id": "B3", "valid_for_s": 0}).encode(), "valid_for_s = 0"),
        (json.dumps({k: v for k, v in good.items() if k != "limit_kw"}).encode(),
         "limit_kw: missing"),
        (json.dumps({**good, "id": "B4", "storage_kw": "lots"}).encode(), 'storage_kw = "lots"'),
        (json.dumps({**good, "id": "B5", "issued_at": "17:00"}).encode(), 'issued_at = "17:00"'),
        (json.dumps({**good, "id": "B6", "site_lod_kw": 5}).encode(), "site_lod_kw = 5"),
        (stale, "stale"),
        (limit_payload(c, "G1", 900), "duplicate"),  # G1 is the limit already applied
    ]


async def test_every_bad_payload_rejected_with_reason_and_cap_unchanged(plain: Rig) -> None:
    r = plain
    await r.send(limit_payload(r.clocks, "G1", 500))
    await eventually(lambda: r.cap()[0] == 500_000.0)
    bad = _bad_payloads(r.clocks)
    for payload, _ in bad:
        await r.send(payload)
    rejected = await eventually(
        lambda: len(r.ems.events(EVENTS, "grid_limit_rejected")) == len(bad)
        and r.ems.events(EVENTS, "grid_limit_rejected"))
    for event, (_, words) in zip(rejected, bad, strict=True):
        assert words in event["reason"], (words, event)
        assert event["topic"] == LIMIT_TOPIC
    assert r.cap() == (500_000.0, "grid:ems:G1")
    assert (r.grid.accepted, r.grid.rejected) == (1, len(bad))
    assert r.conn.connected and r.conn.connects == 1  # nothing crashed or reconnected


async def test_site_topic_most_restrictive_of_station_and_site(tmp_path: Path) -> None:
    with broker(tmp_path / "mq") as b:
        cfg = station_config(b, topics=TopicsConfig(site_limit="site/depot/grid/limit"))
        async with rig(b, cfg) as r:
            await r.send(limit_payload(r.clocks, "ST-1", 800, valid_for_s=60))
            await r.send(limit_payload(r.clocks, "SITE-1", 500, valid_for_s=10),
                         "site/depot/grid/limit")
            await eventually(lambda: r.cap() == (500_000.0, "grid_site:ems:SITE-1"))
            # the same id on the other topic is not a duplicate: ids are per topic
            await r.send(limit_payload(r.clocks, "SITE-1", 700, valid_for_s=60))
            await eventually(lambda: r.grid.accepted == 3)
            r.clocks.advance(10)  # the site limit runs out: its fallback binds
            assert r.cap() == (FALLBACK_W, "grid_site:fallback")
            await r.send(limit_payload(r.clocks, "SITE-2", 1000), "site/depot/grid/limit")
            await eventually(lambda: r.cap() == (700_000.0, "grid:ems:SITE-1"))


async def test_broker_restart_mid_charge_keeps_last_limit_then_resubscribes(
        tmp_path: Path) -> None:
    with broker(tmp_path / "mq") as b:
        # backoff long enough for the test's listener to subscribe before the station is back
        cfg = station_config(b, reconnect_min_s=0.4, reconnect_max_s=0.5)
        async with rig(b, cfg) as r:
            await r.send(limit_payload(r.clocks, "R1", 600, valid_for_s=20))
            await eventually(lambda: r.cap()[0] == 600_000.0)
            await r.ems.__aexit__(None, None, None)
            b.stop()
            await eventually(lambda: not r.conn.connected)
            r.telemetry.event("session_stopped", gun=0, reason="EVDisconnected")  # while down
            r.clocks.advance(10)
            assert r.cap() == (600_000.0, "grid:ems:R1")  # still within the last limit
            r.clocks.advance(10)
            assert r.cap() == (FALLBACK_W, "grid:fallback")  # then its own expiry
            b.start()  # same port
            async with Listener(b, EVENTS) as ems:
                assert r.conn.connects == 1
                await eventually(lambda: r.conn.connects == 2)
                await ems.publish(LIMIT_TOPIC, limit_payload(r.clocks, "R2", 450))
                await eventually(lambda: r.cap() == (450_000.0, "grid:ems:R2"))
                stopped = await eventually(lambda: ems.events(EVENTS, "session_stopped"))
                assert stopped[0]["gun"] == 0  # the event queued during the outage arrived


async def test_tls_client_cert_and_password(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with broker(tmp_path / "mq", pki=pki, require_client_cert=True,
                users={"ST1": "pw-ST1", "ems": "pw-ems"}) as b:
        cfg = station_config(b, username="ST1", password="pw-ST1")
        clocks = Clocks()
        book = LimitBook()
        conn = MqttConnection(cfg, "ST1", wall=clocks.time)
        grid = GridLimitSource(book, conn, fallback_w=0.0, mono=clocks.monotonic, wall=clocks.time)
        tls = {"tls_params": aiomqtt.TLSParameters(ca_certs=str(pki.ca),
                                                   certfile=str(pki.client_cert),
                                                   keyfile=str(pki.client_key)),
               "username": "ems", "password": "pw-ems"}
        async with tasks(conn.run()), Listener(b, EVENTS, **tls) as ems:
            await eventually(lambda: conn.connected)
            await ems.publish(LIMIT_TOPIC, limit_payload(clocks, "T1", 250))
            await eventually(lambda: book.effective(STATION, clocks.monotonic()).value == 250_000.0)
            assert grid.accepted == 1


async def test_tls_rejects_a_broker_signed_by_another_ca(tmp_path: Path) -> None:
    pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other")
    with broker(tmp_path / "mq", pki=pki) as b:
        cfg = station_config(b, tls=TlsConfig(ca_file=str(other.ca)))
        conn = MqttConnection(cfg, "ST1")
        async with tasks(conn.run()):
            await eventually(lambda: conn.failures >= 2)
            assert conn.connects == 0


async def test_wrong_password_retries_with_backoff_without_crashing(tmp_path: Path) -> None:
    with broker(tmp_path / "mq", users={"ST1": "right"}) as b:
        cfg = station_config(b, username="ST1", password="wrong")
        conn = MqttConnection(cfg, "ST1")
        async with tasks(conn.run()) as running:
            await eventually(lambda: conn.failures >= 3)
            assert not conn.connected and not running[0].done()
        delays = [conn.backoff_s(n) for n in range(1, 8)]
        assert delays[0] < delays[-1] <= cfg.reconnect_max_s * 1.2
