"""PostgreSQL implementation of ``Repository``: the SQLite one's queries, on psycopg 3.

Why a translation rather than a second set of queries: the statements in ``storage.py``,
``sql_tx.py`` and ``plausibility.py`` are the behaviour (idempotency, plausibility, energy);
two copies would drift. ``PgConnection`` gives them the small part of ``sqlite3.Connection``
they use (``execute`` → cursor with ``fetchone/fetchall/rowcount/lastrowid/description``) and
rewrites the few SQLite spellings (``?``, ``INSERT OR IGNORE``, scalar ``MAX``). Parameters are
bound by the server (statements planned once, prepared after a few uses) except in the few
statements whose parameter types PostgreSQL cannot infer (``? IS NULL``): those are found at
their first use and bound client-side from then on, as SQLite would take them.

The worker thread, group commit and durability contract are ``SqliteRepository``'s: one
``BEGIN … COMMIT`` per batch, a SAVEPOINT per job, futures resolved after the commit; here
with several threads, each with its own connection. One exception to "the same queries":
a TransactionEvent, the message that dominates the load, is one call of a PL/pgSQL function
(``pg_functions.py``) rather than ~11 statements, each a round trip.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import structlog
from psycopg import pq

from ocpp_server import sql_tx
from ocpp_server.migrations import MIGRATIONS, SCHEMA_VERSION, SchemaTooNew, pg_ddl
from ocpp_server.pg_functions import FUNCTIONS, TX_EVENT_SQL
from ocpp_server.storage import SqliteRepository, _Job, _set_results
from ocpp_server.timeutil import norm_ts, now_iso

log = structlog.get_logger("ocpp_server.pg_storage")

# Tables whose rows have a generated ``id``: an INSERT into them reports it as ``lastrowid``.
_SERIAL = re.compile(r"^\s*INSERT\s+(?:OR\s+IGNORE\s+)?INTO\s+(connections|status_history|"
                     r"transactions|transaction_events|meter_values|charging_profiles|"
                     r"security_events|messages)\b", re.I)
_MIGRATION_LOCK = 0x6D77_6373  # pg_advisory_xact_lock key: one migrator at a time ("mwcs")


def translate(sql: str) -> str:
    """SQLite statement → PostgreSQL statement (only the spellings this backend uses)."""
    out = sql.replace("%", "%%").replace("?", "%s")
    out = re.sub(r"^\s*BEGIN\s+IMMEDIATE\b", "BEGIN", out, flags=re.I)
    out = out.replace("MAX(COALESCE(last_seq_no, -1),", "GREATEST(COALESCE(last_seq_no, -1),")
    ignore = re.match(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO", out, flags=re.I)
    if ignore:
        out = "INSERT INTO" + out[ignore.end():] + " ON CONFLICT DO NOTHING"
    if _SERIAL.match(sql) and "RETURNING" not in out.upper():
        out += " RETURNING id"
    return out


class PgCursor:
    """The sqlite3.Cursor surface the queries use, over a psycopg cursor."""

    def __init__(self, cur: psycopg.Cursor[Any] | None, returning_id: bool) -> None:
        """``cur`` None: a statement deferred to the next round trip (no rows, ever)."""
        self._cur = cur
        self.rowcount = -1 if cur is None else cur.rowcount
        self.lastrowid: int | None = None
        if cur is not None and returning_id and cur.description is not None:
            rows = cur.fetchall()
            self.lastrowid = int(rows[0][0]) if rows else None

    @property
    def description(self) -> Sequence[Any] | None:
        return None if self._cur is None else self._cur.description

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cur.fetchone() if self.description is not None else None  # type: ignore[union-attr]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall() if self.description is not None else []  # type: ignore[union-attr]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


class PgConnection:
    """The sqlite3.Connection surface the queries use; autocommit, explicit BEGIN/COMMIT."""

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True)
        self._deferred: list[str] = []  # see ``_DEFERRABLE``
        self._cache: dict[str, tuple[str, bool]] = {}
        # Per statement: bound by the server (True: planned once, prepared after a few uses)
        # or client-side (False: a parameter whose type only its value tells, ``? IS NULL``).
        self._server: dict[str, bool] = {}

    @property
    def in_transaction(self) -> bool:
        if self.broken:
            return False
        return self._conn.info.transaction_status != pq.TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        return self._conn.closed or self._conn.broken

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        if sql in _DEFERRABLE:
            self._deferred.append(sql)
            return PgCursor(None, False)
        hit = self._cache.get(sql)
        if hit is None:
            query = translate(sql)
            hit = (query, bool(_SERIAL.match(sql)) and "RETURNING" not in sql.upper())
            if len(self._cache) < 512:
                self._cache[sql] = hit
        query, returning = hit
        try:
            if self._deferred:
                if not params or self._server.get(sql):  # one round trip for all
                    return PgCursor(self._pipelined(query, tuple(params)), returning)
                self._flush()
            return PgCursor(self._run(sql, query, tuple(params)), returning)
        except psycopg.IntegrityError as exc:  # storage.py's callers catch the sqlite3 one
            raise sqlite3.IntegrityError(str(exc).splitlines()[0]) from exc

    def _pipelined(self, query: str, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        """The deferred statements and this one in one pipeline: one round trip."""
        deferred, self._deferred = self._deferred, []
        with self._conn.pipeline():
            for statement in deferred:
                self._conn.execute(statement)
            cur = self._conn.execute(query, params)
        return cur

    def _flush(self) -> None:
        deferred, self._deferred = self._deferred, []
        with self._conn.pipeline():
            for statement in deferred:
                self._conn.execute(statement)

    def _run(self, sql: str, query: str, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        mode = self._server.get(sql)
        if not params or mode is False:  # utility statements (BEGIN, SAVEPOINT) included
            cur: psycopg.Cursor[Any] = psycopg.ClientCursor(self._conn)
            cur.execute(query, params)
            return cur
        if mode:
            return self._conn.execute(query, params)
        # First use: try server-side binding; inside a transaction under a savepoint, so a
        # type PostgreSQL cannot infer costs only this attempt.
        probe = self.in_transaction
        if probe:
            self._conn.execute("SAVEPOINT bind_probe")
        try:
            cur = self._conn.execute(query, params)
        except _UNTYPED:
            if probe:
                self._conn.execute("ROLLBACK TO SAVEPOINT bind_probe")
                self._conn.execute("RELEASE SAVEPOINT bind_probe")
            self._server[sql] = False
            return self._run(sql, query, params)
        if probe:
            self._conn.execute("RELEASE SAVEPOINT bind_probe")
        self._server[sql] = True
        return cur

    def close(self) -> None:
        self._conn.close()


# The group commit's per-job SAVEPOINT and RELEASE (storage.py): they cannot fail on a live
# connection and return nothing, so they wait and travel with the next statement in one
# pipeline. A job (a TransactionEvent: one function call) then costs one round trip, not
# three; an error in that statement still surfaces in its own job, after its SAVEPOINT.
_DEFERRABLE = frozenset({"SAVEPOINT job", "RELEASE job"})

_UNTYPED = (psycopg.errors.IndeterminateDatatype, psycopg.errors.UndefinedFunction,
            psycopg.errors.DatatypeMismatch, psycopg.errors.AmbiguousFunction)


def migrate_pg(conn: PgConnection) -> int:
    """Bring a PostgreSQL schema to ``SCHEMA_VERSION``; returns the version found before.

    The version lives in ``schema_version``; an advisory lock makes instances that start at
    once migrate one after the other (the second finds nothing to do).
    """
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        found = 0 if row is None else int(row[0])
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database schema v{found} is newer than this backend (v{SCHEMA_VERSION})")
        for version in range(found, SCHEMA_VERSION):
            for statement in pg_ddl(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute("UPDATE schema_version SET version=?", (version + 1,))
        for statement in FUNCTIONS:  # versioned names: an older instance keeps its own
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if not conn.broken and conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


class PostgresRepository(SqliteRepository):
    """``Repository`` on PostgreSQL; ``url`` is a libpq URL (``postgresql://user@host/db``)."""

    def __init__(self, url: str, *, workers: int = 4, **kw: Any) -> None:
        """``workers``: storage threads, each with its own connection and group commit. Unlike
        SQLite (one writer), PostgreSQL commits concurrent transactions in parallel, and each
        statement is a network round trip: one thread would wait on the wire, not work.
        A station's CALLs are sequential, so its own writes never race each other."""
        super().__init__(url, "FULL", **kw)
        self._url = url
        self._workers = max(1, workers)
        self._extra: list[threading.Thread] = []

    async def open(self) -> None:
        await super().open()  # the first worker migrates; the others find nothing to do
        for i in range(1, self._workers):
            t = threading.Thread(target=self._worker, name=f"csms-pg-{i}", daemon=True)
            t.start()
            self._extra.append(t)

    async def close(self) -> None:
        for _ in range(len(self._extra) + 1):  # any worker may take any of these
            self._queue.put(None)
        for t in self._extra:
            await asyncio.to_thread(t.join)
        self._extra.clear()
        await super().close()

    def _connect(self) -> sqlite3.Connection:
        conn = PgConnection(self._url)
        try:
            migrate_pg(conn)
        except BaseException:
            conn.close()
            raise
        return conn  # type: ignore[return-value]  # duck-typed: see PgConnection

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        pg: PgConnection = conn  # type: ignore[assignment]
        pg._deferred.clear()  # nothing of an earlier batch is left to send
        if pg.broken:  # the server restarted or the link dropped: the batch fails, next works
            try:
                pg._conn = psycopg.connect(self._url, autocommit=True)
            except psycopg.OperationalError as exc:
                log.error("postgres_reconnect_failed", error=str(exc))
        try:
            super()._run_batch(conn, batch)
        except Exception as exc:  # the link died mid-batch (even ROLLBACK failed)
            log.error("postgres_batch_failed", error=str(exc), jobs=len(batch))
            failed: dict[Any, list[tuple[Any, bool, Any]]] = {}
            for _, fut, loop in batch:
                failed.setdefault(loop, []).append((fut, False, exc))
            for loop, done in failed.items():
                loop.call_soon_threadsafe(_set_results, done)

    async def record_transaction_event(self, station_id: str, payload: dict[str, Any]) -> bool:
        """One statement per event (``pg_functions.py``) instead of ~11 round trips."""
        def fn(c: sqlite3.Connection) -> list[str] | None:
            row = c.execute(TX_EVENT_SQL, _tx_event_params(
                station_id, payload, self._default_w, self._margin)).fetchone()
            return None if row is None or row[0] is None else list(row[0])
        flags = await self._run(fn)
        if flags is None:
            return False
        self._count(flags)
        return True

    async def adopt_remote_start_token(self, station_id: str, transaction_id: str,
                                       remote_start_id: int) -> str | None:
        def fn(c: sqlite3.Connection) -> str | None:
            row = c.execute(
                "SELECT payload::jsonb #>> '{idToken,idToken}' FROM messages WHERE"
                " station_id=? AND action='RequestStartTransaction' AND"
                " payload::jsonb -> 'remoteStartId' = to_jsonb(?::bigint)"
                " ORDER BY id DESC LIMIT 1", (station_id, remote_start_id)).fetchone()
            if row is None or row[0] is None:
                return None
            c.execute("UPDATE transactions SET id_token=? WHERE station_id=? AND"
                      " transaction_id=? AND id_token IS NULL",
                      (row[0], station_id, transaction_id))
            return str(row[0])
        return await self._run(fn)


def _tx_event_params(station_id: str, p: dict[str, Any], default_w: float,
                     margin: float) -> tuple[Any, ...]:
    """``sql_tx.transaction_event``'s inputs, normalised in Python the same way, as the
    parameters of ``TX_EVENT_SQL``."""
    info = p["transactionInfo"]
    evse = p.get("evse") or {}
    ts = norm_ts(p["timestamp"]) or now_iso()
    samples = []
    for mv in p.get("meterValue") or []:
        mts = norm_ts(mv.get("timestamp")) or now_iso()
        for sample in mv.get("sampledValue", []):
            m, phase, loc, ctx, unit, value = sql_tx._sample_row(sample)
            samples.append([mts, m, phase, loc, ctx, unit, _json_float(value),
                            json.dumps(sample, separators=(",", ":"))])
    return (station_id, info["transactionId"], p["seqNo"], p["eventType"],
            p.get("triggerReason"), ts, json.dumps(p, separators=(",", ":")), now_iso(),
            evse.get("id"), evse.get("connectorId"),
            (p.get("idToken") or {}).get("idToken"), info.get("stoppedReason"),
            info.get("chargingState"), default_w, margin,
            json.dumps(samples, separators=(",", ":")))


def _json_float(value: float | None) -> float | str | None:
    """A value JSON can carry: ±inf as PostgreSQL's spelling, NaN as NULL (what SQLite
    stores for a NaN)."""
    if value is None or math.isnan(value):
        return None
    return value if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
