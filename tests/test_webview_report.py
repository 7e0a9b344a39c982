"""The demo report's "why" data and plots (sim/demo/why.py, sim/demo/plots.py) on a real
station run, and the figures in its HTML."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from cycle_fixtures import rig, small_truck

from controller.limits import Limit, gun
from sim.demo import plots
from sim.demo.report import _html
from sim.demo.why import LimitTrace, kind_of


def test_limit_sources_are_sorted_into_kinds() -> None:
    assert kind_of("cable:config") == "cable"
    assert kind_of("ev_max:vehicle") == "ev_max"
    assert kind_of("ev_request:fallback") == "ev_request"
    assert kind_of("OCPP") == "ocpp" and kind_of("ocpp:TxProfile#7") == "ocpp"
    assert kind_of("thermal:derating") == "other"


async def test_trace_keeps_every_limit_of_every_cycle_and_the_plot_draws_them(
        tmp_path: Path) -> None:
    async with rig([small_truck("A", ev_max_current_a=300.0, target_soc_pct=95.0),
                    small_truck("B")]) as r:
        trace = LimitTrace(r.station)
        r.trucks[0].plug_in()
        await r.until(lambda rec: rec.guns[0].state == "Charging")
        r.station.limits.set(gun(0), "ocpp", Limit(120.0, "OCPP", r.clock.t,
                                                   r.clock.t + 60.0))
        await r.step(30)
        records = list(r.records)
    assert len(trace.rows) == len(records)
    last = trace.rows[-1][0]
    assert last["cable"] == 1500.0 and last["ev_max"] == 300.0 and last["ocpp"] == 120.0
    assert math.isfinite(last["station_share"]) and last["station_share"] > 1000.0
    assert math.isnan(trace.rows[-1][1]["ocpp"])  # gun 2 has no OCPP limit
    assert records[-1].guns[0].binding == "GUN_MAX"

    t = np.arange(len(records)) * 0.1
    a = {"current": np.array([[g.current_a for g in rec.guns] for rec in records])}
    col = SimpleNamespace(why=trace, markers=[{"t_s": 1.0, "kind": "ocpp_limit"}],
                          gun_binding=[[f"{g.binding}:{g.binding_source}" for g in rec.guns]
                                       for rec in records])
    made: list[str] = []

    def save(fig: object, name: str, title: str) -> None:
        fig.savefig(tmp_path / name)  # type: ignore[attr-defined]
        made.append(name)
        legend = [x.get_text() for x in fig.axes[0].get_legend().get_texts()]  # type: ignore[attr-defined]
        assert "OCPP limit" in legend and "EV maximum" in legend
        assert "bound by: gun max (cable, EV max, OCPP)" in legend
        assert "gun 1 measured" in legend

    plots._why(t, a, col, 0, save)
    assert made == ["why_gun1.png"] and (tmp_path / "why_gun1.png").stat().st_size > 5000


def test_module_colours_are_stable_and_distinct() -> None:
    assert plots.module_color(3) == plots.module_color(3)
    assert len({plots.module_color(m) for m in range(20)}) == 20


def test_html_carries_peak_power_moves_lowest_cap_and_screenshots() -> None:
    rep = {"scenario": "s", "description": "d", "grid_signal": "g", "backend": "b",
           "checks": {}, "events": [], "plots": [],
           "summary": {"trucks": [], "peak_station_kw": 1440.0, "cap_at_peak_kw": 1440.0,
                       "min_cap_kw": 576.0, "module_moves": 12},
           "screenshots": [("live_view.png", "Live view at the end of the run")]}
    page = _html(rep)
    assert "1440 kW" in page and "576 kW" in page and "<b>12</b>" in page
    assert "live_view.png" in page
