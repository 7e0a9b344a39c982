"""Plausibility of meter values: what a station reports is checked before it is summed.

Runs on the storage thread, sample by sample, against what is already stored (so the order in
which events arrive does not matter much). A sample that fails is stored anyway, with a
``flag`` naming the reason, and is left out of the transaction's energy; the API shows the
flag, the metrics count it per reason. Nothing is silently dropped or silently summed.

Checks, within one transaction, on the main energy register (``Energy.Active.Import.Register``,
no phase, location Outlet or none):

- ``energy_negative``: the register is below zero;
- ``energy_decreasing``: below an earlier sample (or 1.6 ``meterStart``), or above a later one;
- ``energy_rate_over_rating``: rising faster than the station's rating × margin between the
  previous plausible sample and this one (plus ``TOLERANCE_WH`` for meter resolution);

and on every ``Power.Active.Import`` sample, in a transaction or not:

- ``power_over_rating``: |value| above rating × margin.

The rating is the station's ``rated_power_w`` (set over the REST API when the station is added,
or ``PUT /stations/{id}/rating``), else the backend's ``ocpp.rated_power_w`` (default: the MCS
envelope, 3.75 MW). Choice: nothing in a BootNotification carries the rating, and learning it
from the first values would learn a liar's values too; the operator knows the hardware.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from ocpp_server.limits import parse_timestamp

ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
FLAGS = ("energy_negative", "energy_decreasing", "energy_rate_over_rating",
         "power_over_rating")
TOLERANCE_WH = 10.0  # a Wh-resolution register may round up by up to this much


@dataclass(frozen=True)
class Limits:
    """Rating (W) and margin for one station; ``max_w`` is what is still plausible."""

    rating_w: float
    margin: float

    @property
    def max_w(self) -> float:
        return self.rating_w * self.margin


def station_limits(conn: sqlite3.Connection, station_id: str, default_w: float,
                   margin: float) -> Limits:
    row = conn.execute("SELECT rated_power_w FROM stations WHERE id=?",
                       (station_id,)).fetchone()
    rating = float(row[0]) if row is not None and row[0] is not None else default_w
    return Limits(rating, margin)


def _seconds(a: str, b: str) -> float | None:
    try:
        return (parse_timestamp(b) - parse_timestamp(a)).total_seconds()
    except (ValueError, TypeError):
        return None


def is_main_register(measurand: str, phase: Any, location: Any) -> bool:
    return measurand == ENERGY and phase is None and location in (None, "Outlet")


def check_sample(conn: sqlite3.Connection, tx_pk: int | None, ts: str, measurand: str,
                 phase: Any, location: Any, value: float | None,
                 limits: Limits) -> str | None:
    """The flag for one normalised sample (Wh, W), or None when it is plausible."""
    if value is None:
        return None
    if measurand == POWER:
        return "power_over_rating" if abs(value) > limits.max_w else None
    if tx_pk is None or not is_main_register(measurand, phase, location):
        return None
    if value < 0:
        return "energy_negative"
    prev = conn.execute(
        "SELECT timestamp, value FROM meter_values WHERE tx_pk=? AND measurand=? AND"
        " phase IS NULL AND (location IS NULL OR location='Outlet') AND value IS NOT NULL"
        " AND flag IS NULL AND timestamp <= ? ORDER BY timestamp DESC, id DESC LIMIT 1",
        (tx_pk, ENERGY, ts)).fetchone()
    if prev is None:
        start = conn.execute("SELECT started_at, meter_start_wh FROM transactions WHERE id=?"
                             " AND meter_start_wh IS NOT NULL", (tx_pk,)).fetchone()
        if start is not None and start[0] is not None and start[0] <= ts:
            prev = start
    if prev is not None:
        if value < prev[1]:
            return "energy_decreasing"
        dt = _seconds(prev[0], ts)
        if dt is not None and value - prev[1] > limits.max_w * max(dt, 0.0) / 3600 \
                + TOLERANCE_WH:
            return "energy_rate_over_rating"
    nxt = conn.execute(
        "SELECT value FROM meter_values WHERE tx_pk=? AND measurand=? AND phase IS NULL AND"
        " (location IS NULL OR location='Outlet') AND value IS NOT NULL AND flag IS NULL AND"
        " timestamp > ? ORDER BY timestamp, id LIMIT 1", (tx_pk, ENERGY, ts)).fetchone()
    if nxt is not None and value > nxt[0]:
        return "energy_decreasing"
    return None


def check_stop_v16(conn: sqlite3.Connection, tx_pk: int, ts: str, meter_stop_wh: float,
                   limits: Limits) -> str | None:
    """The flag for a 1.6 meterStop: like a last energy sample at the stop time."""
    return check_sample(conn, tx_pk, ts, ENERGY, None, None, meter_stop_wh, limits)
