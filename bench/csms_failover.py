"""Failover under load, at scale: two instances on PostgreSQL behind HAProxy, kill -9 of one.

N stations (``tests/cluster_fixtures.RawStation``: each resends what was not answered after a
reconnect, as OCPP E04 asks) send a TransactionEvent every ``--period`` seconds through the
proxy; ``--kill-after`` seconds after the last one connected, instance B gets SIGKILL;
``--wind-down`` seconds later the stations stop adding events and finish what they have.
Then every station's events are read back from the database: each (transaction, seqNo)
stored exactly once, energy exact, no flagged sample; the API of A is polled throughout.

    python bench/csms_failover.py --stations 2000 --period 5

Last line JSON: stations, events created/stored/missing/duplicated, energy mismatches, the
stations B held, the time until all were confirmed after the kill, the API's answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster_fixtures import (  # noqa: E402
    STEP_WH,
    RawStation,
    haproxy,
    start_instance,
    stop_instance,
)
from pg_fixtures import PgCluster  # noqa: E402


async def _held(inst: object) -> int:
    async with inst.api() as api:  # type: ignore[attr-defined]
        return int((await api.get("/healthz")).json()["connected"])


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stations", type=int, default=2000)
    ap.add_argument("--wind-down", type=float, default=20.0,
                    help="seconds after the kill until stations stop adding events")
    ap.add_argument("--period", type=float, default=5.0, help="seconds between events")
    ap.add_argument("--kill-after", type=float, default=20.0,
                    help="seconds after all stations are connected")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load0 = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="csms-failover-"))
    pg = PgCluster().start()
    out: dict[str, object] = {}
    try:
        url = pg.new_database()
        extra = {"admit_rate_per_s": 300, "admit_burst": 200, "rate_per_s": 50}
        a = start_instance(tmp, url, "a", **extra)
        b = start_instance(tmp, url, "b", **extra)
        ids = [f"FO{i:05d}" for i in range(args.stations)]
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO stations (id, security_profile, approved, created_at)"
                            " VALUES (%s, 0, 1, '2026-01-01T00:00:00.000Z')",
                            [(i,) for i in ids])
        try:
            with haproxy(tmp, a, b) as proxy:
                stations = [RawStation(f"ws://127.0.0.1:{proxy.ocpp_port}", s) for s in ids]
                stop = asyncio.Event()
                tasks = [asyncio.create_task(s.run(stop, args.period, 10**9))
                         for s in stations]
                t0 = time.monotonic()
                while await _held(a) + await _held(b) < args.stations:
                    if time.monotonic() - t0 > 600:
                        raise RuntimeError("stations did not all connect in 600 s")
                    await asyncio.sleep(1.0)
                print(f"{args.stations} stations connected in {time.monotonic() - t0:.1f} s")
                await asyncio.sleep(args.kill_after)
                on_b = await _held(b)
                b.proc.kill()
                t_kill = time.monotonic()
                print(f"kill -9 of instance b, which held {on_b} stations")
                codes: dict[int, int] = {}
                wound_down = False
                async with a.api() as api:
                    while not all(t.done() for t in tasks):
                        if not wound_down and time.monotonic() - t_kill > args.wind_down:
                            for st in stations:
                                st.cap = st.seq  # what it created; it finishes those
                            stop.set()
                            wound_down = True
                        try:
                            c = (await api.get("/api/v1/transactions?limit=5")).status_code
                        except Exception:
                            c = -1
                        codes[c] = codes.get(c, 0) + 1
                        await asyncio.sleep(0.5)
                        if time.monotonic() - t_kill > 900:
                            raise RuntimeError("stations did not finish in 900 s")
                done_s = time.monotonic() - t_kill
                errors = [r for r in await asyncio.gather(*tasks, return_exceptions=True)
                          if isinstance(r, BaseException)]
                moved = sum(1 for s in stations if s.connects > 1)
        finally:
            for inst in (a, b):
                stop_instance(inst)
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT t.transaction_id, count(e.*), count(DISTINCT e.seq_no),"
                " (SELECT max(value) - min(value) FROM meter_values m WHERE m.tx_pk = t.id"
                "  AND m.flag IS NULL), (SELECT count(*) FROM meter_values m"
                "  WHERE m.tx_pk = t.id), (SELECT count(*) FROM meter_values m"
                "  WHERE m.tx_pk = t.id AND m.flag IS NOT NULL)"
                " FROM transactions t JOIN transaction_events e ON e.tx_pk = t.id"
                " GROUP BY t.id, t.transaction_id").fetchall()
        expected = sum(st.seq for st in stations)
        steps = {f"{st.id}-TX": st.seq - 1 for st in stations}
        stored = sum(r[2] for r in rows)
        duplicated = sum(r[1] - r[2] for r in rows)  # the unique index forbids these
        samples_off = sum(abs(r[4] - r[2]) for r in rows)  # one sample per event stored
        energy_bad = sum(1 for r in rows if r[3] != steps[r[0]] * STEP_WH)
        flagged = sum(r[5] for r in rows)
        out = {"stations": args.stations, "events_expected": expected,
               "events_stored": stored, "events_missing": expected - stored,
               "events_duplicated": duplicated, "samples_not_one_per_event": samples_off,
               "energy_mismatches": energy_bad,
               "flagged_samples": flagged, "station_errors": len(errors),
               "held_by_killed": on_b, "stations_reconnected": moved,
               "all_confirmed_s_after_kill": round(done_s, 1),
               "api_answers": {str(k): v for k, v in sorted(codes.items())},
               "loadavg_1m_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)]}
        if errors:
            print(f"first station error: {errors[0]!r}"[:300])
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))
    ok = all(out.get(k) == 0 for k in ("events_missing", "events_duplicated",
                                       "samples_not_one_per_event", "energy_mismatches"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
