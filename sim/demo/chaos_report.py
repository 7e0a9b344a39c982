"""The ``chaos`` run's record and verdicts (``sim/demo/chaos.py`` runs it): what was sampled
and logged, the checks computed from it, ``report.json``. Pure: a constructed run (tests)
gets the same verdicts as a real one."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.demo.scenario import Scenario

#: A disturbance and the event that ends it (recovery is measured from the latter).
ENDS = {"backend_online": "backend_offline", "broker_restart": "broker_restart",
        "simulator_restart": "simulator_kill", "controller_restart": "controller_kill"}
CHARGING_A = 20.0


@dataclass
class Sample:
    t: float
    currents: tuple[float, float]
    ctl_pid: int | None


@dataclass
class ChaosState:
    scenario: Scenario
    out: Path
    shorten: float
    samples: list[Sample] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    t0: float = 0.0  # wall time both trucks first charged (event times count from here)
    controller_logs: list[Path] = field(default_factory=list)
    final_rc: int | None = None
    coils_on: int | None = None
    transactions: list[dict[str, Any]] | None = None
    interrupted: bool = False
    wall_s: float = 0.0
    mqtt_back_s: float | None = None  # telemetry seen this long after the broker restart


# --------------------------------------------------------------------------- verdicts


def _verdict(ok: bool | None, detail: str, **values: Any) -> dict[str, Any]:
    return {"verdict": "not_run" if ok is None else "pass" if ok else "fail",
            "detail": detail, **values}


def _log_lines(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        with contextlib.suppress(OSError):
            for line in p.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(json.JSONDecodeError):
                        out.append(json.loads(line))
    return out


def verdicts(st: ChaosState) -> dict[str, dict[str, Any]]:
    sc, checks = st.scenario, {}
    window = sc.fault_window_s
    checks["charging_started"] = _verdict(st.t0 > 0, f"both guns above {CHARGING_A:g} A "
                                          "before the first event")
    events = [e for e in st.log if e["kind"] in ENDS or e["kind"] in ENDS.values()]
    no_restart_ok: list[bool] = []
    pid0 = next((s.ctl_pid for s in st.samples if s.t >= st.t0 and s.ctl_pid), None)
    killed_at = next((st.t0 + e["t_s"] for e in st.log if e["kind"] == "controller_kill"
                      and e["status"] == "done"), math.inf)
    done = [e for e in events if e["status"] == "done" and e["t_s"] is not None]
    for i, e in enumerate(done):
        t_ev = st.t0 + e["t_s"]
        if e["kind"] == "backend_offline":
            end = next((st.t0 + x["t_s"] for x in done[i + 1:]
                        if x["kind"] == "backend_online"), math.inf)
            during = [s for s in st.samples if t_ev + 2.0 <= s.t <= end]
            share = (sum(all(c > CHARGING_A for c in s.currents) for s in during)
                     / len(during)) if during else 0.0
            ok = share >= 0.95
            checks["charging_while_backend_away"] = _verdict(
                ok if during else None, "both guns kept charging while the backend was away",
                share=round(share, 3), samples=len(during))
            continue
        if e["kind"] not in ENDS:
            continue
        nxt = next((st.t0 + x["t_s"] for x in st.log if x["t_s"] is not None
                    and st.t0 + x["t_s"] > t_ev), math.inf)  # a later event ends the window
        after = [s for s in st.samples if t_ev <= s.t <= min(t_ev + window, nxt)]
        back = next((s for s in after if all(c > CHARGING_A for c in s.currents)), None)
        took = None if back is None else round(back.t - t_ev, 2)
        ok = back is not None
        checks[f"recovery:{e['kind']}"] = _verdict(
            ok, f"both guns above {CHARGING_A:g} A within {window:g} s after {e['kind']}",
            seconds=took)
        if e["kind"] != "controller_restart" and t_ev < killed_at:
            same = back is not None and back.ctl_pid == pid0 and pid0 is not None
            no_restart_ok.append(ok and same)
    if any(e["kind"] == "broker_restart" and e["status"] == "done" for e in st.log):
        checks["mqtt_after_broker_restart"] = _verdict(
            st.mqtt_back_s is not None, f"telemetry reaches a new subscriber within {window:g} s "
            "after the broker restart", seconds=st.mqtt_back_s)
    lines = _log_lines(st.controller_logs)
    unplugs = [x for x in lines if x.get("event") == "gun state"
               and x.get("reason") == "EVDisconnected"]
    checks["no_spurious_unplug"] = _verdict(not unplugs, "no session ended EVDisconnected "
                                            "(the trucks stayed plugged)", count=len(unplugs))
    viol = [x for x in lines if x.get("event") == "safety violation"]
    checks["violations"] = _verdict(not viol, "no safety violation in any controller life",
                                    count=len(viol),
                                    examples=[x.get("violations") for x in viol[:3]])
    checks["transactions_complete"] = _tx_verdict(st.transactions)
    ok_stop = st.final_rc == 0 and st.coils_on == 0
    checks["stopped_safely"] = _verdict(
        None if st.final_rc is None else ok_stop,
        "after the final SIGTERM the controller exits 0 and no matrix coil is on",
        exit_code=st.final_rc, coils_on=st.coils_on)
    checks["recovered_without_restart"] = _verdict(
        bool(no_restart_ok) and all(no_restart_ok) if no_restart_ok else None,
        "every disturbance but the controller's own kill recovered while the same controller "
        "process kept running", value=bool(no_restart_ok) and all(no_restart_ok),
        disturbances=len(no_restart_ok))
    return checks


def _tx_verdict(txs: list[dict[str, Any]] | None) -> dict[str, Any]:
    if txs is None:
        return _verdict(None, "backend transactions not readable")
    bad, open_ = [], []
    for tx in txs:
        evs = tx.get("events") or []
        kinds = [e.get("event_type") for e in evs]
        seq = [int(e.get("seq_no", -1)) for e in evs]
        if "Ended" not in kinds:
            open_.append(tx.get("transaction_id") or tx.get("id"))
            continue
        gap_free = bool(seq) and seq == list(range(seq[0], seq[0] + len(seq)))
        if not (kinds and kinds[0] == "Started" and kinds[-1] == "Ended" and gap_free):
            bad.append({"id": tx.get("transaction_id") or tx.get("id"), "kinds": kinds[:6],
                        "seq": seq[:10]})
    ended = len(txs) - len(open_)
    return _verdict(not bad and ended > 0 if txs else None,
                    "every ended transaction: Started … Ended, seqNo gap-free", ended=ended,
                    still_open=open_, bad=bad[:5])


def write_report(st: ChaosState) -> dict[str, Any]:
    checks = verdicts(st)
    rep = {
        "scenario": st.scenario.name, "mode": "processes (real time)", "shorten": st.shorten,
        "wall_s": round(st.wall_s, 1), "interrupted": st.interrupted,
        "recovered_without_restart": checks["recovered_without_restart"]["value"],
        "checks": checks, "events": st.log, "notes": st.notes,
        "controller_logs": [str(p) for p in st.controller_logs],
        "samples": [{"t_s": round(s.t - st.t0, 2), "a": [round(c, 1) for c in s.currents],
                     "pid": s.ctl_pid} for s in st.samples[:: max(1, len(st.samples) // 600)]],
    }
    (st.out / "report.json").write_text(json.dumps(rep, indent=1, default=str))
    return rep


def failed(st: ChaosState) -> bool:
    rep = json.loads((st.out / "report.json").read_text())
    return any(c["verdict"] == "fail" for c in rep["checks"].values())
