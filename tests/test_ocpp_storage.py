"""The station's OCPP database: one schema, ``PRAGMA user_version`` migrations, and the upgrade
of a database written before the schema was versioned (issue 20 §3)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from controller.ocpp import storage
from controller.ocpp.v16.service import Ocpp16Service
from controller.ocpp.v201.service import OcppService
from tests.ocpp16_fixtures import config16
from tests.ocpp_fixtures import SimWall, ocpp_config, station_config

#: The layout before versioning, captured from the code of that release (each module created
#: its own table): the tables an installed station's database holds today.
LEGACY_LAYOUT = (
    "CREATE TABLE IF NOT EXISTS availability (evse INTEGER PRIMARY KEY, operative INTEGER)",
    "CREATE TABLE IF NOT EXISTS auth_cache (token TEXT PRIMARY KEY, status TEXT, expires REAL)",
    "CREATE TABLE IF NOT EXISTS boot_reason (reason TEXT)",
    "CREATE TABLE IF NOT EXISTS tx (gun INTEGER PRIMARY KEY, data TEXT)",
    "CREATE TABLE IF NOT EXISTS device_model (component TEXT, evse INTEGER, "
    "connector INTEGER, name TEXT, instance TEXT, value TEXT, "
    "PRIMARY KEY (component, evse, connector, name, instance))",
    "CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "action TEXT NOT NULL, payload TEXT NOT NULL, periodic INTEGER NOT NULL, "
    "attempts INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS profiles (id INTEGER PRIMARY KEY, evse INTEGER, data TEXT)",
    "CREATE TABLE IF NOT EXISTS v16_tx (gun INTEGER PRIMARY KEY, data TEXT)",
    "CREATE TABLE IF NOT EXISTS v16_txmap (local INTEGER PRIMARY KEY, real INTEGER)",
    "CREATE TABLE IF NOT EXISTS v16_config (key TEXT PRIMARY KEY, value TEXT)",
)
TABLES = {"availability", "auth_cache", "boot_reason", "tx", "device_model", "queue",
          "profiles", "v16_tx", "v16_txmap", "v16_config"}


def legacy_db(path: Path) -> None:
    """A 2.0.1 station's database as the unversioned release left it: an open transaction,
    a queued message, an override, an inoperative EVSE and a pending Reset's boot reason."""
    db = sqlite3.connect(path)
    for sql in LEGACY_LAYOUT:
        db.execute(sql)
    tx = {"gun": 1, "tx_id": "legacy-tx", "seq": 3, "id_token": "TRUCK-9", "id_sent": True,
          "id_token_type": "Central", "remote_start_id": None, "charging_state": "Charging",
          "energy_wh": 1234.0, "last_sample_t": None, "start_wh": 1000.0}
    db.execute("INSERT INTO tx VALUES (1, ?)", (json.dumps(tx),))
    db.execute("INSERT INTO queue (action, payload, periodic) VALUES (?, ?, 0)",
               ("StatusNotification", json.dumps({"evseId": 1})))
    db.execute("INSERT INTO device_model VALUES ('OCPPCommCtrlr', NULL, NULL, "
               "'HeartbeatInterval', NULL, '77')")
    db.execute("INSERT INTO availability VALUES (2, 0)")
    db.execute("INSERT INTO boot_reason VALUES ('RemoteReset')")
    db.execute("INSERT INTO v16_config VALUES ('HeartbeatInterval', '99')")
    db.commit()
    assert storage.version(db) == 0
    db.close()


def test_upgrade_from_the_unversioned_layout_keeps_every_row(tmp_path: Path) -> None:
    cfg = ocpp_config(tmp_path, 1)
    legacy_db(Path(cfg.database))
    svc = OcppService(cfg, station_config(), wall=SimWall())
    try:
        assert storage.version(svc.db) == storage.SCHEMA_VERSION
        assert svc.tx.open[1].tx_id == "legacy-tx" and svc.tx.open[1].energy_wh == 1234.0
        assert svc.dm.num("OCPPCommCtrlr", "HeartbeatInterval") == 77
        assert svc.availability == {2: False}
        assert svc.boot_reason == "RemoteReset"
        actions = [r[0] for r in svc.db.execute("SELECT action FROM queue ORDER BY id")]
        assert actions[0] == "StatusNotification"  # the queued row, still first in line
    finally:
        svc.db.close()
    # the same file opened by the 1.6 client (a version switch) keeps its keys as well
    cfg16 = config16(tmp_path, 1)
    svc16 = Ocpp16Service(cfg16, station_config(), wall=SimWall())
    try:
        assert svc16.keys.num("HeartbeatInterval") == 99
        assert storage.version(svc16.db) == storage.SCHEMA_VERSION
    finally:
        svc16.db.close()


def test_a_fresh_database_gets_the_whole_schema_once(tmp_path: Path) -> None:
    db = storage.open_db(str(tmp_path / "fresh.sqlite3"))
    try:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert names >= TABLES
        assert storage.version(db) == storage.SCHEMA_VERSION
        assert storage.migrate(db) == storage.SCHEMA_VERSION  # a second pass changes nothing
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_a_database_of_a_newer_release_is_refused_with_its_version(tmp_path: Path) -> None:
    path = tmp_path / "newer.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {storage.SCHEMA_VERSION + 5}")
    db.close()
    with pytest.raises(storage.SchemaTooNew, match=f"version {storage.SCHEMA_VERSION + 5}"):
        storage.open_db(str(path))


def test_a_failing_step_leaves_the_database_at_its_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "MIGRATIONS", (*storage.MIGRATIONS, "CREATE TABLE x (a);"
                                                "CREATE TABLE broken ("))
    monkeypatch.setattr(storage, "SCHEMA_VERSION", len(storage.MIGRATIONS))
    db = sqlite3.connect(tmp_path / "half.sqlite3")
    try:
        with pytest.raises(sqlite3.OperationalError):
            storage.migrate(db)
        assert storage.version(db) == storage.SCHEMA_VERSION - 1  # step 1 landed, 2 did not
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "x" not in names and "queue" in names
    finally:
        db.close()
