"""Storage, migrations, configuration and password hashing of the backend, without sockets."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from ocpp_server.config import ConfigError, load_config
from ocpp_server.migrations import SCHEMA_VERSION, SchemaTooNew
from ocpp_server.passwords import hash_password, verify_password
from ocpp_server.repository import AlreadyExists, StationRecord, TokenRecord, TxFilter
from ocpp_server.sql_tx import _sample_row
from ocpp_server.storage import SqliteRepository


async def test_schema_is_versioned_and_migrations_are_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    for _ in range(2):
        repo = SqliteRepository(db)
        await repo.open()
        await repo.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        await SqliteRepository(db).open()


async def test_group_commit_isolates_a_failing_write(tmp_path: Path) -> None:
    repo = SqliteRepository(tmp_path / "x.db")
    await repo.open()
    try:
        await repo.add_station(StationRecord("A", 1, True))
        results = await asyncio.gather(
            *(repo.upsert_token(TokenRecord(f"T{i}")) for i in range(100)),
            repo.add_station(StationRecord("A", 1, True)),  # collides, alone
            return_exceptions=True)
        assert isinstance(results[-1], AlreadyExists)
        assert len(await repo.list_tokens()) == 100
        assert await repo.set_station_approved("A", False)
        assert not await repo.set_station_approved("NOPE", True)
        assert await repo.list_transactions(TxFilter(station_id="A")) == []
    finally:
        await repo.close()


@pytest.mark.parametrize(("sample", "expected"), [
    ({"value": 12.5, "unitOfMeasure": {"unit": "kWh"}},
     ("Energy.Active.Import.Register", "Wh", 12500.0)),
    ({"value": 3, "measurand": "Power.Active.Import",
      "unitOfMeasure": {"unit": "W", "multiplier": 3}}, ("Power.Active.Import", "W", 3000.0)),
    ({"value": "1500"}, ("Energy.Active.Import.Register", "Wh", 1500.0)),  # 1.6: a string
    ({"value": "2.5", "unit": "kW", "measurand": "Power.Active.Import"},
     ("Power.Active.Import", "W", 2500.0)),
    ({"value": "AAEC", "format": "SignedData"}, ("Energy.Active.Import.Register", "Wh", None)),
])
def test_meter_samples_are_normalised(sample: dict[str, object],
                                      expected: tuple[str, str, float | None]) -> None:
    measurand, _, _, _, unit, value = _sample_row(sample)
    assert (measurand, unit, value) == expected


def test_passwords_are_salted_scrypt_and_malformed_hashes_fail() -> None:
    a, b = hash_password("same-password", n=2**10), hash_password("same-password", n=2**10)
    assert a != b and a.startswith("scrypt$1024$")
    assert verify_password("same-password", a) and not verify_password("other-password", a)
    assert not verify_password("same-password", "plain:same-password")
    with pytest.raises(ValueError, match="characters"):
        hash_password("short")


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[ocpp]\nport = 99999\n")
    with pytest.raises(ConfigError, match=r"ocpp\.port: Input should be less than"):
        load_config(path)
    path.write_text("[ocpp]\ntls_port = 9443\n")
    with pytest.raises(ConfigError, match="tls_port needs certfile and keyfile"):
        load_config(path)
    path.write_text("[ocpp\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    assert load_config(None).ocpp.auto_register is False


def _power_event(seq: int, watts: float) -> dict[str, object]:
    return {"eventType": "Started" if seq == 0 else "Updated", "seqNo": seq,
            "timestamp": f"2026-01-01T00:00:{seq:02d}Z", "triggerReason": "MeterValuePeriodic",
            "transactionInfo": {"transactionId": "TX1"}, "evse": {"id": 1, "connectorId": 1},
            "meterValue": [{"timestamp": f"2026-01-01T00:00:{seq:02d}Z", "sampledValue": [
                {"value": watts, "measurand": "Power.Active.Import",
                 "unitOfMeasure": {"unit": "W"}}]}]}


async def _power_flags(repo: SqliteRepository) -> list[object]:
    (tx,) = await repo.list_transactions(TxFilter(station_id="A"))
    full = await repo.get_transaction(tx["id"])
    assert full is not None
    return [mv["flag"] for mv in full["meter_values"]]


async def test_cached_station_rating_follows_every_change(tmp_path: Path) -> None:
    """The rating read per TransactionEvent is cached; a change through the repository, or
    committed by another connection (the CLI on the same file), is seen by the next event."""
    db = tmp_path / "x.db"
    flagged: list[tuple[str, int]] = []
    repo = SqliteRepository(db, rated_power_w=100_000.0,
                            on_flag=lambda reason, n: flagged.append((reason, n)))
    await repo.open()
    try:
        await repo.add_station(StationRecord("A", 1, True))
        assert await repo.record_transaction_event("A", _power_event(0, 50_000.0))
        assert await repo.set_station_rating("A", 10_000.0)  # through the repository
        assert await repo.record_transaction_event("A", _power_event(1, 50_000.0))
        other = sqlite3.connect(db, isolation_level=None)  # as `mwc csms station ...` does
        other.execute("UPDATE stations SET rated_power_w=1000000 WHERE id='A'")
        other.close()
        assert await repo.record_transaction_event("A", _power_event(2, 50_000.0))
        assert await _power_flags(repo) == [None, "power_over_rating", None]
        assert flagged == [("power_over_rating", 1)]
    finally:
        await repo.close()
