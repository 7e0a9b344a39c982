"""The station's OCPP database: one schema for both versions, versioned by ``PRAGMA
user_version`` (as ``ocpp_server/migrations.py``).

Every part that keeps state in the database (queue, transactions, device model or 1.6
configuration keys, profiles, auth cache, availability, boot reason) calls :func:`migrate`
before its first statement instead of creating its own table: the schema is read in one
place, and a database from an older release is brought up to date in order, once.

Never edit a released step: append a new one. Each step runs in one transaction. Step 1 is
the layout before versioning (every table ``IF NOT EXISTS``), so a database written by that
code (``user_version`` 0, some tables present) is adopted with its rows as they are.
"""

from __future__ import annotations

import sqlite3

_V1 = """
CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL, payload TEXT NOT NULL, periodic INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS availability (evse INTEGER PRIMARY KEY, operative INTEGER);
CREATE TABLE IF NOT EXISTS auth_cache (token TEXT PRIMARY KEY, status TEXT, expires REAL);
CREATE TABLE IF NOT EXISTS boot_reason (reason TEXT);
CREATE TABLE IF NOT EXISTS tx (gun INTEGER PRIMARY KEY, data TEXT);
CREATE TABLE IF NOT EXISTS device_model (component TEXT, evse INTEGER, connector INTEGER,
    name TEXT, instance TEXT, value TEXT,
    PRIMARY KEY (component, evse, connector, name, instance));
CREATE TABLE IF NOT EXISTS profiles (id INTEGER PRIMARY KEY, evse INTEGER, data TEXT);
CREATE TABLE IF NOT EXISTS v16_tx (gun INTEGER PRIMARY KEY, data TEXT);
CREATE TABLE IF NOT EXISTS v16_txmap (local INTEGER PRIMARY KEY, real INTEGER);
CREATE TABLE IF NOT EXISTS v16_config (key TEXT PRIMARY KEY, value TEXT);
"""

#: The steps in order; step ``i`` (1-based) brings ``user_version`` ``i - 1`` to ``i``.
MIGRATIONS: tuple[str, ...] = (_V1,)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was written by a newer release: refused rather than misread."""


def version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection) -> int:
    """Bring ``db`` to :data:`SCHEMA_VERSION` (a no-op when it is there); returns the
    version it had. Raises :class:`SchemaTooNew` for a database of a newer release."""
    found = version(db)
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(f"station database schema version {found} is newer than this "
                           f"release's {SCHEMA_VERSION}: refusing to use it")
    if db.in_transaction:  # a caller's open transaction must not be swallowed by ours
        db.commit()
    for step in range(found, SCHEMA_VERSION):
        statements = [s.strip() for s in MIGRATIONS[step].split(";") if s.strip()]
        try:
            db.execute("BEGIN IMMEDIATE")
            if version(db) > step:  # another connection migrated meanwhile
                db.execute("ROLLBACK")
                continue
            for sql in statements:
                db.execute(sql)
            db.execute(f"PRAGMA user_version = {step + 1}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return found


def open_db(path: str) -> sqlite3.Connection:
    """The station's OCPP database, migrated; WAL with synchronous=FULL, so a queued
    message survives a power loss."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    migrate(db)
    return db
