"""Authorization parts both versions share: the cache of the backend's answers, the
offline decision, and the start of every authorization (a waiting remote start wins).

:class:`AuthCache` keeps tokens the backend answered (SQLite table ``auth_cache``);
:func:`decide_authorization` is the C01 / 1.6 rule over cache, backend and offline flags;
:func:`claim_remote_start` is the first step of the station's authorizer in both versions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from controller.ocpp import storage
from controller.ocpp.ports import Log
from controller.ocpp.remote_start import RemoteStarts, Waiting

T = TypeVar("T")


class AuthCache:
    """Tokens the backend answered, with their status, until they expire (SQLite table
    ``auth_cache``); ``enabled`` and ``lifetime`` are read at every use (the backend may
    change them)."""

    def __init__(self, db: sqlite3.Connection, wall: Callable[[], datetime],
                 enabled: Callable[[], bool], lifetime: Callable[[], float]) -> None:
        self.db, self.wall, self.enabled, self.lifetime = db, wall, enabled, lifetime
        storage.migrate(db)

    def get(self, token: str) -> str | None:
        if not self.enabled():
            return None
        row = self.db.execute("SELECT status, expires FROM auth_cache WHERE token = ?",
                              (token,)).fetchone()
        if row is None or row[1] < self.wall().timestamp():
            return None
        return str(row[0])

    def put(self, token: str, status: str, until: datetime | None = None) -> None:
        """Remember ``status`` until ``until`` (the backend's expiry) or the lifetime."""
        if self.enabled():
            expires = self.wall().timestamp() + self.lifetime()
            if until is not None:
                expires = min(expires, until.timestamp())
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO auth_cache VALUES (?, ?, ?)",
                                (token, status, expires))

    def clear(self) -> None:
        with self.db:
            self.db.execute("DELETE FROM auth_cache")


async def decide_authorization(cached: str | None, pre_authorize: bool,
                               ask: Callable[[], Awaitable[str]] | None, local_offline: bool,
                               unknown_offline: bool, log: Log) -> bool:
    """The authorization rules of both versions: a cached Accepted token starts at once when
    local pre-authorization is on; else the backend is asked (``ask``, None when offline);
    when it cannot answer, the cache decides if local offline authorization is on, and an
    unknown token is let through only if offline transactions for unknown ids are allowed."""
    if cached == "Accepted" and pre_authorize:
        return True
    if ask is not None:
        try:
            return await ask() == "Accepted"
        except Exception as exc:
            log.warning("Authorize failed: offline rules apply", error=repr(exc)[:200])
    if cached is not None and local_offline:
        return cached == "Accepted"
    return unknown_offline


async def claim_remote_start(remote: RemoteStarts[T], g: int, now: float,
                             check: Callable[[T], Awaitable[bool]] | None,
                             take: Callable[[Waiting[T]], None], log: Log) -> bool | None:
    """The start of the station's authorizer, both versions: a remote start waiting for gun
    ``g`` (not expired at wall time ``now``) decides — refused when ``check`` (the version's
    AuthorizeRemoteStart / AuthorizeRemoteTxRequests rule, None when off) refuses its token,
    else ``take`` records it and the gun is authorized. None: no remote start was waiting,
    the version's own token check follows."""
    waiting = remote.take_waiting(g, now)
    if waiting is None:
        return None
    if check is not None and not await check(waiting.token):
        log.warning("remote start refused: token not authorized", gun=g)
        return False
    take(waiting)
    return True
