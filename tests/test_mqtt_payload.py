"""The grid payload rules as a pure function (no broker), and the schema file agreeing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.grid import Accepted, PayloadRules, RecentIds, Rejected, evaluate
from controller.limits import STATION, Limit, LimitBook
from controller.mqtt import MqttConfig, TopicsConfig
from tests.mqtt_fixtures import Clocks

SCHEMA = json.loads((Path(__file__).parent.parent / "docs/schemas/grid-limit.schema.json")
                    .read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def body(clocks: Clocks, **kw: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"id": "L1", "limit_kw": 600, "valid_for_s": 30,
                         "issued_at": clocks.iso(), "source": "ems"}
    b.update(kw)
    return {k: v for k, v in b.items() if v is not ...}


def run(clocks: Clocks, raw: bytes | dict[str, Any], recent: RecentIds | None = None
        ) -> Accepted | Rejected:
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    return evaluate(data, clocks.time(), clocks.monotonic(), recent or RecentIds(), PayloadRules())


def test_accepted_limit_in_watts_with_source_detail_and_monotonic_expiry() -> None:
    c = Clocks()
    r = run(c, body(c, storage_kw=200, site_load_kw=50))
    assert isinstance(r, Accepted)
    assert r.limit == Limit(value=750_000.0, source="grid:ems:L1", issued_at=c.monotonic(),
                            expires_at=c.monotonic() + 30,
                            detail="limit 600 kW + storage 200 kW - site 50 kW")


def test_expiry_counts_from_issued_at_in_wall_time() -> None:
    c = Clocks()
    raw = body(c, valid_for_s=10)
    c.advance(4)  # delivered 4 s after it was issued
    r = run(c, raw)
    assert isinstance(r, Accepted)
    assert r.limit.expires_at == pytest.approx(c.monotonic() + 6)


def test_publisher_clock_ahead_gains_no_time_and_far_future_is_rejected() -> None:
    c = Clocks()
    r = run(c, body(c, issued_at=c.iso(3), valid_for_s=10))
    assert isinstance(r, Accepted)
    assert r.limit.expires_at == pytest.approx(c.monotonic() + 10)
    r = run(c, body(c, issued_at=c.iso(60)))
    assert isinstance(r, Rejected)
    assert r.field == "issued_at" and "in the future" in r.reason


def test_site_load_beyond_limit_gives_zero_never_negative() -> None:
    c = Clocks()
    r = run(c, body(c, limit_kw=100, site_load_kw=250))
    assert isinstance(r, Accepted)
    assert r.limit.value == 0.0


def test_book_takes_min_with_station_max_and_falls_back_after_expiry() -> None:
    c = Clocks()
    book = LimitBook()
    book.set(STATION, "station_max", Limit(1_440_000.0, "config:max_kw"))
    book.set_fallback(STATION, "grid", Limit(100_000.0, "grid:fallback"))
    r = run(c, body(c, limit_kw=2000, valid_for_s=5))
    assert isinstance(r, Accepted)
    book.set(STATION, "grid", r.limit)
    assert book.effective(STATION, c.monotonic()).binding.source == "config:max_kw"
    r = run(c, body(c, id="L2", limit_kw=500, valid_for_s=5))
    assert isinstance(r, Accepted)
    book.set(STATION, "grid", r.limit)
    assert book.effective(STATION, c.monotonic()).value == 500_000.0
    c.advance(5)
    eff = book.effective(STATION, c.monotonic())
    assert (eff.value, eff.binding.source) == (100_000.0, "grid:fallback")


BAD: list[tuple[str, Any, str, str | None]] = [
    # name, payload (dict, or raw bytes), words the reason must contain, field
    ("not json", b"{limit_kw: 5", "not valid JSON", None),
    ("not utf-8", b"\xff\xfe{}", "not UTF-8", None),
    ("NaN literal", b'{"limit_kw": NaN}', "NaN", None),
    ("array", b"[1, 2]", "must be a JSON object, got list", None),
    ("missing limit_kw", {"limit_kw": ...}, "limit_kw: missing", "limit_kw"),
    ("missing id", {"id": ...}, "id: missing", "id"),
    ("missing issued_at", {"issued_at": ...}, "issued_at: missing", "issued_at"),
    ("negative limit", {"limit_kw": -5}, "limit_kw = -5: must be a number >= 0", "limit_kw"),
    ("string limit", {"limit_kw": "600"}, 'limit_kw = "600": must be a number', "limit_kw"),
    ("bool limit", {"limit_kw": True}, "limit_kw = true", "limit_kw"),
    ("huge number", b"LIMIT_INF", "limit_kw = Infinity", "limit_kw"),
    ("zero validity", {"valid_for_s": 0}, "valid_for_s = 0: must be a number > 0",
     "valid_for_s"),
    ("validity too long", {"valid_for_s": 1e7}, "valid_for_s = 10000000.0: must be at most",
     "valid_for_s"),
    ("negative storage", {"storage_kw": -1}, "storage_kw = -1", "storage_kw"),
    ("negative site load", {"site_load_kw": -0.5}, "site_load_kw = -0.5", "site_load_kw"),
    ("null site load", {"site_load_kw": None}, "site_load_kw = null", "site_load_kw"),
    ("no time zone", {"issued_at": "2026-11-27T17:00:00"}, 'issued_at = "2026-11-27T17:00:00"',
     "issued_at"),
    ("not a time", {"issued_at": "yesterday"}, "must be an RFC 3339 time", "issued_at"),
    ("impossible time", {"issued_at": "2026-11-27T25:00:00Z"}, "RFC 3339", "issued_at"),
    ("empty id", {"id": ""}, 'id = "": must be a non-empty string', "id"),
    ("numeric source", {"source": 7}, "source = 7", "source"),
    ("misspelt field", {"site_load": 50}, "site_load = 50: unknown field", "site_load"),
]


@pytest.mark.parametrize(("name", "change", "words", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_payload_rejected_with_field_and_value(name: str, change: Any, words: str,
                                                   field: str | None) -> None:
    c = Clocks()
    if change == b"LIMIT_INF":
        raw = json.dumps(body(c)).replace('"limit_kw": 600', '"limit_kw": 1e999').encode()
    elif isinstance(change, bytes):
        raw = change
    else:
        raw = json.dumps(body(c, **change)).encode()
    r = run(c, raw)
    assert isinstance(r, Rejected), name
    assert words in r.reason
    assert r.field == field
    beyond_schema = ("huge number", "validity too long")  # finiteness, configured maximum
    if field is not None and name not in beyond_schema:  # the schema rejects them too
        assert not VALIDATOR.is_valid(json.loads(raw)), name


def test_stale_and_duplicate_rejected_and_oversize_payload() -> None:
    c = Clocks()
    stale = body(c, valid_for_s=10)
    c.advance(10)
    r = run(c, stale)
    assert isinstance(r, Rejected) and r.field == "issued_at" and "stale" in r.reason
    assert "10.0 s ago" in r.reason
    recent = RecentIds(2)
    first = run(c, body(c, id="A"), recent)
    assert isinstance(first, Accepted)
    recent.add("A")
    dup = run(c, body(c, id="A", limit_kw=1), recent)
    assert isinstance(dup, Rejected) and dup.id == "A" and "duplicate" in dup.reason
    recent.add("B")
    recent.add("C")  # bounded: "A" is forgotten
    assert "A" not in recent and len(recent) == 2
    big = json.dumps(body(c, source="x" * 100, id="y" * 100)).encode() + b" " * 5000
    r = run(c, big)
    assert isinstance(r, Rejected) and "more than 4096" in r.reason


def test_good_payloads_valid_against_schema() -> None:
    c = Clocks()
    for b in (body(c), body(c, storage_kw=0, site_load_kw=12.5), *SCHEMA["examples"]):
        assert VALIDATOR.is_valid(b), b
    assert isinstance(run(c, body(c, issued_at=c.iso().replace("Z", "+00:00"))), Accepted)


def test_config_masks_password_and_fills_topics() -> None:
    cfg = MqttConfig(password="s3cret", topics=TopicsConfig(site_limit="site/{station_id}/x"))
    assert "s3cret" not in json.dumps(cfg.safe_dump())
    assert "s3cret" not in repr(cfg)
    assert cfg.topic("grid_limit", "ST1") == "mwc/ST1/grid/limit"
    assert cfg.topic("site_limit", "ST1") == "site/ST1/x"
    with pytest.raises(ValueError, match=r"cert_file and tls\.key_file"):
        MqttConfig.model_validate({"tls": {"cert_file": "c.pem"}})
    with pytest.raises(ValueError, match="without wildcards"):
        MqttConfig.model_validate({"topics": {"site_limit": "site/+/limit"}})


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                   max_size=4),
    max_leaves=12)
_fields = st.fixed_dictionaries({}, optional={
    "id": _json | st.text(max_size=200), "limit_kw": _json, "valid_for_s": _json,
    "issued_at": _json | st.datetimes().map(lambda d: d.isoformat() + "Z")
    | st.just("0001-01-01T00:00:00+01:00"), "source": _json, "storage_kw": _json,
    "site_load_kw": _json})


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300) | _fields.map(lambda d: json.dumps(d).encode()))
def test_any_input_gives_a_verdict_never_an_exception(raw: bytes) -> None:
    c = Clocks()
    r = evaluate(raw, c.time(), c.monotonic(), RecentIds())
    assert isinstance(r, Accepted | Rejected)
    if isinstance(r, Accepted):
        assert r.limit.value >= 0 and r.limit.expires_at is not None
