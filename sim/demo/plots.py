"""Matplotlib plots of a run (Agg backend, PNG), with the scenario's events as markers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _markers(ax: Any, col: Any) -> None:
    for m in col.markers:
        ax.axvline(m["t_s"], color="0.6", lw=0.8, ls="--")
        ax.text(m["t_s"], 1.0, f" {m['kind']}", transform=ax.get_xaxis_transform(),
                rotation=90, va="top", ha="right", fontsize=7, color="0.35")


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
        ax.plot(t, a["current"][:, g], label=f"gun {g + 1} measured")
        ax.plot(t, a["setpoint"][:, g], ls=":", lw=0.8, label=f"gun {g + 1} setpoint")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("A")
    ax.legend(loc="upper right", fontsize=8)
    _markers(ax, col)
    save(fig, "gun_current.png", "Current per gun")

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    temp, avail = a["temp"], a["avail"]
    faulty = sorted({m for _t, m, _k in col.fault_modules})
    ax1.plot(t, temp.max(axis=1), label="hottest module", color="C3")
    ax1.plot(t, temp.mean(axis=1), label="mean", color="C0")
    for m in faulty:
        ax1.plot(t, temp[:, m], label=f"module {m}", ls="--")
    ax1.set_ylabel("internal °C")
    ax1.legend(fontsize=8)
    ax2.plot(t, avail.sum(axis=1), label="pool available current (sum)")
    for m in faulty:
        ax2.plot(t, avail[:, m] * 10, ls="--", label=f"module {m} available ×10")
    ax2.set_ylabel("A")
    ax2.set_xlabel("simulated time (s)")
    ax2.legend(fontsize=8)
    _markers(ax1, col)
    _markers(ax2, col)
    save(fig, "modules.png", "Module temperatures and available current")

    fig, ax = plt.subplots(figsize=(10, 4))
    for g in range(a["soc"].shape[1]):
        if np.isfinite(a["soc"][:, g]).any():
            ax.plot(t, a["soc"][:, g], label=f"gun {g + 1}")
    for spec in col.scenario.trucks:
        ax.axhline(spec.params.target_soc_pct, ls=":", lw=0.8, color="0.5")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("SoC %")
    ax.legend(fontsize=8)
    _markers(ax, col)
    save(fig, "soc.png", "State of charge")
    return plots
