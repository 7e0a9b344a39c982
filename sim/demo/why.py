"""Every limit a gun had, per cycle: what the demo's "why" plot draws.

The cycle record names only the limit that bound; an engineer asking "why is this gun at
700 A?" also wants to see the ones that did not (cable, EV maximum, EV request, OCPP, the
gun's share of the station cap). :class:`LimitTrace` is a station observer that reads the
station's :class:`LimitBook` once per cycle (the demo runs on a simulated clock, so the few
microseconds are not taken from a real cycle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from controller.limits import gun

KINDS = ("cable", "ev_max", "ev_request", "ocpp", "other", "station_share")
LABELS = {"cable": "cable rating", "ev_max": "EV maximum", "ev_request": "EV request",
          "ocpp": "OCPP limit", "other": "other gun limit", "station_share":
          "share of the station cap"}


def kind_of(source: str) -> str:
    s = source.lower()
    for k in ("cable", "ev_max", "ev_request", "ocpp"):
        if s.startswith(k):
            return k
    return "other"


@dataclass
class LimitTrace:
    """Per cycle and gun, the value of each kind of limit in amperes (NaN: none)."""

    station: Any
    rows: list[list[dict[str, float]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.station.subscribe(self.observe)

    def observe(self, ev: Any) -> None:
        if getattr(ev, "kind", "") != "cycle":
            return
        rec = ev.record
        book = self.station.limits
        powers = [p if math.isfinite(p) else 0.0 for p in (g.power_w for g in rec.guns)]
        row: list[dict[str, float]] = []
        for g in rec.guns:
            vals = dict.fromkeys(KINDS, math.nan)
            for lim in book.in_force(gun(g.gun), rec.t):
                k = kind_of(lim.source)
                vals[k] = lim.value if math.isnan(vals[k]) else min(vals[k], lim.value)
            v = g.voltage_v
            if math.isfinite(v) and v > 50.0 and math.isfinite(rec.station_cap_w):
                others = sum(powers) - powers[g.gun]
                vals["station_share"] = max(0.0, rec.station_cap_w - others) / v
            row.append(vals)
        self.rows.append(row)
