"""Seeded hostile grid limit payloads (``docs/schemas/grid-limit.schema.json``) and the run
of them through a private Mosquitto into :class:`~controller.grid.GridLimitSource`.

Each payload knows its fate: applied, or rejected with a ``grid_limit_rejected`` event that
names the field (``None`` for a payload that is not a JSON object at all). The run counts a
payload that is neither applied nor rejected as unanswered, a rejection we could not
evaluate (our bug) as an internal error, and checks that an honest limit is applied
promptly between batches and that the MQTT connection never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuzz.gen_ocpp import BAD_DATES, Raw, deep, dumps

NUMBER_FIELDS = ("limit_kw", "storage_kw", "site_load_kw")
TEXT_FIELDS = ("id", "source")
BAD_NUMBERS: tuple[Any, ...] = (
    -1, -0.5, 1e7, 10 ** 400, 2 ** 1100, Raw("1e400"), Raw("-1e400"), "12", None, True, [],
    {}, [1], Raw("1" * 500))
BAD_VALID_FOR = (0, -1, 1e9, Raw("1e400"), "30", None, False, [], 10 ** 400)
BAD_TEXT: tuple[Any, ...] = ("", " ", "\t\n", "x" * 129, 5, None, True, [], {"a": 1})
BAD_TIMES: tuple[Any, ...] = (*BAD_DATES, "2000-01-01T00:00:00Z", "0001-01-01T00:00:00Z",
                              1_795_000_000, None, [], "9999-12-31T23:59:59+14:00")


@dataclass(frozen=True, slots=True)
class MqttCase:
    raw: bytes
    accept: bool
    field: str | None  # the field the rejection must name (None: the payload as a whole)
    what: str


class MqttGenerator:
    """Payloads relative to the station's wall clock ``iso`` (so valid ones are current)."""

    def __init__(self, seed: int, iso: str) -> None:
        self.rng = random.Random(seed)
        self.iso = iso
        self.n = 0
        self.applied: list[str] = []

    def valid(self) -> dict[str, Any]:
        self.n += 1
        body: dict[str, Any] = {"id": f"fz-{self.n}", "limit_kw": round(
            self.rng.uniform(0, 2000), 3), "valid_for_s": 30, "issued_at": self.iso,
            "source": "ems"}
        if self.rng.random() < 0.3:
            body["storage_kw"] = self.rng.choice((0, 100, 250.5))
        if self.rng.random() < 0.3:
            body["site_load_kw"] = self.rng.choice((0, 50, 999.9))
        return body

    def case(self) -> MqttCase:
        rng = self.rng
        body = self.valid()
        kind = rng.choices(("valid", "number", "valid_for", "time", "text", "unknown",
                            "missing", "duplicate", "whole"), (15, 20, 8, 15, 8, 6, 6, 4, 18))[0]
        if kind == "valid":
            self.applied.append(body["id"])
            return MqttCase(dumps(body).encode(), True, None, "valid")
        if kind == "duplicate" and self.applied:
            body["id"] = rng.choice(self.applied[-50:])
            return MqttCase(dumps(body).encode(), False, "id", "duplicate id")
        if kind == "number":
            name = rng.choice(NUMBER_FIELDS)
            body[name] = rng.choice(BAD_NUMBERS)
            return MqttCase(dumps(body).encode(), False, name, f"{name} = {body[name]!r}"[:80])
        if kind == "valid_for":
            body["valid_for_s"] = rng.choice(BAD_VALID_FOR)
            return MqttCase(dumps(body).encode(), False, "valid_for_s",
                            f"valid_for_s = {body['valid_for_s']!r}"[:80])
        if kind == "time":
            body["issued_at"] = rng.choice(BAD_TIMES)
            return MqttCase(dumps(body).encode(), False, "issued_at",
                            f"issued_at = {body['issued_at']!r}"[:80])
        if kind == "text":
            name = rng.choice(TEXT_FIELDS)
            body[name] = rng.choice(BAD_TEXT)
            return MqttCase(dumps(body).encode(), False, name, f"{name} = {body[name]!r}"[:80])
        if kind == "unknown":
            name = rng.choice(("limit_w", "Limit_kw", "x" * 40, "é", ""))
            body[name] = 1
            return MqttCase(dumps(body).encode(), False, name, f"unknown field {name!r}")
        if kind == "missing":
            name = rng.choice(("id", "limit_kw", "valid_for_s", "issued_at", "source"))
            del body[name]
            return MqttCase(dumps(body).encode(), False, name, f"missing {name}")
        return self._whole(body)

    def _whole(self, body: dict[str, Any]) -> MqttCase:
        """Payloads wrong as a whole: the event names no field."""
        rng = self.rng
        text = dumps(body)
        choice = rng.randrange(9)
        if choice == 0:
            raw = text[:rng.randrange(0, len(text))].encode()
        elif choice == 1:
            raw = dumps(deep(rng.choice((100, 999, 1000, 5000, 100_000)))).encode()
        elif choice == 2:
            raw = text.replace(f'"limit_kw":{json.dumps(body["limit_kw"])}',
                               f'"limit_kw":{rng.choice(("NaN", "Infinity", "-Infinity"))}'
                               ).encode()
        elif choice == 3:
            raw = b"\xff\xfe" + text.encode()
        elif choice == 4:
            raw = dumps({**body, "source": "s" * 5000}).encode()  # over max_payload_bytes
        elif choice == 5:
            raw = dumps([body]).encode()
        elif choice == 6:
            raw = rng.choice((b"", b"null", b"42", b'"text"', b"true"))
        elif choice == 7:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        else:
            raw = ('{"id":' * 3000).encode()
        if choice == 2:  # NaN is not JSON: the whole payload is refused
            return MqttCase(raw, False, None, "NaN literal")
        return MqttCase(raw, False, None, f"whole payload {raw[:30]!r}")


class _Events:
    """The GridLimitSource's event sink: every event kept."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def event(self, kind: str, /, **fields: Any) -> None:
        self.items.append((kind, fields))


async def run_mqtt(cases: int, seed: int) -> dict[str, Any]:
    """``cases`` payloads through a private Mosquitto; the counts of the module docstring."""
    import aiomqtt
    from mqtt_fixtures import Clocks, broker, station_config

    from controller.grid import GridLimitSource
    from controller.limits import STATION, Limit, LimitBook
    from controller.mqtt import MqttConnection
    from fuzz.station_boundaries import rss_mb

    out: dict[str, Any] = {"cases": 0, "crashes": 0, "internal_errors": 0, "unanswered": 0,
                           "closed": 0, "rss_growth_mb": 0.0, "wrong_field": 0,
                           "wrongly_applied": 0, "wrongly_rejected": 0, "honest_max_s": 0.0,
                           "honest_unanswered": 0, "examples": []}
    clocks = Clocks()
    gen = MqttGenerator(seed, clocks.iso())
    events = _Events()
    book = LimitBook()
    book.set(STATION, "station_max", Limit(1_440_000.0, "config:max_kw"))
    with tempfile.TemporaryDirectory(prefix="mwc-fuzz-mq-") as tmp, broker(Path(tmp)) as b:
        conn = MqttConnection(station_config(b), "ST1", version="9.9.9", wall=clocks.time)
        grid = GridLimitSource(book, conn, fallback_w=100_000.0, events=events,
                               mono=clocks.monotonic, wall=clocks.time)
        topic = "mwc/ST1/grid/limit"
        task = asyncio.ensure_future(conn.run())
        try:
            if not await _until(lambda: conn.connected, 10.0):
                out["crashes"] += 1
                out["examples"].append("never connected to the broker")
                return out
            gc.collect()
            rss0 = rss_mb()
            async with aiomqtt.Client("127.0.0.1", b.port) as ems:
                for i in range(cases):
                    case = gen.case()
                    before = (grid.accepted, grid.rejected, conn.handler_failures,
                              len(events.items))
                    await ems.publish(topic, case.raw, qos=1)
                    out["cases"] += 1
                    done = await _until(lambda b=before: (
                        grid.accepted, grid.rejected, conn.handler_failures) != b[:3], 10.0)
                    if conn.handler_failures != before[2]:
                        out["internal_errors"] += 1
                        out["unanswered"] += 1
                        _example(out, f"handler raised: {case.what}")
                        continue
                    if not done:
                        out["unanswered"] += 1
                        _example(out, f"unanswered: {case.what}")
                        continue
                    _judge(out, case, grid.accepted > before[0], events.items[before[3]:])
                    if (i + 1) % 250 == 0:
                        await _honest(out, ems, topic, gen, book, clocks)
                await _honest(out, ems, topic, gen, book, clocks)
            gc.collect()
            out["rss_growth_mb"] = round(rss_mb() - rss0, 1)
            out["closed"] = conn.connects - 1
            if task.done():
                out["crashes"] += 1
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    return out


def _example(out: dict[str, Any], text: str) -> None:
    if len(out["examples"]) < 10:
        out["examples"].append(text)


def _judge(out: dict[str, Any], case: MqttCase, applied: bool,
           new: list[tuple[str, dict[str, Any]]]) -> None:
    rejected = [f for k, f in new if k == "grid_limit_rejected"]
    if any(str(f.get("reason", "")).startswith("payload could not be evaluated")
           for f in rejected):
        out["internal_errors"] += 1
        _example(out, f"internal error: {case.what}")
    if case.accept and not applied:
        out["wrongly_rejected"] += 1
        _example(out, f"rejected: {case.what}: {rejected[:1]}")
    elif not case.accept and applied:
        out["wrongly_applied"] += 1
        _example(out, f"applied: {case.what}")
    elif not case.accept and (len(rejected) != 1 or rejected[0].get("field") != case.field):
        out["wrong_field"] += 1
        _example(out, f"{case.what}: event {rejected[:1]}, expected field {case.field!r}")


async def _honest(out: dict[str, Any], ems: Any, topic: str, gen: MqttGenerator, book: Any,
                  clocks: Any) -> None:
    """A valid limit is applied promptly (the measure of an honest peer's service)."""
    from controller.limits import STATION
    body = gen.valid()
    t0 = time.monotonic()
    await ems.publish(topic, json.dumps(body).encode(), qos=1)

    def applied() -> bool:
        lim = book.get(STATION, "grid")
        return lim is not None and lim.source.endswith(f":{body['id']}")
    if await _until(applied, 10.0):
        out["honest_max_s"] = max(out["honest_max_s"], round(time.monotonic() - t0, 3))
    else:
        out["honest_unanswered"] += 1


async def _until(pred: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.001)
    return True
