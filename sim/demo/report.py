"""The end of a run: verdicts from the real data, the summary table, report.json, plots.

Verdicts are computed from the cycle records the collector kept, the simulator's contactor
switch log and meters, and the station's safety monitor — never assumed. A check that could
not run says ``not_run`` with the reason.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

PASS, FAIL, NOT_RUN = "pass", "fail", "not_run"


def _verdict(ok: bool | None, detail: str, **values: Any) -> dict[str, Any]:
    status = NOT_RUN if ok is None else PASS if ok else FAIL
    return {"verdict": status, "detail": detail, **values}


def check_violations(station: Any, physics: Any, col: Any) -> dict[str, Any]:
    hot = physics.hot_switches()
    n = int(station.violations) + len(hot)
    return _verdict(n == 0, "safety monitor violations + contactor switches under load "
                    "(simulator switch log)", value=n, safety_monitor=int(station.violations),
                    hot_switches=len(hot), examples=col.record_violations[:5])


def check_cap(a: dict[str, np.ndarray], window_s: float) -> dict[str, Any]:
    t, p, cap = a["t"], a["power_kw"], a["cap_kw"]
    bad = []
    for i in range(len(t)):
        if p[i] <= cap[i] * 1.005 + 1.0:
            continue
        recent = cap[(t >= t[i] - window_s) & (t <= t[i])]
        if p[i] <= recent.max() * 1.005 + 1.0:
            continue  # within the ramp-down window after the cap dropped
        bad.append(i)
    over = [{"t_s": round(float(t[i]), 2), "power_kw": round(float(p[i]), 1),
             "cap_kw": round(float(cap[i]), 1)} for i in bad[:5]]
    return _verdict(not bad, f"station power ≤ cap (+0.5 %) except within {window_s:g} s after "
                    "a cap drop", samples_over=len(bad), examples=over)


def check_fault(col: Any, a: dict[str, np.ndarray], window_s: float) -> dict[str, Any]:
    faults = [f for f in col.fault_modules if f[2] in ("pump_failure", "module_fault")]
    if not faults:
        return _verdict(None, "no module fault in this scenario")
    t, avail, mset, mgun = a["t"], a["avail"], a["mod_set"], a["mod_gun"]
    rated = col.scenario.station.module_current_a
    results = []
    for tf, m, kind in faults:
        idx = np.nonzero((t >= tf) & (avail[:, m] < 0.9 * rated))[0]
        if idx.size == 0:
            results.append({"module": m, "kind": kind, "ok": False,
                            "why": "the module never derated during the run"})
            continue
        d = int(idx[0])
        before = max(d - 1, 0)
        g = int(mgun[before, m])
        after = (t > t[d] + 2 * col.scenario.dt_s) & (t <= t[d] + window_s)
        follows = bool(np.all(mset[after, m] <= avail[after, m] + 1.0))
        end = int(np.nonzero(t <= t[d] + window_s)[0][-1])
        if g < 0:
            covered, why = True, "module was not connected to a gun"
        else:
            sp_before = a["setpoint"][before, g]
            sp_end = a["setpoint"][end, g]
            binding = col.gun_binding[end][g].split(":")[0]
            covered = sp_end >= 0.95 * sp_before or binding not in ("POOL", "DRAINING")
            why = (f"gun {g + 1} setpoint {sp_before:.0f} A before, {sp_end:.0f} A "
                   f"{t[end] - t[d]:.0f} s after derating; bound by {binding}")
        results.append({"module": m, "kind": kind, "derated_at_s": round(float(t[d]), 1),
                        "setpoint_follows_available": follows, "gun_covered": bool(covered),
                        "ok": bool(follows and covered), "why": why})
    return _verdict(all(r["ok"] for r in results), "after a module derates or faults, it is "
                    "never asked for more than it can give and the gun's demand is covered "
                    f"again within {window_s:g} s", faults=results)


def _match(col: Any, txs: list[dict[str, Any]]) -> list[tuple[Any, dict[str, Any] | None]]:
    """Each session the station ran, with the backend transaction of its gun and token."""
    pairs: list[tuple[Any, dict[str, Any] | None]] = []
    left = sorted(txs, key=lambda tx: str(tx.get("started_at", "")))
    for s in col.sessions:
        found = next((tx for tx in left if tx.get("id_token") == s.token
                      and int(tx.get("evse_id") or s.gun + 1) == s.gun + 1), None)
        if found is not None:
            left.remove(found)
        pairs.append((s, found))
    return pairs


def check_transactions(state: Any, col: Any) -> dict[str, Any]:
    txs = state.transactions
    if state.interrupted:  # sessions cut short: nothing to compare yet, not a failure
        return _verdict(None, "not run: the sessions had not ended")
    if txs is None:
        why = "; ".join(state.notes) or "backend link not connected"
        return _verdict(None, f"not run: {why}")
    rows, ok = [], bool(col.sessions)
    for s, tx in _match(col, txs):
        if tx is None:
            rows.append({"gun": s.gun + 1, "token": s.token, "ok": False,
                         "why": "no transaction in the backend"})
            ok = False
            continue
        events = tx.get("events", [])
        kinds = [e.get("event_type") for e in events]
        seqs = [int(e.get("seq_no", -1)) for e in events]
        gap_free = seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False
        good = (bool(kinds) and kinds[0] == "Started" and "Updated" in kinds
                and kinds[-1] == "Ended" and gap_free and not tx.get("active", True))
        ok = ok and good
        offline = sum(1 for e in events if (e.get("payload") or {}).get("offline"))
        rows.append({"gun": s.gun + 1, "token": s.token, "transaction": tx.get("id"),
                     "events": len(events), "seq_no": [min(seqs), max(seqs)] if seqs else [],
                     "delivered_after_outage": offline, "ok": good})
    extra = len(txs) - sum(1 for _s, tx in _match(col, txs) if tx is not None)
    return _verdict(ok and extra == 0, "every session has one backend transaction: Started, "
                    "Updated…, Ended, seqNo gap-free, not active", transactions=rows,
                    unmatched_in_backend=extra)


def check_energy(state: Any, col: Any) -> dict[str, Any]:
    txs = state.transactions
    if state.interrupted:  # sessions cut short: nothing to compare yet, not a failure
        return _verdict(None, "not run: the sessions had not ended")
    if txs is None:
        why = "; ".join(state.notes) or "backend link not connected"
        return _verdict(None, f"not run: {why}")
    rows, ok = [], bool(col.sessions)
    for s, tx in _match(col, txs):
        meter = ((s.stop_meter_wh or 0.0) - s.start_meter_wh)
        backend = float(tx.get("energy_wh") or 0.0) if tx else float("nan")
        good = tx is not None and meter > 0 and abs(backend - meter) <= 0.001 * meter
        ok = ok and good
        rows.append({"gun": s.gun + 1, "meter_wh": round(meter, 1),
                     "backend_wh": round(backend, 1), "ok": good})
    detail = "backend energy equals the DC meter energy within 0.1 %"
    if not ok:
        detail += ": " + ", ".join(f"gun {r['gun']} meter {r['meter_wh']:.0f} Wh, backend "
                                   f"{r['backend_wh']:.0f} Wh" for r in rows)
    return _verdict(ok, detail, sessions=rows)


def summary(state: Any, col: Any, station: Any, physics: Any) -> dict[str, Any]:
    a = col.arrays()
    trucks = []
    for spec in state.scenario.trucks:
        g = spec.gun
        sess = [s for s in col.sessions if s.gun == g]
        energy = sum((s.stop_meter_wh if s.stop_meter_wh is not None
                      else physics.meters[g].energy_wh) - s.start_meter_wh for s in sess)
        dur = sum(((s.stop_t if s.stop_t is not None else a["t"][-1]) - s.start_t)
                  for s in sess)
        soc = physics.loads[g].soc_pct
        trucks.append({"truck": spec.params.name, "gun": g + 1, "id_token": spec.params.id_token,
                       "energy_kwh": round(energy / 1000.0, 2),
                       "battery_energy_kwh": round(physics.loads[g].energy_wh / 1000.0, 2),
                       "charging_time_s": round(dur, 1),
                       "soc_start_pct": spec.params.start_soc_pct,
                       "soc_end_pct": round(soc, 2),
                       "target_soc_pct": spec.params.target_soc_pct,
                       "reached_target": soc >= spec.params.target_soc_pct - 0.05,
                       "sessions": len(sess)})
    peak = int(np.argmax(a["power_kw"])) if len(a["t"]) else 0
    return {
        "trucks": trucks,
        "simulated_s": round(float(a["t"][-1]), 1) if len(a["t"]) else 0.0,
        "cycles": len(a["t"]),
        "peak_station_kw": round(float(a["power_kw"][peak]), 1) if len(a["t"]) else 0.0,
        "cap_at_peak_kw": round(float(a["cap_kw"][peak]), 1) if len(a["t"]) else 0.0,
        "min_cap_kw": round(float(a["cap_kw"].min()), 1) if len(a["t"]) else 0.0,
        "station_overruns": int(station.overruns),
        "module_moves": module_moves(a["mod_gun"]),
    }


def module_moves(mod_gun: np.ndarray) -> int:
    """Modules that left one gun and were connected to the other (drained and switched)."""
    moves = 0
    for m in range(mod_gun.shape[1] if mod_gun.ndim == 2 else 0):
        last = -1
        for g in mod_gun[:, m]:
            if g >= 0:
                if last >= 0 and g != last:
                    moves += 1
                last = int(g)
    return moves


def write(state: Any, col: Any, station: Any, physics: Any, out: Path) -> dict[str, Any]:
    sc = state.scenario
    a = col.arrays()
    checks = {
        "violations": check_violations(station, physics, col),
        "transactions_complete": check_transactions(state, col),
        "energy_matches_meters": check_energy(state, col),
        "cap_respected": check_cap(a, sc.cap_window_s) if len(a["t"]) else
        _verdict(None, "no cycles ran"),
        "pool_reallocated_after_fault": check_fault(col, a, sc.fault_window_s),
    }
    if state.interrupted:
        for c in checks.values():
            c["detail"] += " (run interrupted)"
    rep = {
        "scenario": sc.name, "description": sc.description, "scenario_file": sc.path,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "interrupted": state.interrupted, "wall_s": round(state.wall_s, 1),
        "dt_s": sc.dt_s, "shorten": state.options.shorten,
        "grid_signal": state.grid_mode, "backend": state.backend_mode, "notes": state.notes,
        "summary": summary(state, col, station, physics),
        "checks": checks,
        "events": state.log,
        "backend_transactions": state.transactions,
        "plots": [],
    }
    from sim.demo import plots

    rep["plots"] = plots.draw(a, col, out)
    from sim.demo.pages import listed

    rep["screenshots"] = listed(out)
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
    (out / "index.html").write_text(_html(rep))
    return rep


def _html(rep: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td class='{e(v['verdict'])}'>{e(v['verdict'])}</td>"
                   f"<td>{e(v['detail'])}</td></tr>" for k, v in rep["checks"].items())
    trucks = "".join(f"<tr><td>{e(t['truck'])}</td><td>{t['energy_kwh']}</td>"
                     f"<td>{t['charging_time_s']}</td><td>{t['soc_start_pct']} → "
                     f"{t['soc_end_pct']}</td></tr>" for t in rep["summary"]["trucks"])
    imgs = "".join(f"<h2>{e(p['title'])}</h2><img src='{e(p['file'])}' alt='{e(p['title'])}'>"
                   for p in rep["plots"])
    events = "".join(f"<li>t+{ev['t_s']:.0f} s: {e(ev['text'])} [{e(ev['status'])}]</li>"
                     for ev in rep["events"])
    sm = rep["summary"]
    figures = (f"<p>peak station power <b>{sm['peak_station_kw']:g} kW</b> (cap then "
               f"{sm['cap_at_peak_kw']:g} kW); lowest cap <b>{sm['min_cap_kw']:g} kW</b>; "
               f"modules moved between guns <b>{sm['module_moves']}</b></p>")
    shots = "".join(f"<h2>{e(name)}</h2><img src='{e(file)}' alt='{e(name)}'>"
                    for file, name in rep.get("screenshots", []))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mwc demo: "
            f"{e(rep['scenario'])}</title><style>body{{font-family:sans-serif;max-width:1100px;"
            "margin:auto}img{max-width:100%}td{padding:2px 8px}.pass{color:green}"
            ".fail{color:red}.not_run{color:gray}</style></head><body>"
            f"<h1>mwc demo — {e(rep['scenario'])}</h1><p>{e(rep['description'])}</p>"
            f"<p>grid signal: {e(rep['grid_signal'])}; backend: {e(rep['backend'])}</p>"
            f"{figures}"
            f"<table><tr><th>check</th><th>verdict</th><th></th></tr>{rows}</table>"
            f"<table><tr><th>truck</th><th>kWh</th><th>charging s</th><th>SoC %</th></tr>"
            f"{trucks}</table><ul>{events}</ul>{imgs}{shots}</body></html>\n")


def print_summary(rep: dict[str, Any], out: Path) -> None:
    s = rep["summary"]
    print(f"\n== {rep['scenario']}: {s['simulated_s']:g} s simulated in {rep['wall_s']:g} s "
          f"wall ({s['cycles']} cycles){' — INTERRUPTED' if rep['interrupted'] else ''}")
    print(f"  {'truck':<12}{'gun':>4}{'energy kWh':>12}{'charging s':>12}{'SoC %':>16}")
    for t in s["trucks"]:
        print(f"  {t['truck']:<12}{t['gun']:>4}{t['energy_kwh']:>12.1f}"
              f"{t['charging_time_s']:>12.0f}{t['soc_start_pct']:>8g} → {t['soc_end_pct']:<5.1f}")
    print(f"  modules moved between guns: {s['module_moves']}")
    print(f"  peak station power {s['peak_station_kw']:g} kW (cap then {s['cap_at_peak_kw']:g} "
          f"kW, lowest cap {s['min_cap_kw']:g} kW)")
    for name, c in rep["checks"].items():
        print(f"  {name:<30} {c['verdict'].upper():<8} {c['detail']}")
    for n in rep["notes"]:
        print(f"  note: {n}")
    print(f"  report: {out / 'report.json'}  plots: {out / 'index.html'}")
