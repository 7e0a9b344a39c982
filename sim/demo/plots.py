"""Matplotlib plots of a run (Agg backend, PNG), with the scenario's events as markers.

What a person reads uses the cabinet's numbering: guns and modules from 1 (the records are
0-based). Each module keeps one colour in every panel (:func:`module_color`); the module
panel draws the derating start/end and the trip temperature of the simulated modules. Per gun
a "why" plot draws the measured current with every limit that applied (cable, EV maximum,
EV request, OCPP, the gun's share of the station cap) and a band naming the one that bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sim.demo.why import KINDS, LABELS

#: Binding names of the records → band colour and label.
BINDINGS = {"REQUEST": ("#4c9be8", "EV request"), "GUN_MAX": ("#e5a50a", "gun max (cable, EV "
            "max, OCPP)"), "STATION": ("#d9534f", "station cap"), "POOL": ("#8e6cc0",
            "module pool"), "DRAINING": ("#7f7f7f", "draining"), "NO_DEMAND": ("#dddddd",
            "no demand")}
LIMIT_STYLE = {"cable": ("0.4", "-."), "ev_max": ("#e5a50a", "--"),
               "ev_request": ("#4c9be8", ":"), "ocpp": ("#2ca02c", "--"),
               "other": ("#8c564b", ":"), "station_share": ("#d9534f", "-")}


def module_color(m: int) -> Any:
    """One colour per module (0-based index), the same in every panel."""
    import matplotlib

    return matplotlib.colormaps["tab20"](m % 20)


def _markers(ax: Any, col: Any) -> None:
    for m in col.markers:
        ax.axvline(m["t_s"], color="0.6", lw=0.8, ls="--")
        ax.text(m["t_s"], 1.0, f" {m['kind']}", transform=ax.get_xaxis_transform(),
                rotation=90, va="top", ha="right", fontsize=7, color="0.35")


def _binding_band(ax: Any, t: np.ndarray, names: list[str]) -> None:
    """Coloured spans under the axis: which limit bound the gun, cycle by cycle."""
    seen: set[str] = set()
    start = 0
    for i in range(1, len(names) + 1):
        if i < len(names) and names[i] == names[start]:
            continue
        name = names[start]
        color, label = BINDINGS.get(name, ("#bbbbbb", name))
        t1 = t[i] if i < len(t) else t[-1]
        ax.axvspan(t[start], t1, ymin=0.0, ymax=0.06, color=color, lw=0,
                   label=f"bound by: {label}" if name not in seen else None)
        seen.add(name)
        start = i


def _why(t: np.ndarray, a: dict[str, np.ndarray], col: Any, g: int, save: Any) -> None:
    import matplotlib.pyplot as plt

    rows = getattr(getattr(col, "why", None), "rows", [])
    n = min(len(t), len(rows))
    fig, ax = plt.subplots(figsize=(10, 4.2))
    if n:
        tt = t[-n:]
        lims = rows[-n:]
        cur = a["current"][-n:, g]
        top = float(np.nanmax(cur)) if np.isfinite(cur).any() else 100.0
        for k in KINDS:
            vals = np.array([r[g][k] if g < len(r) else np.nan for r in lims], dtype=float)
            if not np.isfinite(vals).any():
                continue
            color, ls = LIMIT_STYLE[k]
            ax.plot(tt, vals, color=color, ls=ls, lw=1.1, label=LABELS[k])
        ax.plot(tt, cur, color="k", lw=1.6, label=f"gun {g + 1} measured")
        ax.set_ylim(0, max(top * 1.6, 50.0))
        names = [b[g].split(":")[0] for b in col.gun_binding[-n:]]
        _binding_band(ax, tt, names)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("A")
    ax.legend(loc="upper right", fontsize=7, ncol=2)
    _markers(ax, col)
    save(fig, f"why_gun{g + 1}.png", f"Why gun {g + 1} has its current: every limit, and "
         "the one that bound (band)")


def draw(a: dict[str, np.ndarray], col: Any, out: Path) -> list[dict[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = a["t"]
    plots: list[dict[str, str]] = []
    if len(t) == 0:
        return plots

    def save(fig: Any, name: str, title: str) -> None:
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        plots.append({"file": name, "title": title})

    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(t, a["power_kw"], label="station power (meters)", lw=1.4)
    ax.plot(t, a["cap_kw"], label="cap given to the allocator", lw=1.0, color="C3")
    ax.plot(t, a["grid_kw"], label="grid limit published", lw=0.8, ls=":", color="C2")
    ax.fill_between(t, a["grid_kw"], a["grid_kw"] + a["storage_kw"],
                    label="station storage (on top of the grid limit)", alpha=0.3, color="C1")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("kW")
    ax.legend(loc="lower right", fontsize=8)
    _markers(ax, col)
    save(fig, "station_power.png", "Station power against the grid cap and storage")

    fig, ax = plt.subplots(figsize=(10, 4))
    for g in range(a["current"].shape[1]):
        ax.plot(t, a["current"][:, g], label=f"gun {g + 1} measured", color=f"C{g}")
        ax.plot(t, a["setpoint"][:, g], ls=":", lw=0.8, label=f"gun {g + 1} setpoint",
                color=f"C{g}")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("A")
    ax.legend(loc="upper right", fontsize=8)
    _markers(ax, col)
    save(fig, "gun_current.png", "Current per gun")

    for g in range(a["current"].shape[1]):
        _why(t, a, col, g, save)

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    temp, avail = a["temp"], a["avail"]
    faulty = sorted({m for _t, m, _k in col.fault_modules})
    ax1.plot(t, temp.max(axis=1), label="hottest module", color="0.2")
    ax1.plot(t, temp.mean(axis=1), label="mean", color="0.6")
    for m in faulty:
        ax1.plot(t, temp[:, m], label=f"module {m + 1}", ls="--", color=module_color(m))
    params = getattr(getattr(col, "physics", None), "params", None)
    if params is not None:
        for value, name, color in ((params.derate_start_c, "derating starts", "#e5a50a"),
                                   (params.derate_end_c, "derated to 0", "#d9534f"),
                                   (params.trip_c, "over-temperature trip", "#8b0000")):
            ax1.axhline(value, color=color, lw=0.8, ls="-.")
            ax1.text(t[0], value, f" {name} {value:g} °C", va="bottom", fontsize=7,
                     color=color)
    ax1.set_ylabel("internal °C")
    ax1.legend(fontsize=8, loc="upper left")
    ax2.plot(t, avail.sum(axis=1), label="pool available current (sum)", color="0.2")
    for m in faulty:
        ax2.plot(t, avail[:, m] * 10, ls="--", label=f"module {m + 1} available ×10",
                 color=module_color(m))
    ax2.set_ylabel("A")
    ax2.set_xlabel("simulated time (s)")
    ax2.legend(fontsize=8)
    _markers(ax1, col)
    _markers(ax2, col)
    save(fig, "modules.png", "Module temperatures and available current (modules from 1)")

    fig, ax = plt.subplots(figsize=(10, 4))
    for g in range(a["soc"].shape[1]):
        if np.isfinite(a["soc"][:, g]).any():
            ax.plot(t, a["soc"][:, g], label=f"gun {g + 1}", color=f"C{g}")
    for spec in col.scenario.trucks:
        ax.axhline(spec.params.target_soc_pct, ls=":", lw=0.8, color="0.5")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("SoC %")
    ax.legend(fontsize=8)
    _markers(ax, col)
    save(fig, "soc.png", "State of charge")
    return plots
