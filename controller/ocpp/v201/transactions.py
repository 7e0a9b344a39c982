"""TransactionEvent messages (E01–E14): ids, ``seqNo``, trigger reasons, meter values.

Open transactions live in the ``tx`` table of the OCPP database with their next ``seqNo``;
each event is built, its seqNo taken and the message put into the offline queue in *one*
SQLite transaction, so numbering stays gap-free across a restart of the controller.
"""

from __future__ import annotations

import json
import math
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from controller.ocpp import storage
from controller.ocpp.meter import meter_value
from controller.ocpp.queue import MessageQueue
from controller.ocpp.wire import iso
from controller.records import GunRecord

#: Station stop reason → (triggerReason, stoppedReason) of the Ended event.
STOP_MAP: dict[str, tuple[str, str]] = {
    "EVDisconnected": ("EVCommunicationLost", "EVDisconnected"),
    "StoppedByEV": ("ChargingStateChanged", "StoppedByEV"),
    "EmergencyStop": ("AbnormalCondition", "EmergencyStop"),
    "Local": ("StopAuthorized", "Local"),
    "Remote": ("RemoteStop", "Remote"),
    "Timeout": ("EVCommunicationLost", "Timeout"),
    "ImmediateReset": ("ResetCommand", "ImmediateReset"),
    "Reboot": ("AbnormalCondition", "Reboot"),
    "PowerLoss": ("AbnormalCondition", "PowerLoss"),
    "DeAuthorized": ("Deauthorized", "DeAuthorized"),
}


def stop_reasons(reason: str | None) -> tuple[str, str]:
    if reason and reason.startswith("emergency"):
        return STOP_MAP["EmergencyStop"]
    return STOP_MAP.get(reason or "", ("AbnormalCondition", "Other"))


@dataclass(slots=True)
class Tx:
    gun: int
    tx_id: str
    seq: int = 0
    id_token: str | None = None
    id_sent: bool = False
    id_token_type: str = "Central"  # a remote start's idToken keeps the backend's type
    remote_start_id: int | None = None
    charging_state: str = "EVConnected"
    energy_wh: float = 0.0
    last_sample_t: float = -math.inf
    start_wh: float | None = None  # the register in the Started event


class Transactions:
    """The open transaction of each gun and the events that tell the backend about it."""

    def __init__(self, db: sqlite3.Connection, queue: MessageQueue,
                 wall: Callable[[], datetime], online: Callable[[], bool]) -> None:
        self.db, self.queue, self.wall, self.online = db, queue, wall, online
        storage.migrate(db)
        self.open: dict[int, Tx] = {}
        for gun, data in db.execute("SELECT gun, data FROM tx"):
            self.open[int(gun)] = Tx(**json.loads(data))

    def _save(self, tx: Tx | None, gun: int) -> None:
        if tx is None:
            self.db.execute("DELETE FROM tx WHERE gun = ?", (gun,))
        else:
            fields = {k: getattr(tx, k) for k in Tx.__slots__}
            fields["last_sample_t"] = None if not math.isfinite(tx.last_sample_t) else \
                tx.last_sample_t
            self.db.execute("INSERT OR REPLACE INTO tx VALUES (?, ?)", (gun, json.dumps(fields)))

    def _emit(self, tx: Tx, event: str, trigger: str, *, ended: Tx | None = None,
              meter: list[dict[str, Any]] | None = None, stopped: str | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {"transactionId": tx.tx_id, "chargingState": tx.charging_state}
        if stopped:
            info["stoppedReason"] = stopped
        if tx.remote_start_id is not None and (event == "Started" or trigger == "RemoteStart"):
            info["remoteStartId"] = tx.remote_start_id
        payload: dict[str, Any] = {
            "eventType": event, "timestamp": iso(self.wall()), "triggerReason": trigger,
            "seqNo": tx.seq, "transactionInfo": info, "evse": {"id": tx.gun + 1,
                                                                "connectorId": 1}}
        if not self.online():
            payload["offline"] = True
        if tx.id_token and not tx.id_sent:
            payload["idToken"] = {"idToken": tx.id_token, "type": tx.id_token_type}
            tx.id_sent = True
        if meter:
            payload["meterValue"] = meter
        payload |= extra or {}
        tx.seq += 1
        self.queue.put("TransactionEvent", payload,
                       also=lambda: self._save(None if ended else tx, tx.gun))
        return payload

    def start(self, gun: int, trigger: str, state: str, rec: GunRecord | None,
              measurands: list[str], id_token: str | None = None,
              remote_start_id: int | None = None, tx_id: str | None = None,
              token_type: str = "Central") -> Tx:
        tx = Tx(gun, tx_id or str(uuid.uuid4()), id_token=id_token, charging_state=state,
                remote_start_id=remote_start_id, id_token_type=token_type,
                energy_wh=rec.energy_wh if rec is not None else 0.0,
                start_wh=rec.energy_wh if rec is not None and math.isfinite(rec.energy_wh)
                else None)
        self.open[gun] = tx
        ts = iso(self.wall())
        self._emit(tx, "Started", trigger, meter=meter_value(rec, measurands,
                                                              "Transaction.Begin", ts))
        return tx

    def update(self, gun: int, trigger: str, *, state: str | None = None,
               rec: GunRecord | None = None, measurands: list[str] | None = None,
               context: str = "Sample.Periodic", id_token: str | None = None,
               token_type: str = "Central", remote_start_id: int | None = None
               ) -> dict[str, Any] | None:
        tx = self.open.get(gun)
        if tx is None:
            return None
        if state is not None:
            tx.charging_state = state
        if remote_start_id is not None:
            tx.remote_start_id = remote_start_id
        if id_token and (id_token, token_type) != (tx.id_token, tx.id_token_type):
            tx.id_token, tx.id_token_type, tx.id_sent = id_token, token_type, False
        if rec is not None and math.isfinite(rec.energy_wh):
            tx.energy_wh = rec.energy_wh
        meter = meter_value(rec, measurands or [], context, iso(self.wall())) if rec else None
        return self._emit(tx, "Updated", trigger, meter=meter)

    def end(self, gun: int, reason: str | None, rec: GunRecord | None, measurands: list[str],
            trigger: str | None = None, session_wh: float | None = None
            ) -> dict[str, Any] | None:
        """The Ended event. ``session_wh`` (the station's energy of the session, measured in
        the cycle that stopped it) gives the end register when the last reading is a cycle
        older: Started register + session energy (registers only grow: the larger wins)."""
        tx = self.open.pop(gun, None)
        if tx is None:
            return None
        if session_wh and tx.start_wh is not None and math.isfinite(session_wh):
            end_wh = tx.start_wh + session_wh
            if rec is not None and not rec.energy_wh >= end_wh:
                rec = replace(rec, energy_wh=end_wh)
            tx.energy_wh = max(tx.energy_wh, end_wh)
        trig, stopped = stop_reasons(reason)
        tx.charging_state = "EVConnected" if reason not in ("EVDisconnected",) else "Idle"
        meter = meter_value(rec, measurands, "Transaction.End", iso(self.wall()),
                            energy_wh=tx.energy_wh)
        return self._emit(tx, "Ended", trigger or trig, ended=tx, meter=meter, stopped=stopped)
