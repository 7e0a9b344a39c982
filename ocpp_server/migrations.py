"""Schema migrations, applied in order; ``PRAGMA user_version`` holds the schema version.

Never edit a released step: append a new one. Each step runs in one transaction.
"""

from __future__ import annotations

import sqlite3

_V1 = """
CREATE TABLE stations (
    id TEXT PRIMARY KEY,
    password_hash TEXT,
    security_profile INTEGER NOT NULL DEFAULT 1,
    approved INTEGER NOT NULL DEFAULT 0,
    ocpp_version TEXT, vendor TEXT, model TEXT, serial_number TEXT, firmware_version TEXT,
    created_at TEXT NOT NULL,
    last_boot_at TEXT
);
CREATE TABLE tokens (
    id_token TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    expiry TEXT,
    group_id TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE connections (
    id INTEGER PRIMARY KEY,
    station_id TEXT NOT NULL,
    protocol TEXT NOT NULL,
    remote TEXT,
    security_profile INTEGER,
    connected_at TEXT NOT NULL,
    disconnected_at TEXT,
    close_code INTEGER
);
CREATE INDEX connections_station ON connections(station_id, id);
CREATE TABLE status_history (
    id INTEGER PRIMARY KEY,
    station_id TEXT NOT NULL,
    evse_id INTEGER NOT NULL,
    connector_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    error_code TEXT,
    timestamp TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX status_station ON status_history(station_id, evse_id, connector_id, id);
CREATE TABLE transactions (
    id INTEGER PRIMARY KEY,
    station_id TEXT NOT NULL,
    transaction_id TEXT,
    ocpp_version TEXT NOT NULL,
    evse_id INTEGER,
    connector_id INTEGER,
    id_token TEXT,
    started_at TEXT,
    ended_at TEXT,
    stop_reason TEXT,
    charging_state TEXT,
    meter_start_wh REAL,
    meter_stop_wh REAL,
    last_seq_no INTEGER,
    start_key TEXT,
    updated_at TEXT NOT NULL,
    UNIQUE (station_id, transaction_id),
    UNIQUE (station_id, start_key)
);
CREATE INDEX transactions_started ON transactions(started_at);
CREATE TABLE transaction_events (
    id INTEGER PRIMARY KEY,
    tx_pk INTEGER NOT NULL REFERENCES transactions(id),
    seq_no INTEGER,
    event_type TEXT NOT NULL,
    trigger_reason TEXT,
    timestamp TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL,
    UNIQUE (tx_pk, seq_no)
);
CREATE TABLE meter_values (
    id INTEGER PRIMARY KEY,
    station_id TEXT NOT NULL,
    tx_pk INTEGER REFERENCES transactions(id),
    evse_id INTEGER,
    timestamp TEXT NOT NULL,
    measurand TEXT NOT NULL,
    phase TEXT,
    location TEXT,
    context TEXT,
    unit TEXT,
    value REAL,
    raw TEXT,
    source TEXT NOT NULL
);
CREATE INDEX meter_values_tx ON meter_values(tx_pk, timestamp);
CREATE TABLE charging_profiles (
    id INTEGER PRIMARY KEY,
    station_id TEXT NOT NULL,
    evse_id INTEGER NOT NULL,
    profile_id INTEGER,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    sent_at TEXT NOT NULL
);
CREATE TABLE security_events (
    id INTEGER PRIMARY KEY,
    station_id TEXT NOT NULL,
    type TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    tech_info TEXT,
    received_at TEXT NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    station_id TEXT NOT NULL,
    action TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX messages_station ON messages(station_id, action, id);
"""

# v2: meter-value plausibility (plausibility.py): a flag per sample and per 1.6 stop, the
# station's rating, and an index for the per-sample register look-ups.
_V2_PLAUSIBILITY = """
ALTER TABLE meter_values ADD COLUMN flag TEXT;
ALTER TABLE transactions ADD COLUMN flag TEXT;
ALTER TABLE stations ADD COLUMN rated_power_w REAL;
CREATE INDEX meter_values_register ON meter_values(tx_pk, measurand, timestamp)
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2_PLAUSIBILITY)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was written by a newer backend; refusing to touch it."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; returns the version found before."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema v{found} is newer than this backend (v{SCHEMA_VERSION})")
    for version in range(found, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found
