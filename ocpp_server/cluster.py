"""Several backend instances on one PostgreSQL database: who holds which station, and
commands for a station held by another instance.

Why PostgreSQL LISTEN/NOTIFY (docs/scaling.md): the instances already share the database,
so presence and routing need no second service to deploy, secure and fail over; NOTIFY is
transactional and reaches every listener in well under a millisecond on a LAN. Its limits
(payload ≤ 8,000 bytes, no persistence) fit a request/response with a timeout: a larger
message goes through the ``cluster_mail`` table and the NOTIFY carries only its key, and a
message lost with a crashed instance is a command that times out (504), as it would be if
the station itself had gone.

Presence: each instance upserts ``station_presence(station_id, instance, protocol,
expires_at)`` for the stations it holds (batched every 100 ms, so a storm of reconnects is a
few statements, not one per station), refreshes its rows every ``presence_ttl / 3`` and
deletes them on disconnect. A crashed instance stops refreshing: its rows expire after
``presence_ttl`` and the station, reconnecting through the proxy, is upserted by its new
holder at once. Every instance keeps the table in memory (NOTIFY ``csms_presence`` plus a
reload each refresh), so the API's "is it connected" is a dictionary look-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import structlog
from ocpp.exceptions import OCPPError
from psycopg import sql

from ocpp_server.repository import Repository
from ocpp_server.session import OutgoingInvalid, Session, StationCallError, StationGone

log = structlog.get_logger("ocpp_server.cluster")
PRESENCE_CHANNEL = "csms_presence"
_NOTIFY_MAX = 7900  # PostgreSQL's limit is 8,000 bytes
_NOW = "extract(epoch from clock_timestamp())"


def channel_of(instance: str) -> str:
    """An instance's command channel: a valid identifier whatever the instance name."""
    return "csms_" + hashlib.sha1(instance.encode()).hexdigest()[:20]


class RemoteSession(Session):
    """A station held by another instance, as the API's commands see it.

    ``vet_call`` runs here (schema, limits: 422 without a round trip); ``call_raw`` goes to
    the holder, which sends the CALL and returns the station's answer or its error.
    """

    def __init__(self, cluster: Cluster, station_id: str, instance: str, protocol: str,
                 repo: Repository) -> None:  # no ChargePoint: there is no socket here
        self.cluster, self.id, self.instance = cluster, station_id, instance
        self.subprotocol = protocol
        self._ocpp_version = "1.6" if protocol == "ocpp1.6" else "2.0.1"
        self.repo = repo
        self.approved = True  # the holder tracks it: ``approved_here`` asks it to act

    async def approved_here(self) -> None:
        """The station was approved through this instance: the holder, if it still holds
        it Pending, asks it to boot again now (TriggerMessage BootNotification)."""
        await self.cluster.send_approved(self.instance, self.id)

    async def call_raw(self, action: str, payload: dict[str, Any],
                       timeout: float | None = None) -> dict[str, Any]:
        await self.vet_call(action, payload)
        return await self.cluster.call(self.instance, self.id, action, payload, timeout)

    def status(self) -> dict[str, Any]:
        return {"connected": True, "protocol": self.subprotocol, "instance": self.instance}


class Cluster:
    """Presence registry and command routing over LISTEN/NOTIFY; one per instance."""

    def __init__(self, url: str, sessions: dict[str, Session], repo: Repository, *,
                 instance: str = "", ttl: float = 30.0, call_timeout: float = 30.0) -> None:
        self.url, self.sessions, self.repo = url, sessions, repo
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self.channel = channel_of(self.instance)
        self.ttl, self.call_timeout = ttl, call_timeout
        self.presence: dict[str, tuple[str, str]] = {}  # station -> (instance, protocol)
        self._pending: dict[str, str | None] = {}  # station -> protocol (None: left)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._listen: psycopg.AsyncConnection[Any] | None = None
        self._write: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_reload: Callable[[], None] | None = None

    # lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        self._write = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        await self._write.execute("DELETE FROM station_presence WHERE instance=%s",
                                  (self.instance,))  # a restarted instance of the same name
        await self._connect_listener()
        await self._reload()
        for coro in (self._listen_loop(), self._flush_loop(), self._refresh_loop()):
            self._spawn(coro)
        log.info("cluster_joined", instance=self.instance, channel=self.channel,
                 stations_elsewhere=len(self.presence))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            if self._write is not None and not self._write.closed:
                await self._write.execute("DELETE FROM station_presence WHERE instance=%s",
                                          (self.instance,))
        for conn in (self._listen, self._write):
            if conn is not None:
                await conn.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_listener(self) -> None:
        self._listen = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        for ch in (self.channel, PRESENCE_CHANNEL):
            await self._listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ch)))

    async def _listen_loop(self) -> None:
        while True:
            try:
                assert self._listen is not None
                async for note in self._listen.notifies():
                    self._on_note(note.channel, note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: reconnect, then resync
                log.warning("cluster_listener_lost", error=str(exc)[:200])
                await asyncio.sleep(1.0)
                try:
                    await self._connect_listener()
                    await self._reload()
                except Exception as again:  # still down: the next pass of the loop retries
                    log.warning("cluster_listener_reconnect_failed", error=str(again)[:200])

    # presence -----------------------------------------------------------------------
    def station_connected(self, station_id: str, protocol: str) -> None:
        self._pending[station_id] = protocol

    def station_left(self, station_id: str) -> None:
        self._pending[station_id] = None

    def locate(self, station_id: str) -> RemoteSession | None:
        """The station's holder if it is another live instance."""
        where = self.presence.get(station_id)
        if where is None or where[0] == self.instance:
            return None
        return RemoteSession(self, station_id, where[0], where[1], self.repo)

    async def _execute(self, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
        assert self._write is not None
        async with self._lock:
            if self._write.closed or self._write.broken:
                self._write = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            cur = await self._write.execute(query, params)
            return await cur.fetchall() if cur.description is not None else []

    async def _flush_loop(self, period: float = 0.1) -> None:
        while True:
            await asyncio.sleep(period)
            if not self._pending:
                continue
            batch, self._pending = self._pending, {}
            try:
                await self._flush(batch)
            except Exception as exc:  # retried with the next batch; expiry covers the rest
                log.warning("presence_flush_failed", error=str(exc)[:200], stations=len(batch))
                self._pending = {**batch, **self._pending}
                await asyncio.sleep(1.0)

    async def _flush(self, batch: dict[str, str | None]) -> None:
        here = [(s, p) for s, p in batch.items() if p is not None]
        gone = [s for s, p in batch.items() if p is None]
        if here:
            await self._execute(
                "INSERT INTO station_presence (station_id, instance, protocol, expires_at)"
                f" SELECT s, %s, p, {_NOW} + %s FROM unnest(%s::text[], %s::text[]) AS x(s, p)"
                " ON CONFLICT (station_id) DO UPDATE SET instance=excluded.instance,"
                " protocol=excluded.protocol, expires_at=excluded.expires_at",
                (self.instance, self.ttl, [s for s, _ in here], [p for _, p in here]))
        if gone:
            await self._execute("DELETE FROM station_presence WHERE instance=%s AND"
                                " station_id = ANY(%s::text[])", (self.instance, gone))
        note = json.dumps({"i": self.instance, "up": here, "down": gone},
                          separators=(",", ":"))
        if len(note.encode()) > _NOTIFY_MAX:
            note = json.dumps({"i": self.instance, "reload": True})
        await self._execute("SELECT pg_notify(%s, %s)", (PRESENCE_CHANNEL, note))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self._execute(f"UPDATE station_presence SET expires_at={_NOW} + %s"
                                    " WHERE instance=%s", (self.ttl, self.instance))
                await self._execute(f"DELETE FROM cluster_mail WHERE created_at < {_NOW} - %s",
                                    (self.ttl * 4,))
                await self._reload()
            except Exception as exc:
                log.warning("presence_refresh_failed", error=str(exc)[:200])

    async def _reload(self) -> None:
        rows = await self._execute("SELECT station_id, instance, protocol FROM"
                                   f" station_presence WHERE expires_at > {_NOW}")
        self.presence = {s: (i, p) for s, i, p in rows}
        for station_id, protocol in self._pending.items():  # not flushed yet: ours
            if protocol is not None:
                self.presence[station_id] = (self.instance, protocol)
        if self.on_reload is not None:
            self.on_reload()

    def _on_presence(self, msg: dict[str, Any]) -> None:
        inst = str(msg.get("i"))
        if msg.get("reload"):
            self._spawn(self._reload())
            return
        for station_id, protocol in msg.get("up", []):
            self.presence[station_id] = (inst, protocol)
        for station_id in msg.get("down", []):
            if self.presence.get(station_id, ("",))[0] == inst:
                del self.presence[station_id]

    # commands -----------------------------------------------------------------------
    async def _send(self, channel: str, msg: dict[str, Any]) -> None:
        text = json.dumps(msg, separators=(",", ":"))
        if len(text.encode()) > _NOTIFY_MAX:  # too large for NOTIFY: leave it in the table
            key = uuid.uuid4().hex
            await self._execute(f"INSERT INTO cluster_mail (id, body, created_at) VALUES"
                                f" (%s, %s, {_NOW})", (key, text))
            text = json.dumps({"mail": key})
        await self._execute("SELECT pg_notify(%s, %s)", (channel, text))

    def _on_note(self, channel: str, payload: str) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            log.warning("cluster_note_unreadable", channel=channel)
            return
        if channel == PRESENCE_CHANNEL:
            self._on_presence(msg)
        elif "mail" in msg:
            self._spawn(self._fetch_mail(str(msg["mail"])))
        else:
            self._dispatch(msg)

    async def _fetch_mail(self, key: str) -> None:
        rows = await self._execute("DELETE FROM cluster_mail WHERE id=%s RETURNING body", (key,))
        if rows:
            self._dispatch(json.loads(rows[0][0]))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg.get("k") == "call":
            self._spawn(self._serve_call(msg))
        elif msg.get("k") == "approved":
            session = self.sessions.get(str(msg.get("st")))
            if session is not None and not session.approved:
                self._spawn(retrigger_boot(session))
        elif msg.get("k") == "res":
            fut = self._waiting.pop(str(msg.get("id")), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def send_approved(self, instance: str, station_id: str) -> None:
        """Tell ``instance`` that ``station_id`` was approved (no answer: as a local
        approval, the boot it triggers is the station's business)."""
        await self._send(channel_of(instance), {"k": "approved", "st": station_id})

    async def call(self, instance: str, station_id: str, action: str,
                   payload: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """Have ``instance`` send the CALL; its answer, or the error the local call raises."""
        wait = timeout or self.call_timeout
        call_id = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = fut
        try:
            try:
                await self._send(channel_of(instance), {
                    "k": "call", "id": call_id, "to": self.channel, "st": station_id,
                    "a": action, "p": payload, "t": wait})
            except psycopg.Error as exc:  # the database is away: no instance can be asked
                raise StationGone(f"station {station_id} is held by instance {instance},"
                                  f" which cannot be reached now: {exc}") from exc
            async with asyncio.timeout(wait + 2.0):  # the holder's own timeout comes first
                res = await fut
        finally:
            self._waiting.pop(call_id, None)
        err = res.get("err")
        if err is None:
            return dict(res["ok"])
        if err == "gone":
            raise StationGone(str(res.get("msg")))
        if err == "timeout":
            raise TimeoutError(str(res.get("msg")))
        if err == "callerror":
            raise StationCallError(str(res["code"]), str(res["msg"]), res.get("details"))
        if err == "invalid":
            raise OutgoingInvalid(str(res.get("msg")), res.get("details") or {})
        raise StationCallError("InternalError", f"instance {instance}: {res.get('msg')}", {})

    async def _serve_call(self, msg: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"k": "res", "id": msg.get("id")}
        session = self.sessions.get(str(msg.get("st")))
        try:
            if session is None:
                raise StationGone(f"station {msg.get('st')!r} is not connected")
            reply["ok"] = await session.call_raw(str(msg["a"]), dict(msg["p"]),
                                                 float(msg.get("t") or self.call_timeout))
        except StationGone as exc:
            reply.update(err="gone", msg=str(exc))
        except TimeoutError:
            reply.update(err="timeout", msg="the station did not answer in time")
        except StationCallError as exc:
            reply.update(err="callerror", code=exc.code, msg=exc.description,
                         details=exc.details)
        except OCPPError as exc:
            reply.update(err="invalid", msg=f"{exc.code}: {exc.description}",
                         details=exc.details)
        except Exception as exc:
            log.exception("remote_call_failed", station_id=msg.get("st"))
            reply.update(err="internal", msg=type(exc).__name__)
        try:
            await self._send(str(msg["to"]), reply)
        except Exception as exc:  # the caller times out and answers its client; log why
            log.warning("remote_reply_not_sent", to=msg.get("to"), error=str(exc)[:200])

    def snapshot(self) -> dict[str, Any]:
        """For /healthz and the metrics: this instance and the stations per instance."""
        per: dict[str, int] = {}
        for inst, _ in self.presence.values():
            per[inst] = per.get(inst, 0) + 1
        return {"instance": self.instance, "stations_per_instance": per,
                "pending": len(self._pending), "waiting": len(self._waiting),
                "at": time.time()}


async def retrigger_boot(session: Session) -> None:
    """Ask a Pending station to boot again now rather than at its next retry; a refusal or
    no answer only delays its approval until that retry, so it is logged, not raised."""
    from ocpp_server import commands

    try:
        await commands.trigger_message(session, "BootNotification")
    except Exception as exc:
        log.info("boot_retrigger_failed", station_id=session.id, error=str(exc)[:200])
