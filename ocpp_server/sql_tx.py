"""SQL for transactions and meter values; runs on the storage thread's connection.

Meter values are normalised on the way in (value × 10^multiplier, kWh→Wh, kW→W) so energy
is a plain subtraction; the raw sample is kept next to it. Each sample is checked for
plausibility (``plausibility.py``) first; a flagged one is stored with its flag and left out of
the energy. ``flags`` arguments collect the flags raised, for the metrics.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ocpp_server.limits import load_stored
from ocpp_server.plausibility import ENERGY, Limits, check_sample, check_stop_v16
from ocpp_server.timeutil import norm_ts, now_iso

DEFAULT_LIMITS = Limits(3_750_000.0, 1.1)
_SCALE = {"kWh": ("Wh", 1000.0), "kW": ("W", 1000.0), "kvarh": ("varh", 1000.0),
          "kvar": ("var", 1000.0), "kVA": ("VA", 1000.0), "kVAh": ("VAh", 1000.0)}


def _sample_row(sample: dict[str, Any]) -> tuple[str, str | None, str | None, str | None,
                                                 str | None, float | None]:
    """(measurand, phase, location, context, unit, value) of a 1.6 or 2.0.1 sampledValue."""
    measurand = sample.get("measurand") or ENERGY
    uom = sample.get("unitOfMeasure")
    if isinstance(uom, dict):  # 2.0.1
        unit = uom.get("unit", "Wh")
        multiplier = int(uom.get("multiplier", 0))
    else:  # 1.6
        unit = sample.get("unit") or ("Wh" if measurand.startswith("Energy") else None)
        multiplier = 0
    value: float | None
    if sample.get("format") == "SignedData":
        value = None
    else:
        try:
            value = float(sample["value"]) * (10.0 ** multiplier)
        except (KeyError, TypeError, ValueError):
            value = None
    if unit in _SCALE and value is not None:
        unit, factor = _SCALE[unit]
        value *= factor
    return (measurand, sample.get("phase"), sample.get("location"), sample.get("context"),
            unit, value)


def insert_meter_values(conn: sqlite3.Connection, station_id: str, tx_pk: int | None,
                        evse_id: int | None, meter_values: list[dict[str, Any]],
                        source: str, limits: Limits = DEFAULT_LIMITS,
                        flags: list[str] | None = None) -> None:
    """Store samples one by one, each checked against those stored before it."""
    for mv in meter_values:
        ts = norm_ts(mv.get("timestamp")) or now_iso()
        for sample in mv.get("sampledValue", []):
            m, phase, loc, ctx, unit, value = _sample_row(sample)
            flag = check_sample(conn, tx_pk, ts, m, phase, loc, value, limits)
            if flag is not None and flags is not None:
                flags.append(flag)
            conn.execute(
                "INSERT INTO meter_values (station_id, tx_pk, evse_id, timestamp, measurand,"
                " phase, location, context, unit, value, raw, source, flag)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (station_id, tx_pk, evse_id, ts, m, phase, loc, ctx, unit, value,
                 json.dumps(sample, separators=(",", ":")), source, flag))


def _tx_pk(conn: sqlite3.Connection, station_id: str, transaction_id: str,
           version: str) -> int:
    row = conn.execute(
        "INSERT INTO transactions (station_id, transaction_id, ocpp_version, updated_at)"
        " VALUES (?,?,?,?) ON CONFLICT (station_id, transaction_id) DO UPDATE SET"
        " updated_at = excluded.updated_at RETURNING id",
        (station_id, transaction_id, version, now_iso())).fetchone()
    return int(row[0])


def find_tx_pk(conn: sqlite3.Connection, station_id: str, transaction_id: str) -> int | None:
    row = conn.execute("SELECT id FROM transactions WHERE station_id=? AND transaction_id=?",
                       (station_id, transaction_id)).fetchone()
    return None if row is None else int(row[0])


def transaction_event(conn: sqlite3.Connection, station_id: str, p: dict[str, Any],
                      limits: Limits = DEFAULT_LIMITS, flags: list[str] | None = None) -> bool:
    info = p["transactionInfo"]
    tx_pk = _tx_pk(conn, station_id, info["transactionId"], "2.0.1")
    ts = norm_ts(p["timestamp"]) or now_iso()
    cur = conn.execute(
        "INSERT OR IGNORE INTO transaction_events (tx_pk, seq_no, event_type, trigger_reason,"
        " timestamp, payload, received_at) VALUES (?,?,?,?,?,?,?)",
        (tx_pk, p["seqNo"], p["eventType"], p.get("triggerReason"), ts,
         json.dumps(p, separators=(",", ":")), now_iso()))
    if cur.rowcount == 0:
        return False  # duplicate (transactionId, seqNo): already stored and confirmed
    evse = p.get("evse") or {}
    token = (p.get("idToken") or {}).get("idToken")
    ended = p["eventType"] == "Ended"
    conn.execute(
        """UPDATE transactions SET
             evse_id = COALESCE(evse_id, ?), connector_id = COALESCE(connector_id, ?),
             id_token = CASE WHEN ? IS NOT NULL THEN ? ELSE id_token END,
             started_at = CASE WHEN started_at IS NULL OR ? < started_at THEN ? ELSE started_at END,
             ended_at = CASE WHEN ? THEN ? ELSE ended_at END,
             stop_reason = CASE WHEN ? THEN COALESCE(?, stop_reason, 'Local') ELSE stop_reason END,
             charging_state = CASE WHEN last_seq_no IS NULL OR ? >= last_seq_no
                                   THEN COALESCE(?, charging_state) ELSE charging_state END,
             last_seq_no = MAX(COALESCE(last_seq_no, -1), ?),
             updated_at = ?
           WHERE id = ?""",
        (evse.get("id"), evse.get("connectorId"), token, token, ts, ts, ended, ts, ended,
         info.get("stoppedReason"), p["seqNo"], info.get("chargingState"), p["seqNo"],
         now_iso(), tx_pk))
    if p.get("meterValue"):
        insert_meter_values(conn, station_id, tx_pk, evse.get("id"), p["meterValue"],
                            "TransactionEvent", limits, flags)
    return True


def start_v16(conn: sqlite3.Connection, station_id: str, p: dict[str, Any]) -> int:
    ts = norm_ts(p["timestamp"]) or now_iso()
    key = f"{p['connectorId']}|{p['idTag']}|{ts}|{p['meterStart']}"
    row = conn.execute("SELECT transaction_id FROM transactions WHERE station_id=? AND"
                       " start_key=?", (station_id, key)).fetchone()
    if row is not None:
        return int(row[0])  # the station repeats a request we already confirmed
    cur = conn.execute(
        "INSERT INTO transactions (station_id, ocpp_version, evse_id, connector_id, id_token,"
        " started_at, meter_start_wh, start_key, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
        (station_id, "1.6", p["connectorId"], p["connectorId"], p["idTag"], ts,
         float(p["meterStart"]), key, now_iso()))
    tx_pk = int(cur.lastrowid or 0)
    conn.execute("UPDATE transactions SET transaction_id=? WHERE id=?", (str(tx_pk), tx_pk))
    conn.execute(
        "INSERT INTO transaction_events (tx_pk, seq_no, event_type, timestamp, payload,"
        " received_at) VALUES (?,?,?,?,?,?)",
        (tx_pk, 0, "StartTransaction", ts, json.dumps(p, separators=(",", ":")), now_iso()))
    return tx_pk


def stop_v16(conn: sqlite3.Connection, station_id: str, p: dict[str, Any],
             limits: Limits = DEFAULT_LIMITS, flags: list[str] | None = None) -> bool:
    tx_pk = find_tx_pk(conn, station_id, str(p["transactionId"]))
    if tx_pk is None:
        return False
    ts = norm_ts(p["timestamp"]) or now_iso()
    cur = conn.execute(
        "INSERT OR IGNORE INTO transaction_events (tx_pk, seq_no, event_type, timestamp,"
        " payload, received_at) VALUES (?,?,?,?,?,?)",
        (tx_pk, 1, "StopTransaction", ts, json.dumps(p, separators=(",", ":")), now_iso()))
    if cur.rowcount == 0:
        return True  # repeated StopTransaction: already stored
    row = conn.execute("SELECT connector_id FROM transactions WHERE id=?", (tx_pk,)).fetchone()
    if p.get("transactionData"):
        insert_meter_values(conn, station_id, tx_pk, row[0], p["transactionData"],
                            "StopTransaction", limits, flags)
    flag = check_stop_v16(conn, tx_pk, ts, float(p["meterStop"]), limits)
    if flag is not None and flags is not None:
        flags.append(flag)
    conn.execute(
        "UPDATE transactions SET ended_at=?, meter_stop_wh=?, stop_reason=?, updated_at=?,"
        " flag=? WHERE id=?",
        (ts, float(p["meterStop"]), p.get("reason", "Local"), now_iso(), flag, tx_pk))
    return True


def _energy_wh(conn: sqlite3.Connection, tx: dict[str, Any]) -> float | None:
    """Last − first plausible register value; None when the stop value itself is flagged."""
    if tx.get("flag") is not None:
        return None
    if tx["meter_start_wh"] is not None and tx["meter_stop_wh"] is not None:
        return float(tx["meter_stop_wh"] - tx["meter_start_wh"])
    row = conn.execute(
        "SELECT MIN(value), MAX(value) FROM meter_values WHERE tx_pk=? AND measurand=? AND"
        " phase IS NULL AND (location IS NULL OR location='Outlet') AND value IS NOT NULL"
        " AND flag IS NULL", (tx["id"], ENERGY)).fetchone()
    lo = tx["meter_start_wh"] if tx["meter_start_wh"] is not None else row[0]
    hi = tx["meter_stop_wh"] if tx["meter_stop_wh"] is not None else row[1]
    return None if lo is None or hi is None else float(hi - lo)


def _row_dict(cur: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cur.description, row, strict=True)}


def list_transactions(conn: sqlite3.Connection, where: list[str], args: list[Any],
                      limit: int, offset: int) -> list[dict[str, Any]]:
    sql = "SELECT * FROM transactions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
    cur = conn.execute(sql, [*args, limit, offset])
    out = []
    for row in cur.fetchall():
        tx = _row_dict(cur, row)
        tx.pop("start_key", None)
        tx["active"] = tx["ended_at"] is None
        tx["energy_wh"] = _energy_wh(conn, tx)
        tx["implausible_samples"] = conn.execute(
            "SELECT COUNT(*) FROM meter_values WHERE tx_pk=? AND flag IS NOT NULL",
            (tx["id"],)).fetchone()[0]
        out.append(tx)
    return out


def get_transaction(conn: sqlite3.Connection, tx_pk: int) -> dict[str, Any] | None:
    txs = list_transactions(conn, ["id = ?"], [tx_pk], 1, 0)
    if not txs:
        return None
    tx = txs[0]
    cur = conn.execute("SELECT seq_no, event_type, trigger_reason, timestamp, payload,"
                       " received_at FROM transaction_events WHERE tx_pk=? ORDER BY"
                       " timestamp, seq_no", (tx_pk,))
    tx["events"] = []
    for r in cur.fetchall():
        event = _row_dict(cur, r)
        event["payload"], error = load_stored(r[4])
        if error is not None:  # stored by an older backend without the checks
            event["payload_error"] = error
        tx["events"].append(event)
    cur = conn.execute("SELECT timestamp, measurand, phase, location, context, unit, value,"
                       " source, flag FROM meter_values WHERE tx_pk=? ORDER BY timestamp, id",
                       (tx_pk,))
    tx["meter_values"] = [_row_dict(cur, r) for r in cur.fetchall()]
    return tx
