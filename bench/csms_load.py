"""Load test of the OCPP backend: N simulated 2.0.1 stations on loopback.

The backend runs as its own process (``python -m ocpp_server serve``); the stations are spread
over several load-generator processes, each holding hundreds of websocket connections and
speaking raw OCPP-J (cheaper than the ``ocpp`` package, so more CPU is left to the backend).
Every station authenticates with HTTP Basic, boots, then on a compressed schedule sends
Heartbeat and TransactionEvent(Updated) with meter values. Round trips are timed per CALL
during the steady phase only. The load generator shares the machine with the backend.

    python bench/csms_load.py --stations 2000 --procs 4 --duration 60
    python bench/csms_load.py --topology 2x-pg-haproxy --stations 4000 --storm

Topologies: ``single-sqlite`` (one process, SQLite file), ``single-pg`` (one process on a
private PostgreSQL started by the bench), ``2x-pg-haproxy`` (two processes on that PostgreSQL
behind a private HAProxy running deploy/haproxy/csms.cfg). ``--storm``: after the steady
phase every station drops its connection at once and reconnects (retrying on 503 from the
admission rate, ``--admit-rate``); the time until all are back and the largest event-loop
stall of any instance during it are reported.

The last line is JSON: {"stations", "msgs_per_s", "rtt_ms_p50", "rtt_ms_p99",
"instances": [{"cpu_pct", "rss_mb"}...], "storm_s", "storm_stall_ms_max", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from csms_logs import summarise_logs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PASSWORD = "bench-password-0001"


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- load generator (child process) -------------------------------------------------------
class _Station:
    """One raw OCPP-J 2.0.1 client: sequential CALLs, as a real station does."""

    def __init__(self, ws: Any, sid: str) -> None:
        self.ws, self.sid, self.n = ws, sid, 0

    async def call(self, action: str, payload: dict[str, Any]) -> tuple[float, Any]:
        self.n += 1
        mid = f"{self.sid}-{self.n}"
        t0 = time.perf_counter()
        await self.ws.send(json.dumps([2, mid, action, payload], separators=(",", ":")))
        reply = json.loads(await self.ws.recv())
        rtt = (time.perf_counter() - t0) * 1000.0
        if reply[0] != 3 or reply[1] != mid:
            raise RuntimeError(f"{action}: unexpected reply {str(reply)[:200]}")
        return rtt, reply[2]


async def _station_life(url: str, sid: str, args: dict[str, Any], ready: asyncio.Event,
                        start_at: list[float], stats: dict[str, Any],
                        gate: asyncio.Semaphore, storm: list[asyncio.Event]) -> None:
    auth = base64.b64encode(f"{sid}:{PASSWORD}".encode()).decode()
    try:
        ws = await _connect(url, sid, auth, stats, "ramp_retries",
                            args["honour_retry_after"], gate)
        st = _Station(ws, sid)
        stats["connected"] += 1
    except Exception as exc:
        stats["connect_errors"] += 1
        stats["last_error"] = repr(exc)[:200]
        return
    await ready.wait()
    rtts: list[float] = stats["rtts"]
    hb_rtts: list[float] = stats["hb_rtts"]
    hb, tx, status_s = args["heartbeat_s"], args["tx_s"], args["status_s"]
    t_end = start_at[0] + args["duration"]
    due = {"hb": start_at[0] + random.uniform(0, hb),
           "tx": start_at[0] + random.uniform(0, tx),
           "st": start_at[0] + random.uniform(0, status_s)}
    seq, energy = 0, random.uniform(0, 1e6)
    try:
        while True:
            kind = min(due, key=due.__getitem__)
            if due[kind] >= t_end:
                break
            await asyncio.sleep(max(0.0, due[kind] - time.time()))
            if kind == "tx":
                energy += 350_000 * tx / 3600
                rtt, _ = await st.call("TransactionEvent", {
                    "eventType": "Started" if seq == 0 else "Updated", "timestamp": _now(),
                    "triggerReason": "MeterValuePeriodic", "seqNo": seq,
                    "transactionInfo": {"transactionId": f"{sid}-tx",
                                        "chargingState": "Charging"},
                    "evse": {"id": 1, "connectorId": 1},
                    "meterValue": [{"timestamp": _now(), "sampledValue": [
                        {"value": round(energy, 1), "measurand": "Energy.Active.Import.Register",
                         "unitOfMeasure": {"unit": "Wh"}},
                        {"value": 350000.0, "measurand": "Power.Active.Import",
                         "unitOfMeasure": {"unit": "W"}},
                        {"value": 583.3, "measurand": "Current.Import",
                         "unitOfMeasure": {"unit": "A"}}]}]})
                seq += 1
                due["tx"] += tx
            elif kind == "st":
                rtt, _ = await st.call("StatusNotification", {
                    "timestamp": _now(), "connectorStatus": "Occupied", "evseId": 1,
                    "connectorId": 1})
                due["st"] += status_s
            else:
                rtt, _ = await st.call("Heartbeat", {})
                due["hb"] += hb
                hb_rtts.append(rtt)
            rtts.append(rtt)
        if args["storm"]:
            await storm[0].wait()
            await ws.close()
            ws = await _connect(url, sid, auth, stats, "storm_retries",
                                  args["honour_retry_after"])
            stats["back"].append(time.time())
    except Exception as exc:
        stats["call_errors"] += 1
        stats["last_error"] = repr(exc)[:200]
    finally:
        with contextlib.suppress(Exception):
            await ws.close()


async def _connect(url: str, sid: str, auth: str, stats: dict[str, Any], counter: str,
                   honour: bool, gate: asyncio.Semaphore | None = None) -> Any:
    """Connect and boot; retry on a 503 from the admission rate or a refused connection:
    after the 503's Retry-After + up to 1 s of jitter (``honour``), else after 1 s +- 0.5.
    ``stats[counter]`` counts the retries; ``gate`` bounds the handshakes in flight (not the
    waits between them)."""
    import websockets

    deadline = time.time() + 300
    while True:
        try:
            async with gate or contextlib.nullcontext():
                ws = await websockets.connect(
                    f"{url}/ocpp/{sid}", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                    additional_headers={"Authorization": f"Basic {auth}"},
                    compression=None, ping_interval=None, open_timeout=60, max_queue=4)
            _, boot = await _Station(ws, sid).call("BootNotification", {
                "reason": "PowerUp", "chargingStation": {"model": "MCS", "vendorName": "bench"}})
            if boot["status"] == "Accepted":
                return ws
            await ws.close()
            raise RuntimeError(f"boot {boot['status']}")
        except Exception as exc:
            stats[counter] += 1
            if time.time() > deadline:
                raise
            wait = random.uniform(0.5, 1.5)
            response = getattr(exc, "response", None)
            if honour and response is not None \
                    and response.headers.get("Retry-After", "").isdigit():
                wait = int(response.headers["Retry-After"]) + random.uniform(0.0, 1.0)
            await asyncio.sleep(wait)


def _generator(idx: int, url: str, ids: list[str], args: dict[str, Any],
               to_parent: Any, from_parent: Any) -> None:
    _raise_fd_limit()

    async def main() -> None:
        stats: dict[str, Any] = {"connected": 0, "connect_errors": 0, "call_errors": 0,
                                 "rtts": [], "hb_rtts": [], "last_error": "", "back": [],
                                 "storm_retries": 0, "ramp_retries": 0}
        ready, start_at, storm = asyncio.Event(), [0.0], [asyncio.Event()]
        gate = asyncio.Semaphore(args["connect_concurrency"])
        tasks = [asyncio.create_task(_station_life(url, sid, args, ready, start_at, stats, gate,
                                                   storm)) for sid in ids]
        while stats["connected"] + stats["connect_errors"] < len(ids):
            await asyncio.sleep(0.1)
        to_parent.put(("ready", idx, stats["connected"], stats["last_error"]))
        start_at[0] = await asyncio.get_running_loop().run_in_executor(None, from_parent.get)
        ready.set()
        if args["storm"]:
            storm_at = await asyncio.get_running_loop().run_in_executor(None, from_parent.get)
            await asyncio.sleep(max(0.0, storm_at - time.time()))
            storm[0].set()
        await asyncio.gather(*tasks)
        cpu = psutil.Process().cpu_times()
        to_parent.put(("done", idx, {k: v for k, v in stats.items()},
                       cpu.user + cpu.system))

    asyncio.run(main())


# --- parent ---------------------------------------------------------------------------------
def _start_topology(stack: contextlib.ExitStack, tmp: Path,
                    args: argparse.Namespace) -> tuple[str, list[str], list[psutil.Process]]:
    """Start the backend(s) (and PostgreSQL, HAProxy); (station URL, API URLs, processes)."""
    sys.path.insert(0, str(ROOT / "tests"))
    extra = {"rate_per_s": 50, "heartbeat_interval": int(args.heartbeat_s),
             "admit_rate_per_s": args.admit_rate, "admit_burst": 200}
    env = {"MWC_CSMS_LOG_LEVEL": "WARNING"}
    os.environ.update(env)
    if args.topology == "single-sqlite":
        db = tmp / "csms.db"
        args.storage_target = str(db)
        url = f"sqlite:///{db}"
    else:
        from pg_fixtures import PgCluster

        pg = PgCluster().start()
        stack.callback(pg.stop)
        pid = int((pg.data / "postmaster.pid").read_text().split()[0])
        args.infra.append(("postgres", psutil.Process(pid)))
        url = args.storage_target = pg.new_database()
    from cluster_fixtures import haproxy, start_instance, stop_instance

    names = ["a", "b"] if args.topology == "2x-pg-haproxy" else ["a"]
    insts = []
    for name in names:
        inst = start_instance(tmp, url, name, **extra)
        stack.callback(stop_instance, inst)
        insts.append(inst)
    procs = [psutil.Process(i.proc.pid) for i in insts]
    api_urls = [f"http://127.0.0.1:{i.api_port}" for i in insts]
    if len(insts) == 2:
        proxy = stack.enter_context(haproxy(tmp, insts[0], insts[1]))
        args.infra.append(("haproxy", psutil.Process(proxy.proc.pid)))
        return f"ws://127.0.0.1:{proxy.ocpp_port}", api_urls, procs
    return f"ws://127.0.0.1:{insts[0].ocpp_port}", api_urls, procs


def _provision(target: str, n: int, scrypt_n: int) -> list[str]:
    import sqlite3

    from ocpp_server.migrations import migrate
    from ocpp_server.passwords import hash_password
    ids = [f"BENCH{i:05d}" for i in range(n)]
    pw_hash = hash_password(PASSWORD, n=scrypt_n)  # one hash reused: provisioning speed only
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target) as pg, pg.cursor() as cur:
            cur.executemany("INSERT INTO stations (id, password_hash, security_profile,"
                            " approved, created_at) VALUES (%s,%s,1,1,%s)",
                            [(i, pw_hash, _now()) for i in ids])
        return ids
    conn = sqlite3.connect(target, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    migrate(conn)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO stations (id, password_hash, security_profile, approved,"
                     " created_at) VALUES (?,?,1,1,?)", [(i, pw_hash, _now()) for i in ids])
    conn.execute("COMMIT")
    conn.close()
    return ids


def _metrics(url: str) -> dict[str, Any]:
    import httpx
    from cluster_fixtures import API_TOKEN

    return dict(httpx.get(url, headers={"Authorization": f"Bearer {API_TOKEN}"},
                          timeout=30).json())


def _tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds of a process and its children (PostgreSQL: one backend per connection)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += sum(p.cpu_times()[:2])
    return total


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stations", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=4, help="load-generator processes")
    ap.add_argument("--duration", type=float, default=60.0, help="steady phase, seconds")
    ap.add_argument("--heartbeat-s", type=float, default=10.0,
                    help="heartbeat period (real stations: 300 s)")
    ap.add_argument("--tx-s", type=float, default=10.0,
                    help="TransactionEvent (meter values) period; issue #19: 10 s")
    ap.add_argument("--status-s", type=float, default=60.0,
                    help="StatusNotification period (real stations: on a change only)")
    ap.add_argument("--scrypt-n", type=int, default=2**11,
                    help="scrypt cost of the bench passwords (production default 2**14)")
    ap.add_argument("--connect-concurrency", type=int, default=50)
    ap.add_argument("--topology", default="single-sqlite",
                    choices=["single-sqlite", "single-pg", "2x-pg-haproxy"])
    ap.add_argument("--storm", action="store_true",
                    help="after the steady phase, drop every station at once; time the return")
    ap.add_argument("--ignore-retry-after", action="store_true",
                    help="stations retry a 503 after 1 s +- 0.5 instead of its Retry-After")
    ap.add_argument("--admit-rate", type=float, default=300.0,
                    help="[ocpp] admit_rate_per_s of the backend (handshakes/s; 0 = no limit)")
    args = ap.parse_args()
    _raise_fd_limit()
    load0 = os.getloadavg()[0]
    args.infra = []  # (name, process): PostgreSQL, HAProxy; their CPU is reported apart

    tmp = Path(tempfile.mkdtemp(prefix="csms-bench-"))
    t0 = time.time()
    stack = contextlib.ExitStack()
    try:
        ws_url, api_urls, procs = _start_topology(stack, tmp, args)
        ids = _provision(args.storage_target, args.stations, args.scrypt_n)
        print(f"{args.topology}: backend pids {[p.pid for p in procs]} behind {ws_url}; "
              f"{args.stations} stations, {args.procs} load-generator processes ON THE SAME "
              f"{os.cpu_count()}-CORE MACHINE")

        ctx = mp.get_context("spawn")
        to_parent = ctx.Queue()
        chans = [ctx.Queue() for _ in range(args.procs)]
        gen_args = {"heartbeat_s": args.heartbeat_s, "tx_s": args.tx_s, "status_s": args.status_s,
                    "honour_retry_after": not args.ignore_retry_after,
                    "duration": args.duration, "storm": args.storm,
                    "connect_concurrency": max(1, args.connect_concurrency // args.procs)}
        gens = [ctx.Process(target=_generator, args=(
            i, ws_url, ids[i::args.procs], gen_args, to_parent, chans[i]))
            for i in range(args.procs)]
        for g in gens:
            g.start()
        held = 0
        for _ in gens:
            _, idx, connected, err = to_parent.get(timeout=900)
            held += connected
            if err:
                print(f"  generator {idx}: last connect error {err}")
        ramp = time.time() - t0
        print(f"ramp-up: {held}/{args.stations} stations connected and booted in {ramp:.1f} s")
        start_at = time.time() + 1.0
        gen_procs = [psutil.Process(g.pid) for g in gens]
        for ch in chans:
            ch.put(start_at)
        while time.time() < start_at:
            time.sleep(0.01)
        cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
        infra0 = {n: _tree_cpu(p) for n, p in args.infra}
        m0 = [_metrics(u + "/api/v1/metrics") for u in api_urls]
        gen0 = sum(sum(p.cpu_times()[:2]) for p in gen_procs)
        sys0 = psutil.cpu_times()
        rss_max = [0.0 for _ in procs]
        while time.time() < start_at + args.duration:
            rss_max = [max(r, p.memory_info().rss / 2**20) for r, p in zip(rss_max, procs,
                                                                          strict=True)]
            time.sleep(0.5)
        cpu1 = [sum(p.cpu_times()[:2]) for p in procs]
        infra_cpu = {n: (_tree_cpu(p) - infra0[n]) / args.duration for n, p in args.infra}
        m1 = [_metrics(u + "/api/v1/metrics") for u in api_urls]
        gen1 = sum(sum(p.cpu_times()[:2]) for p in gen_procs)
        sys1 = psutil.cpu_times()
        storm_at = 0.0
        if args.storm:
            storm_at = time.time() + 1.0
            for ch in chans:
                ch.put(storm_at)
        results = [to_parent.get(timeout=900) for _ in gens]
        cpu2 = [sum(p.cpu_times()[:2]) for p in procs]
        stalls = [_metrics(u + "/healthz")["stalls"] for u in api_urls] if args.storm else []
        for g in gens:
            g.join(timeout=30)
    finally:
        stack.close()
        summarise_logs(tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    rtts: list[float] = []
    hb_rtts: list[float] = []
    call_errors = connect_errors = 0
    for _, _, stats, _ in results:
        rtts.extend(stats["rtts"])
        hb_rtts.extend(stats["hb_rtts"])
        call_errors += stats["call_errors"]
        connect_errors += stats["connect_errors"]
        if stats["last_error"]:
            print(f"  last error: {stats['last_error']}")
    inst_cpu = [(b - a) / args.duration for a, b in zip(cpu0, cpu1, strict=True)]
    backend_cpu = sum(inst_cpu)
    gen_cpu_steady = (gen1 - gen0) / args.duration
    busy = sum(sys1[:3]) - sum(sys0[:3])  # user + nice + system, all cores
    other_cpu = max(0.0, busy / args.duration - backend_cpu - gen_cpu_steady
                    - sum(infra_cpu.values()))
    for name, c in infra_cpu.items():
        print(f"  {name}: CPU {c * 100:.0f}% of one core")
    held_end = held - call_errors
    msgs_per_s = len(rtts) / args.duration
    # CPU per message is robust on a shared machine where latency is not: the reader can
    # judge what a quiet core would hold (1,000 / cpu_per_1k messages per core-second).
    cpu_per_1k = backend_cpu * args.duration / max(1, len(rtts)) * 1000
    p50, p99 = _pct(rtts, 0.50), _pct(rtts, 0.99)
    ramp_retries = sum(st["ramp_retries"] for _, _, st, _ in results)
    print(f"stations held: {held_end} of {args.stations} (connect errors {connect_errors},"
          f" dropped during the run {call_errors}; {ramp_retries} ramp-up retries after 503)")
    print(f"schedule: Heartbeat every {args.heartbeat_s:g} s, TransactionEvent every "
          f"{args.tx_s:g} s (3 samples), StatusNotification every {args.status_s:g} s per "
          f"station; steady phase {args.duration:g} s")
    print(f"messages: {len(rtts)} CALLs, {msgs_per_s:.0f} msg/s; backend CPU "
          f"{cpu_per_1k:.3f} s per 1,000 messages")
    print(f"round trip: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(rtts, default=0):.1f} ms"
          f" (Heartbeat only, no storage: p50 {_pct(hb_rtts, 0.5):.1f} ms,"
          f" p99 {_pct(hb_rtts, 0.99):.1f} ms)")
    from ocpp_server.metrics import percentile

    steady = [sum(b["buckets"][i] - a["buckets"][i] for a, b in zip(m0, m1, strict=True))
              for i in range(len(m0[0]["buckets"]))]
    h50, h99 = percentile(steady, 0.5), percentile(steady, 0.99)
    print(f"backend handling time (frame in -> answer written, incl. commit): p50 <= {h50} ms,"
          f" p99 <= {h99} ms; the rest of the round trip is the two event loops and the OS")
    for i, (c, r) in enumerate(zip(inst_cpu, rss_max, strict=True)):
        print(f"  instance {i}: CPU {c * 100:.0f}% of one core, RSS max {r:.0f} MB")
    storm_s = storm_stall = None
    storm_cpu: float | None = None
    if args.storm:
        back = [t for _, _, st, _ in results for t in st["back"]]
        retries = sum(st["storm_retries"] for _, _, st, _ in results)
        storm_s = round(max(back) - storm_at, 1) if back else None
        storm_stall = max((ms for inst in stalls for t, ms in inst if t >= storm_at),
                          default=0)
        worst = sorted(((ms, t - storm_at) for inst in stalls for t, ms in inst
                        if t >= storm_at), reverse=True)[:8]
        print("  largest stalls during the storm (ms at s after the drop): "
              + ", ".join(f"{ms:.0f}@{dt:.1f}" for ms, dt in worst))
        storm_cpu = sum(cpu2) - sum(cpu1)
        print(f"  backend CPU during the storm: {storm_cpu:.1f} s, "
              f"{storm_cpu * 1000 / max(1, len(back) + retries):.2f} ms per handshake "
              f"(admitted or refused); admission rate {args.admit_rate:g}/s, stations "
              f"{'ignore' if args.ignore_retry_after else 'honour'} Retry-After")
        print(f"reconnect storm: {len(back)}/{held_end} stations back in {storm_s} s "
              f"({retries} retries after 503 / refused), largest event-loop stall of any "
              f"instance during it {storm_stall} ms (stalls < 50 ms are not recorded)")
    print(f"backend: CPU {backend_cpu * 100:.0f}% of one core, RSS max {sum(rss_max):.0f} MB; "
          f"load generators (same machine): CPU {gen_cpu_steady * 100:.0f}% of one core; "
          f"other processes on the machine: {other_cpu * 100:.0f}% of one core "
          f"({os.cpu_count()} cores in all)")
    limit_ms = 150 if args.topology == "2x-pg-haproxy" else 100
    goal = held_end >= 10000 and p99 <= limit_ms
    print(f"goal (10,000 stations, p99 <= {limit_ms} ms): {'met' if goal else 'NOT met'}")
    print(json.dumps({"topology": args.topology, "stations": held_end,
                      "msgs_per_s": round(msgs_per_s, 1),
                      "schedule_s": {"heartbeat": args.heartbeat_s, "transaction_event":
                                     args.tx_s, "status": args.status_s},
                      "rtt_ms_p50": round(p50, 2), "rtt_ms_p99": round(p99, 2),
                      "rss_mb": round(sum(rss_max), 1), "backend_handling_ms_p99": h99,
                      "instances": [{"cpu_pct": round(c * 100), "rss_mb": round(r, 1)}
                                    for c, r in zip(inst_cpu, rss_max, strict=True)],
                      "storm_s": storm_s, "storm_stall_ms_max": storm_stall,
                      "storm_backend_cpu_s": None if storm_cpu is None else round(storm_cpu, 1),
                      **{f"{n}_cpu_pct": round(c * 100) for n, c in infra_cpu.items()},
                      "backend_cpu_pct": round(backend_cpu * 100),
                      "backend_cpu_s_per_1k_msgs": round(cpu_per_1k, 3),
                      "load_generator_cpu_pct": round(gen_cpu_steady * 100),
                      "loadavg_1m_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
                      "other_load_cpu_pct": round(other_cpu * 100),
                      "load_generator_on_same_machine": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
