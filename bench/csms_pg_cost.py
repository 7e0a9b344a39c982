"""Cost per message of the PostgreSQL repository: statements, round trips, CPU seconds.

Runs ``PostgresRepository`` in this process against a private PostgreSQL (pg_stat_statements
loaded), with ``--stations`` stations each sending TransactionEvents sequentially (the shape
``bench/csms_load.py`` sends: one energy, one power and one current sample). Measured in two
rounds, the second after ``--grow`` more rows per station are in the tables, so a per-message
cost that grows with the tables shows as a difference between the rounds.

    python bench/csms_pg_cost.py --stations 200 --events 25

Last line JSON: per 1,000 messages, ``statements`` (server side, pg_stat_statements),
``server_cpu_s`` (all PostgreSQL processes), ``client_cpu_s`` (this process: the storage
threads' Python), per round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pg_fixtures import PgCluster  # noqa: E402

from ocpp_server.pg_storage import PostgresRepository  # noqa: E402
from ocpp_server.repository import StationRecord  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _event(sid: str, seq: int) -> dict[str, Any]:
    ts = (T0 + timedelta(seconds=10 * seq)).isoformat().replace("+00:00", "Z")
    return {"eventType": "Started" if seq == 0 else "Updated", "timestamp": ts,
            "triggerReason": "MeterValuePeriodic", "seqNo": seq,
            "transactionInfo": {"transactionId": f"{sid}-tx", "chargingState": "Charging"},
            "evse": {"id": 1, "connectorId": 1},
            "meterValue": [{"timestamp": ts, "sampledValue": [
                {"value": 1000.0 + 900.0 * seq, "measurand": "Energy.Active.Import.Register",
                 "unitOfMeasure": {"unit": "Wh"}},
                {"value": 350000.0, "measurand": "Power.Active.Import",
                 "unitOfMeasure": {"unit": "W"}},
                {"value": 583.3, "measurand": "Current.Import",
                 "unitOfMeasure": {"unit": "A"}}]}]}


def _server_cpu(postmaster: psutil.Process) -> float:
    total = 0.0
    for p in [postmaster, *postmaster.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += sum(p.cpu_times()[:2])
    return total


async def _round(repo: PostgresRepository, ids: list[str], first: int, events: int,
                 url: str, postmaster: psutil.Process) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SELECT pg_stat_statements_reset()")
    me = psutil.Process()
    s0, c0, w0 = _server_cpu(postmaster), sum(me.cpu_times()[:2]), time.monotonic()

    async def station(sid: str) -> None:
        for seq in range(first, first + events):
            if not await repo.record_transaction_event(sid, _event(sid, seq)):
                raise RuntimeError(f"{sid} seq {seq} taken for a repeat")

    await asyncio.gather(*(station(s) for s in ids))
    wall = time.monotonic() - w0
    server, client = _server_cpu(postmaster) - s0, sum(me.cpu_times()[:2]) - c0
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT sum(calls) FROM pg_stat_statements WHERE query NOT LIKE"
                        " '%pg_stat_statements%'").fetchone()
    n = len(ids) * events
    k = 1000.0 / n
    return {"messages": n, "statements": round(float(row[0] if row else 0) * k, 1),
            "server_cpu_s": round(server * k, 3), "client_cpu_s": round(client * k, 3),
            "msgs_per_s": round(n / wall, 1)}


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stations", type=int, default=200)
    ap.add_argument("--events", type=int, default=25, help="per station and round")
    ap.add_argument("--grow", type=int, default=250,
                    help="events per station stored between the two rounds")
    args = ap.parse_args()
    pg = PgCluster().start("shared_preload_libraries=pg_stat_statements")
    try:
        url = pg.new_database()
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_stat_statements")
        postmaster = psutil.Process(int((pg.data / "postmaster.pid").read_text().split()[0]))
        repo = PostgresRepository(url)
        await repo.open()
        ids = [f"COST{i:05d}" for i in range(args.stations)]
        for sid in ids:
            await repo.add_station(StationRecord(sid, 1, True))
        try:
            first = await _round(repo, ids, 0, args.events, url, postmaster)
            await _round(repo, ids, args.events, args.grow, url, postmaster)
            start = args.events + args.grow
            grown = await _round(repo, ids, start, args.events, url, postmaster)
        finally:
            await repo.close()
    finally:
        pg.stop()
    load = os.getloadavg()[0]
    print(f"first round: {first}\nafter growth: {grown}")
    print(json.dumps({"per_1000_msgs": {"first": first, "grown": grown},
                      "load_1m": round(load, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
