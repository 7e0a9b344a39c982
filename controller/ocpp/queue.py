"""The persistent message queue (E11–E13): written before sending, removed on confirmation.

Every TransactionEvent (and every other message that must survive being offline:
SecurityEventNotification, NotifyChargingLimit) is inserted into the ``queue`` table of the
OCPP database *before* it is sent. The sender takes the oldest row, sends it, and deletes it
only when the backend answered with a CallResult; rows are sent strictly in insertion order.

Bound: at most ``limit`` rows. When a new message would exceed it, the oldest *periodic*
TransactionEvent (eventType Updated, triggerReason MeterValuePeriodic/MeterValueClock) is
dropped first (the backend sees the gap in ``seqNo``); then the oldest non-transaction
message other than a SecurityEventNotification (all the station raises are critical,
Appendix 1). Started/Ended events and security events are never dropped: if only those are
left, the bound is exceeded and a warning logged (a station runs out of transactions long
before it runs out of disk at that point). The OCPP 1.6 client passes its own rule
(``kept``, ``periodic``): StartTransaction / StopTransaction kept, transaction MeterValues
first to go.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller import logs
from controller.ocpp import storage

_PERIODIC = ("MeterValuePeriodic", "MeterValueClock")


def _periodic_201(action: str, payload: dict[str, Any]) -> bool:
    return (action == "TransactionEvent" and payload.get("eventType") == "Updated"
            and payload.get("triggerReason") in _PERIODIC)


@dataclass(frozen=True, slots=True)
class Queued:
    id: int
    action: str
    payload: dict[str, Any]
    attempts: int


class MessageQueue:
    """FIFO of messages in SQLite; safe against a controller restart at any point."""

    def __init__(self, db: sqlite3.Connection, limit: int = 10_000, *,
                 kept: tuple[str, ...] = ("TransactionEvent", "SecurityEventNotification"),
                 periodic: Callable[[str, dict[str, Any]], bool] | None = None) -> None:
        """``kept``: actions never dropped for room, ``periodic``: which messages go first
        (defaults: OCPP 2.0.1; the 1.6 client passes its transaction messages)."""
        self.db = db
        self.limit = limit
        self.kept = kept
        self.periodic = periodic or _periodic_201
        self.dropped = 0
        self.log = logs.get_logger("controller.ocpp.queue")
        storage.migrate(db)

    def __len__(self) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM queue").fetchone()
        return int(row[0])

    def put(self, action: str, payload: dict[str, Any],
            also: Callable[[], None] | None = None) -> int:
        """Persist one message (committed when this returns); returns its row id.
        ``also`` runs in the same SQLite transaction (e.g. the seqNo update)."""
        periodic = self.periodic(action, payload)
        with self.db:
            if len(self) >= self.limit:
                self._make_room()
            cur = self.db.execute(
                "INSERT INTO queue (action, payload, periodic) VALUES (?, ?, ?)",
                (action, json.dumps(payload, separators=(",", ":")), int(periodic)))
            if also is not None:
                also()
        return int(cur.lastrowid or 0)

    def _make_room(self) -> None:
        marks = ",".join("?" * len(self.kept))
        for where, args in (("periodic = 1", ()), (f"action NOT IN ({marks})", self.kept)):
            row = self.db.execute(f"SELECT id, action FROM queue WHERE {where} "
                                  "ORDER BY id LIMIT 1", args).fetchone()
            if row is not None:
                self.db.execute("DELETE FROM queue WHERE id = ?", (row[0],))
                self.dropped += 1
                self.log.warning("queue full: oldest message dropped", action=row[1],
                                 limit=self.limit)
                return
        self.log.warning("queue full of Started/Ended/security events: bound exceeded",
                         limit=self.limit)

    def head(self) -> Queued | None:
        row = self.db.execute("SELECT id, action, payload, attempts FROM queue "
                              "ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        return Queued(int(row[0]), str(row[1]), json.loads(row[2]), int(row[3]))

    def all(self) -> list[Queued]:
        return [Queued(int(r[0]), str(r[1]), json.loads(r[2]), int(r[3])) for r in
                self.db.execute("SELECT id, action, payload, attempts FROM queue ORDER BY id")]

    def done(self, msg_id: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM queue WHERE id = ?", (msg_id,))

    def attempt(self, msg_id: int) -> int:
        """Count one failed attempt; returns the attempts so far."""
        with self.db:
            self.db.execute("UPDATE queue SET attempts = attempts + 1 WHERE id = ?", (msg_id,))
        row = self.db.execute("SELECT attempts FROM queue WHERE id = ?", (msg_id,)).fetchone()
        return int(row[0]) if row else 0

    def settle(self, msg_id: int, rewrite: Callable[[Queued], dict[str, Any] | None],
               also: Callable[[], None] | None = None) -> int:
        """Remove the confirmed ``msg_id`` and give every remaining row for which
        ``rewrite`` returns a payload that payload, in one SQLite transaction with ``also``
        (OCPP 1.6: the backend's transactionId replaces a placeholder); returns the number
        of rows rewritten."""
        n = 0
        with self.db:
            self.db.execute("DELETE FROM queue WHERE id = ?", (msg_id,))
            for msg in self.all():
                new = rewrite(msg)
                if new is not None:
                    self.db.execute("UPDATE queue SET payload = ? WHERE id = ?",
                                    (json.dumps(new, separators=(",", ":")), msg.id))
                    n += 1
            if also is not None:
                also()
        return n
