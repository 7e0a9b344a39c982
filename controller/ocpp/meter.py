"""The meter values both versions report: one sampler of a gun's DC meter reading.

2.0.1 sends what :func:`meter_value` builds as it is; 1.6 reshapes it (values as strings,
a flat ``unit``: ``controller.ocpp.v16.transactions.meter16``).
"""

from __future__ import annotations

import math
from typing import Any

from controller.records import GunRecord

UNITS = {"Energy.Active.Import.Register": "Wh", "Power.Active.Import": "W",
         "Current.Import": "A", "Voltage": "V", "SoC": "Percent"}


def meter_value(rec: GunRecord | None, measurands: list[str], context: str,
                ts: str, energy_wh: float | None = None) -> list[dict[str, Any]]:
    """One MeterValue of the gun's DC meter (NaN / missing readings are left out)."""
    values = {"Energy.Active.Import.Register": energy_wh if rec is None else rec.energy_wh}
    if rec is not None:
        values |= {"Power.Active.Import": rec.power_w, "Current.Import": rec.current_a,
                   "Voltage": rec.voltage_v, "SoC": rec.soc_pct}
    sampled = []
    for m in measurands:
        v = values.get(m)
        if v is None or not math.isfinite(v):
            continue
        sampled.append({"value": round(float(v), 3), "context": context, "measurand": m,
                        "location": "Outlet", "unitOfMeasure": {"unit": UNITS[m]}})
    return [{"timestamp": ts, "sampledValue": sampled}] if sampled else []
