"""SQLite implementation of ``Repository``: one writer thread with group commit.

Every call becomes a job on a queue. The storage thread takes all waiting jobs, runs each in
its own SAVEPOINT (one bad job cannot spoil the others), commits once, and only then resolves
the callers' futures. So an OCPP handler that awaits a write answers its CALL after the data
is on disk (WAL, ``synchronous=FULL`` by default), and a thousand stations writing at once
cost one fsync rather than a thousand.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from ocpp_server import sql_tx
from ocpp_server.limits import check_tree, load_stored
from ocpp_server.migrations import migrate
from ocpp_server.plausibility import Limits, station_limits
from ocpp_server.repository import AlreadyExists, StationRecord, TokenRecord, TxFilter
from ocpp_server.throttle import CauseThrottle
from ocpp_server.timeutil import norm_ts, now_iso

log = structlog.get_logger("ocpp_server.storage")
T = TypeVar("T")
_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]
_MAX_BATCH = 512
_MAX_CACHED = 100_000  # station ratings kept in memory (a few MB)


def _set_results(done: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in done:
        if fut.done():  # the caller was cancelled
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


_unreadable = CauseThrottle(interval=300.0)


def _with_payload(row: dict[str, Any], text: str, key: str = "payload") -> dict[str, Any]:
    """``row`` with its stored JSON under ``key``; an unreadable one is None plus the reason."""
    value, error = load_stored(text)
    row[key] = value
    if error is not None:
        row[f"{key}_error"] = error
        allowed, suppressed = _unreadable.allow(key)  # only the storage thread gets here
        if allowed:
            log.error("stored_payload_unreadable", error=error, suppressed=suppressed)
    return row


class SqliteRepository:
    """The default ``Repository``; see the module docstring for the durability contract."""

    def __init__(self, path: str | Path, synchronous: str = "FULL", *,
                 rated_power_w: float = 3_750_000.0, plausibility_margin: float = 1.1,
                 on_flag: Callable[[str, int], None] | None = None) -> None:
        """``rated_power_w``: rating of stations without their own (plausibility.py);
        ``on_flag(reason, n)``: told, on the event loop, of implausible samples committed."""
        self._path = str(path)
        self._default_w, self._margin = rated_power_w, plausibility_margin
        self._on_flag = on_flag
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._ckpt: threading.Thread | None = None
        self._error: BaseException | None = None
        # Station ratings by id, read on every TransactionEvent; only the storage thread
        # touches it. Enabled by the SQLite connection (``_connect``), whose ``data_version``
        # tells when another connection (the CLI) committed: then it is dropped whole.
        self._ratings: dict[str, float | None] | None = None
        self._data_version = -1

    # engine -------------------------------------------------------------------------
    async def open(self) -> None:
        self._thread = threading.Thread(target=self._worker, name="csms-sqlite", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait)
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        self._closed.set()
        if self._ckpt is not None:
            await asyncio.to_thread(self._ckpt.join)
            self._ckpt = None

    def _connect(self) -> sqlite3.Connection:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")  # the CLI may write while we serve
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn)
        self._ratings = {}
        if self._path != ":memory:":
            # Checkpoints copy the WAL into the database and fsync it: tens of ms that would
            # delay every answer waiting on the commit that triggers one. A separate thread
            # does them instead (PASSIVE: never blocks the writer).
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._ckpt = threading.Thread(target=self._checkpointer, name="csms-checkpoint",
                                          daemon=True)
            self._ckpt.start()
        return conn

    def _checkpointer(self, period: float = 1.0) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=1000")
        try:
            while not self._closed.wait(period):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # busy: try again next period
                    log.warning("wal_checkpoint_failed", error=str(exc))
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def _worker(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # reported by open()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run_batch(conn, batch)
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[tuple[_Job, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._check_caches(conn)
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = job[0](conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    results.append((job, False, exc))
                else:
                    results.append((job, True, value))
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except Exception as exc:  # commit failed: nothing of this batch is confirmed
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(job, False, exc) for job in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, fut, loop), ok, value in results:
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, done in by_loop.items():  # one wake-up per loop and batch, not per job
            loop.call_soon_threadsafe(_set_results, done)

    def _check_caches(self, conn: sqlite3.Connection) -> None:
        """Drop the rating cache when another connection committed since the last batch."""
        if self._ratings is None:
            return
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:
            self._ratings.clear()
            self._data_version = version

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise RuntimeError("repository is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, fut, loop))
        return await fut

    # stations -----------------------------------------------------------------------
    @staticmethod
    def _station(row: tuple[Any, ...]) -> StationRecord:
        return StationRecord(id=row[0], password_hash=row[1], security_profile=row[2],
                             approved=bool(row[3]), ocpp_version=row[4], vendor=row[5],
                             model=row[6], serial_number=row[7], firmware_version=row[8],
                             created_at=row[9], last_boot_at=row[10], rated_power_w=row[11])

    _STATION_COLS = ("id, password_hash, security_profile, approved, ocpp_version, vendor, model,"
                     " serial_number, firmware_version, created_at, last_boot_at, rated_power_w")

    async def add_station(self, station: StationRecord) -> None:
        def fn(c: sqlite3.Connection) -> None:
            self._forget_rating(station.id)
            try:
                c.execute("INSERT INTO stations (id, password_hash, security_profile, approved,"
                          " created_at, rated_power_w) VALUES (?,?,?,?,?,?)",
                          (station.id, station.password_hash, station.security_profile,
                           int(station.approved), now_iso(), station.rated_power_w))
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"station {station.id!r} already exists") from exc
        await self._run(fn)

    async def get_station(self, station_id: str) -> StationRecord | None:
        def fn(c: sqlite3.Connection) -> StationRecord | None:
            row = c.execute(f"SELECT {self._STATION_COLS} FROM stations WHERE id=?",
                            (station_id,)).fetchone()
            return None if row is None else self._station(row)
        return await self._run(fn)

    async def list_stations(self) -> list[StationRecord]:
        def fn(c: sqlite3.Connection) -> list[StationRecord]:
            rows = c.execute(f"SELECT {self._STATION_COLS} FROM stations ORDER BY id").fetchall()
            return [self._station(r) for r in rows]
        return await self._run(fn)

    async def set_station_password(self, station_id: str, password_hash: str | None) -> bool:
        return await self._run(lambda c: c.execute(
            "UPDATE stations SET password_hash=? WHERE id=?", (password_hash, station_id)
        ).rowcount == 1)

    async def set_station_rating(self, station_id: str, rated_power_w: float | None) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            self._forget_rating(station_id)
            return c.execute("UPDATE stations SET rated_power_w=? WHERE id=?",
                             (rated_power_w, station_id)).rowcount == 1
        return await self._run(fn)

    async def set_station_approved(self, station_id: str, approved: bool) -> bool:
        return await self._run(lambda c: c.execute(
            "UPDATE stations SET approved=? WHERE id=?", (int(approved), station_id)
        ).rowcount == 1)

    async def record_boot(self, station_id: str, ocpp_version: str, info: dict[str, Any]) -> None:
        await self._run(lambda c: c.execute(
            "UPDATE stations SET ocpp_version=?, vendor=?, model=?, serial_number=?,"
            " firmware_version=?, last_boot_at=? WHERE id=?",
            (ocpp_version, info.get("vendor"), info.get("model"), info.get("serial_number"),
             info.get("firmware_version"), now_iso(), station_id)))

    # tokens -------------------------------------------------------------------------
    async def upsert_token(self, token: TokenRecord) -> None:
        await self._run(lambda c: c.execute(
            "INSERT INTO tokens (id_token, type, status, expiry, group_id, updated_at)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT(id_token) DO UPDATE SET type=excluded.type,"
            " status=excluded.status, expiry=excluded.expiry, group_id=excluded.group_id,"
            " updated_at=excluded.updated_at",
            (token.id_token, token.type, token.status, norm_ts(token.expiry), token.group_id,
             now_iso())))

    async def get_token(self, id_token: str) -> TokenRecord | None:
        def fn(c: sqlite3.Connection) -> TokenRecord | None:
            row = c.execute("SELECT id_token, type, status, expiry, group_id FROM tokens"
                            " WHERE id_token=?", (id_token,)).fetchone()
            return None if row is None else TokenRecord(*row)
        return await self._run(fn)

    async def list_tokens(self) -> list[TokenRecord]:
        return await self._run(lambda c: [TokenRecord(*r) for r in c.execute(
            "SELECT id_token, type, status, expiry, group_id FROM tokens ORDER BY id_token")])

    async def set_token_status(self, id_token: str, status: str) -> bool:
        return await self._run(lambda c: c.execute(
            "UPDATE tokens SET status=?, updated_at=? WHERE id_token=?",
            (status, now_iso(), id_token)).rowcount == 1)

    # connections and status ---------------------------------------------------------
    async def open_connection(self, station_id: str, protocol: str, remote: str,
                              security_profile: int) -> int:
        return await self._run(lambda c: int(c.execute(
            "INSERT INTO connections (station_id, protocol, remote, security_profile,"
            " connected_at) VALUES (?,?,?,?,?)",
            (station_id, protocol, remote, security_profile, now_iso())).lastrowid or 0))

    async def close_connection(self, connection_id: int, code: int | None) -> None:
        await self._run(lambda c: c.execute(
            "UPDATE connections SET disconnected_at=?, close_code=? WHERE id=?",
            (now_iso(), code, connection_id)))

    async def record_status(self, station_id: str, evse_id: int, connector_id: int,
                            status: str, error_code: str | None, timestamp: str) -> None:
        await self._run(lambda c: c.execute(
            "INSERT INTO status_history (station_id, evse_id, connector_id, status, error_code,"
            " timestamp, received_at) VALUES (?,?,?,?,?,?,?)",
            (station_id, evse_id, connector_id, status, error_code, norm_ts(timestamp),
             now_iso())))

    async def latest_statuses(self, station_id: str) -> list[dict[str, Any]]:
        def fn(c: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = c.execute(
                "SELECT evse_id, connector_id, status, error_code, timestamp FROM status_history"
                " WHERE id IN (SELECT MAX(id) FROM status_history WHERE station_id=?"
                " GROUP BY evse_id, connector_id) ORDER BY evse_id, connector_id",
                (station_id,)).fetchall()
            keys = ("evse_id", "connector_id", "status", "error_code", "timestamp")
            return [dict(zip(keys, r, strict=True)) for r in rows]
        return await self._run(fn)

    # transactions -------------------------------------------------------------------
    def _limits(self, c: sqlite3.Connection, station_id: str) -> Limits:
        """The station's plausibility limits; the rating is cached (one query less per
        TransactionEvent) and forgotten whenever it may have changed."""
        cache = self._ratings
        if cache is None:
            return station_limits(c, station_id, self._default_w, self._margin)
        if station_id not in cache:
            if len(cache) >= _MAX_CACHED:
                cache.clear()
            row = c.execute("SELECT rated_power_w FROM stations WHERE id=?",
                            (station_id,)).fetchone()
            cache[station_id] = None if row is None or row[0] is None else float(row[0])
        rating = cache[station_id]
        return Limits(self._default_w if rating is None else rating, self._margin)

    def _forget_rating(self, station_id: str) -> None:
        if self._ratings is not None:
            self._ratings.pop(station_id, None)

    def _count(self, flags: list[str]) -> None:
        """Report flags once their job committed (the future resolved without error)."""
        if self._on_flag is not None:
            for reason in set(flags):
                self._on_flag(reason, flags.count(reason))

    async def record_transaction_event(self, station_id: str, payload: dict[str, Any]) -> bool:
        flags: list[str] = []
        new = await self._run(lambda c: sql_tx.transaction_event(
            c, station_id, payload, self._limits(c, station_id), flags))
        self._count(flags)
        return new

    async def start_transaction_v16(self, station_id: str, payload: dict[str, Any]) -> int:
        return await self._run(lambda c: sql_tx.start_v16(c, station_id, payload))

    async def stop_transaction_v16(self, station_id: str, payload: dict[str, Any]) -> bool:
        flags: list[str] = []
        found = await self._run(lambda c: sql_tx.stop_v16(
            c, station_id, payload, self._limits(c, station_id), flags))
        self._count(flags)
        return found

    async def record_meter_values(self, station_id: str, evse_id: int,
                                  transaction_id: str | None,
                                  meter_values: list[dict[str, Any]], source: str) -> None:
        flags: list[str] = []

        def fn(c: sqlite3.Connection) -> None:
            tx_pk = (None if transaction_id is None
                     else sql_tx.find_tx_pk(c, station_id, transaction_id))
            sql_tx.insert_meter_values(c, station_id, tx_pk, evse_id, meter_values, source,
                                       self._limits(c, station_id), flags)
        await self._run(fn)
        self._count(flags)

    async def list_transactions(self, flt: TxFilter) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (("station_id = ?", flt.station_id), ("id_token = ?", flt.id_token),
                              ("started_at >= ?", norm_ts(flt.since)),
                              ("started_at < ?", norm_ts(flt.until))):
            if value is not None:
                where.append(clause)
                args.append(value)
        if flt.active is not None:
            where.append("ended_at IS NULL" if flt.active else "ended_at IS NOT NULL")
        return await self._run(lambda c: sql_tx.list_transactions(
            c, where, args, flt.limit, flt.offset))

    async def get_transaction(self, tx_pk: int) -> dict[str, Any] | None:
        return await self._run(lambda c: sql_tx.get_transaction(c, tx_pk))

    # the rest -----------------------------------------------------------------------
    async def record_message(self, station_id: str, action: str, payload: dict[str, Any]) -> None:
        check_tree(payload)  # never store what a later read could not give back (limits.py)
        await self._run(lambda c: c.execute(
            "INSERT INTO messages (station_id, action, payload, received_at) VALUES (?,?,?,?)",
            (station_id, action, json.dumps(payload, separators=(",", ":")), now_iso())))

    async def adopt_remote_start_token(self, station_id: str, transaction_id: str,
                                       remote_start_id: int) -> str | None:
        def fn(c: sqlite3.Connection) -> str | None:
            row = c.execute(
                "SELECT json_extract(payload, '$.idToken.idToken') FROM messages WHERE"
                " station_id=? AND action='RequestStartTransaction' AND"
                " json_extract(payload, '$.remoteStartId')=? ORDER BY id DESC LIMIT 1",
                (station_id, remote_start_id)).fetchone()
            if row is None or row[0] is None:
                return None
            c.execute("UPDATE transactions SET id_token=? WHERE station_id=? AND"
                      " transaction_id=? AND id_token IS NULL",
                      (row[0], station_id, transaction_id))
            return str(row[0])
        return await self._run(fn)

    async def list_messages(self, station_id: str, action: str | None = None,
                            limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
        def fn(c: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = c.execute(
                "SELECT action, payload, received_at FROM messages WHERE station_id=? AND"
                " (? IS NULL OR action=?) ORDER BY id LIMIT ? OFFSET ?",
                (station_id, action, action, limit, offset)).fetchall()
            return [_with_payload({"action": a, "received_at": t}, p) for a, p, t in rows]
        return await self._run(fn)

    async def record_security_event(self, station_id: str, type_: str, timestamp: str,
                                    tech_info: str | None) -> None:
        await self._run(lambda c: c.execute(
            "INSERT INTO security_events (station_id, type, timestamp, tech_info, received_at)"
            " VALUES (?,?,?,?,?)", (station_id, type_, norm_ts(timestamp), tech_info, now_iso())))

    async def list_security_events(self, station_id: str) -> list[dict[str, Any]]:
        def fn(c: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = c.execute("SELECT type, timestamp, tech_info, received_at FROM"
                             " security_events WHERE station_id=? ORDER BY id",
                             (station_id,)).fetchall()
            keys = ("type", "timestamp", "tech_info", "received_at")
            return [dict(zip(keys, r, strict=True)) for r in rows]
        return await self._run(fn)

    async def record_charging_profile(self, station_id: str, evse_id: int,
                                      profile: dict[str, Any], status: str) -> None:
        check_tree(profile)
        await self._run(lambda c: c.execute(
            "INSERT INTO charging_profiles (station_id, evse_id, profile_id, payload, status,"
            " sent_at) VALUES (?,?,?,?,?,?)",
            (station_id, evse_id, profile.get("id", profile.get("chargingProfileId")),
             json.dumps(profile, separators=(",", ":")), status, now_iso())))

    async def list_charging_profiles(self, station_id: str) -> list[dict[str, Any]]:
        def fn(c: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = c.execute("SELECT evse_id, profile_id, payload, status, sent_at FROM"
                             " charging_profiles WHERE station_id=? ORDER BY id",
                             (station_id,)).fetchall()
            return [_with_payload({"evse_id": e, "profile_id": i, "status": s, "sent_at": t}, p,
                                  "profile") for e, i, p, s, t in rows]
        return await self._run(fn)
