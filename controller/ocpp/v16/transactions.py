"""OCPP 1.6 transactions: StartTransaction, MeterValues and StopTransaction, queued.

The backend numbers 1.6 transactions (StartTransaction.conf ``transactionId``), so a
transaction started offline has no id yet. It gets a local placeholder (negative: -1, -2, ...,
recorded in table ``v16_txmap``); the MeterValues and the StopTransaction queued behind its
StartTransaction carry the placeholder. When the backend answers the StartTransaction,
:meth:`Transactions16.resolve` removes that row, writes the real id into every queued row that
carries the placeholder, into the open transaction and into ``v16_txmap`` — in one SQLite
transaction, so a restart at any point leaves either all placeholders or all real ids.

Open transactions (``v16_tx``) keep their meter start, last register and the values of
``transactionData`` (StopTxnSampledData / StopTxnAlignedData, bounded), each written in the
same SQLite transaction as the message that reports them.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from controller.ocpp import storage
from controller.ocpp.meter import meter_value
from controller.ocpp.queue import MessageQueue, Queued
from controller.ocpp.wire import iso
from controller.records import GunRecord

#: The station's stop reasons → OCPP 1.6 Reason (the EV ending the charge is a local stop).
REASONS = {"EVDisconnected": "EVDisconnected", "Local": "Local", "Remote": "Remote",
           "StoppedByEV": "Local", "DeAuthorized": "DeAuthorized", "PowerLoss": "PowerLoss",
           "Reboot": "Reboot", "HardReset": "HardReset", "SoftReset": "SoftReset",
           "ImmediateReset": "HardReset", "UnlockCommand": "UnlockCommand",
           "EmergencyStop": "EmergencyStop"}
TX_ACTIONS = ("StartTransaction", "StopTransaction", "MeterValues")
MAX_TX_DATA = 200  # transactionData entries kept per transaction (the oldest go first)


def periodic16(action: str, payload: dict[str, Any]) -> bool:
    """The queue's first to go when full: sampled / clock-aligned transaction MeterValues
    (StopTransaction carries the StopTxn data of the session anyway); Start and Stop are
    never dropped."""
    return action == "MeterValues" and "transactionId" in payload


def reason16(reason: str | None) -> str:
    if reason and reason.lower().startswith("emergency"):
        return "EmergencyStop"
    return REASONS.get(reason or "", "Other")


def meter16(rec: GunRecord | None, measurands: list[str], context: str, ts: str,
            energy_wh: float | None = None) -> list[dict[str, Any]]:
    """One 1.6 MeterValue (values as strings, ``unit`` flat) from the shared sampler."""
    out = []
    for mv in meter_value(rec, measurands, context, ts, energy_wh):
        out.append({"timestamp": mv["timestamp"], "sampledValue": [
            {"value": str(s["value"]), "context": s["context"], "format": "Raw",
             "measurand": s["measurand"], "location": s["location"],
             "unit": s["unitOfMeasure"]["unit"]}
            for s in mv["sampledValue"]]})
    return out


@dataclass(slots=True)
class Tx16:
    gun: int
    tx_id: int  # the backend's, or a negative placeholder until it has answered
    id_tag: str
    meter_start: float
    energy_wh: float
    last_sample_t: float = -math.inf
    data: list[dict[str, Any]] = field(default_factory=list)


class Transactions16:
    """The open transaction of each connector and the messages about it."""

    def __init__(self, db: sqlite3.Connection, queue: MessageQueue,
                 wall: Callable[[], datetime]) -> None:
        self.db, self.queue, self.wall = db, queue, wall
        storage.migrate(db)
        self.open: dict[int, Tx16] = {}
        for gun, data in db.execute("SELECT gun, data FROM v16_tx"):
            d = json.loads(data)
            d["last_sample_t"] = -math.inf
            self.open[int(gun)] = Tx16(**d)

    def _save(self, tx: Tx16, gone: bool = False) -> None:
        if gone:
            self.db.execute("DELETE FROM v16_tx WHERE gun = ?", (tx.gun,))
            return
        d = asdict(tx)
        d.pop("last_sample_t")
        self.db.execute("INSERT OR REPLACE INTO v16_tx VALUES (?, ?)", (tx.gun, json.dumps(d)))

    def _keep(self, tx: Tx16, mv: list[dict[str, Any]]) -> None:
        tx.data.extend(mv)
        del tx.data[:-MAX_TX_DATA]

    def real_id(self, local: int) -> int | None:
        """The backend's id of a placeholder (None: not answered yet, or never will be)."""
        row = self.db.execute("SELECT real FROM v16_txmap WHERE local = ?", (local,)).fetchone()
        if row is None:
            return local  # not a placeholder of ours
        return None if row[0] is None else int(row[0])

    def find(self, tx_id: int) -> int | None:
        """The gun of the open transaction ``tx_id``."""
        return next((g for g, t in self.open.items() if t.tx_id == tx_id), None)

    # ------------------------------------------------------------------ messages
    def start(self, gun: int, id_tag: str, rec: GunRecord | None, stop_data: list[str]
              ) -> Tx16:
        row = self.db.execute("SELECT MIN(local) FROM v16_txmap").fetchone()
        local = min(int(row[0] or 0), 0) - 1
        wh = rec.energy_wh if rec is not None and math.isfinite(rec.energy_wh) else 0.0
        tx = Tx16(gun, local, id_tag, wh, wh)
        ts = iso(self.wall())
        self._keep(tx, meter16(rec, stop_data, "Transaction.Begin", ts, wh))
        self.open[gun] = tx

        def also() -> None:
            self.db.execute("INSERT INTO v16_txmap VALUES (?, NULL)", (local,))
            self._save(tx)
        self.queue.put("StartTransaction", {"connectorId": gun + 1, "idTag": id_tag,
                                            "meterStart": round(wh), "timestamp": ts,
                                            "_local": local}, also=also)
        return tx

    def sample(self, gun: int, rec: GunRecord | None, measurands: list[str], context: str,
               stop_data: list[str]) -> bool:
        """A transaction MeterValues (Sample.Periodic / Sample.Clock / Trigger), queued;
        the StopTxn data of the same instant joins transactionData."""
        tx = self.open.get(gun)
        if tx is None or rec is None:
            return False
        if math.isfinite(rec.energy_wh):
            tx.energy_wh = rec.energy_wh
        ts = iso(self.wall())
        mv = meter16(rec, measurands, context, ts)
        self._keep(tx, meter16(rec, stop_data, context, ts))
        if not mv:
            with self.db:
                self._save(tx)
            return False
        self.queue.put("MeterValues", {"connectorId": gun + 1, "transactionId": tx.tx_id,
                                       "meterValue": mv}, also=lambda: self._save(tx))
        return True

    def stop(self, gun: int, reason: str | None, rec: GunRecord | None, stop_data: list[str],
             id_tag: str | None = None, session_wh: float | None = None) -> Tx16 | None:
        """StopTransaction with the reason, the end register and transactionData.
        ``session_wh`` (the energy the station measured for the session) lifts a last
        reading that is a cycle old: registers only grow."""
        tx = self.open.pop(gun, None)
        if tx is None:
            return None
        if rec is not None and math.isfinite(rec.energy_wh):
            tx.energy_wh = max(tx.energy_wh, rec.energy_wh)
        if session_wh and math.isfinite(session_wh):
            tx.energy_wh = max(tx.energy_wh, tx.meter_start + session_wh)
        ts = iso(self.wall())
        self._keep(tx, meter16(rec, stop_data, "Transaction.End", ts, tx.energy_wh)
                   if rec is not None else meter16(None, stop_data, "Transaction.End", ts,
                                                   tx.energy_wh))
        payload: dict[str, Any] = {"transactionId": tx.tx_id,
                                   "meterStop": round(tx.energy_wh), "timestamp": ts,
                                   "reason": reason16(reason)}
        if id_tag:
            payload["idTag"] = id_tag
        if tx.data:
            payload["transactionData"] = tx.data
        self.queue.put("StopTransaction", payload, also=lambda: self._save(tx, gone=True))
        return tx

    # ------------------------------------------------------------------ the backend's id
    def resolve(self, msg: Queued, real: int) -> int:
        """The StartTransaction ``msg`` was answered with ``real``: settle it and put the
        real id everywhere the placeholder is; returns the rows rewritten."""
        local = int(msg.payload.get("_local", real))

        def rewrite(m: Queued) -> dict[str, Any] | None:
            if m.action in TX_ACTIONS and m.payload.get("transactionId") == local:
                return {**m.payload, "transactionId": real}
            return None

        gun = self.find(local)

        def also() -> None:
            self.db.execute("UPDATE v16_txmap SET real = ? WHERE local = ?", (real, local))
            if gun is not None:
                self.open[gun].tx_id = real
                self._save(self.open[gun])
        try:
            return self.queue.settle(msg.id, rewrite, also)
        except Exception:
            if gun is not None:
                self.open[gun].tx_id = local  # the SQLite transaction was rolled back
            raise
