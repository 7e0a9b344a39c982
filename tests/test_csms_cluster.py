"""Two backend instances on one private PostgreSQL behind a private HAProxy.

* a command sent to instance A for a station held by B reaches it and B's answer comes back;
* kill -9 of one instance under load: its stations reconnect through the proxy, no
  TransactionEvent is lost or counted twice in energy, the API keeps answering, and the
  crashed instance's presence entries expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from cluster_fixtures import (
    STEP_WH,
    Instance,
    Proxy,
    RawStation,
    haproxy,
    start_instance,
    stop_instance,
)
from pg_fixtures import PgCluster, pg_cluster  # noqa: F401  (session fixture)


@contextlib.asynccontextmanager
async def two_instances(tmp_path: Path, cluster: PgCluster
                        ) -> AsyncIterator[tuple[Instance, Instance, Proxy]]:
    url = cluster.new_database()
    a = await asyncio.to_thread(start_instance, tmp_path, url, "a")  # migrates the schema
    b = await asyncio.to_thread(start_instance, tmp_path, url, "b")
    try:
        with haproxy(tmp_path, a, b) as proxy:
            yield a, b, proxy
    finally:
        for inst in (a, b):
            await asyncio.to_thread(stop_instance, inst)


async def provision(inst: Instance, ids: list[str]) -> None:
    async with inst.api() as api:
        for sid in ids:
            r = await api.post("/api/v1/stations", json={"id": sid, "security_profile": 0})
            assert r.status_code == 201, r.text


async def held_by(inst: Instance) -> int:
    async with inst.api() as api:
        return int((await api.get("/healthz")).json()["connected"])


async def until(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await pred():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)


async def test_command_via_instance_a_reaches_a_station_on_instance_b(
        tmp_path: Path, pg_cluster: PgCluster) -> None:  # noqa: F811
    async with two_instances(tmp_path, pg_cluster) as (a, b, proxy):
        ids = [f"CL-{i}" for i in range(6)]
        await provision(a, ids)
        stations = [RawStation(f"ws://127.0.0.1:{proxy.ocpp_port}", sid) for sid in ids]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(s.run(stop, 0.1, 0)) for s in stations]
        try:
            await until(lambda: _sum_held(a, b, len(ids)), 20, "all stations connected")
            assert await held_by(a) >= 1 and await held_by(b) >= 1  # leastconn spreads them
            async with a.api() as api:
                # presence reaches A by NOTIFY within ~100 ms; wait for it, not a fixed time
                async def all_known() -> bool:
                    rows = (await api.get("/api/v1/stations")).json()
                    return all(r["connected"] for r in rows)
                await until(all_known, 10, "A sees every station as connected")
                detail = [(await api.get(f"/api/v1/stations/{sid}")).json() for sid in ids]
                on_b = [d["id"] for d in detail if d["connection"].get("instance") == "b"]
                assert on_b, detail
                for sid in ids:  # via A, whoever holds it
                    t0 = time.monotonic()
                    r = await api.post(f"/api/v1/stations/{sid}/reset", json={"type": "OnIdle"})
                    assert r.status_code == 200, r.text
                    assert r.json() == {"status": "Accepted"}
                    assert time.monotonic() - t0 < 2.0
                for s in stations:
                    assert [a for a, _ in s.received] == ["Reset"], s.received
                # the same through the proxy's API frontend (round robin over A and B)
                async with httpx.AsyncClient(
                        base_url=f"http://127.0.0.1:{proxy.api_port}", timeout=15,
                        headers={"Authorization": "Bearer cluster-api-token"}) as via_proxy:
                    for sid in on_b:
                        r = await via_proxy.post(f"/api/v1/stations/{sid}/trigger-message",
                                                 json={"requested_message": "Heartbeat"})
                        assert r.status_code == 200, r.text
                # a schema violation is refused by A itself; nothing is sent to B
                r = await api.post(f"/api/v1/stations/{on_b[0]}/reset",
                                   json={"type": "Sometime"})
                assert r.status_code == 422
                # the station on B does not answer: 504 within the caller's timeout
                mute = next(s for s in stations if s.id == on_b[0])
                mute.answer_calls = False
                t0 = time.monotonic()
                r = await api.post(f"/api/v1/stations/{mute.id}/reset?timeout=1",
                                   json={"type": "OnIdle"})
                assert r.status_code == 504 and time.monotonic() - t0 < 4.0
                r = await api.post("/api/v1/stations/NOT-THERE/reset", json={"type": "OnIdle"})
                assert r.status_code in (404, 409)
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _sum_held(a: Instance, b: Instance, n: int) -> bool:
    return await held_by(a) + await held_by(b) == n


async def test_failover_kill9_loses_no_event_and_counts_energy_once(
        tmp_path: Path, pg_cluster: PgCluster) -> None:  # noqa: F811
    n, events = 60, 40
    async with two_instances(tmp_path, pg_cluster) as (a, b, proxy):
        ids = [f"FO-{i:03d}" for i in range(n)]
        await provision(a, ids)
        stations = [RawStation(f"ws://127.0.0.1:{proxy.ocpp_port}", sid) for sid in ids]
        stop = asyncio.Event()
        stop.set()  # each returns once all its events are confirmed
        tasks = [asyncio.create_task(s.run(stop, 0.1, events)) for s in stations]
        await until(lambda: _sum_held(a, b, n), 30, "all stations connected")
        before_b = await held_by(b)
        assert before_b >= 1
        # under load: kill -9 B, keep using the API of A meanwhile
        await asyncio.sleep(0.8)
        b.proc.kill()
        api_codes: list[int] = []
        async with a.api() as api:
            while not all(t.done() for t in tasks):
                api_codes.append((await api.get("/api/v1/transactions?limit=5")).status_code)
                await asyncio.sleep(0.2)
                assert len(api_codes) < 600, "stations did not finish within 120 s"
            await asyncio.gather(*tasks)  # a station failure (non-CALLRESULT) fails the test
            assert set(api_codes) == {200}
            moved = [s for s in stations if s.connects > 1]
            assert len(moved) >= before_b  # B's stations came back through the proxy
            txs = (await api.get("/api/v1/transactions?limit=1000")).json()
            assert len(txs) == n
            for tx in txs:
                st = next(s for s in stations if tx["transaction_id"] == f"{s.id}-TX")
                assert tx["implausible_samples"] == 0, tx
                assert tx["energy_wh"] == (events - 1) * STEP_WH, tx
                assert tx["last_seq_no"] == events - 1 and not tx["active"]
                detail = (await api.get(f"/api/v1/transactions/{tx['id']}")).json()
                assert [e["seq_no"] for e in detail["events"]] == list(range(events)), st.id
                assert len(detail["meter_values"]) == events  # repeats stored nothing twice

            # B's presence entries expire (ttl 6 s): A answers 409 for a station never seen
            async def b_forgotten() -> bool:
                rows = (await api.get("/healthz")).json()
                return "b" not in rows.get("cluster", {}).get("stations_per_instance", {})
            await until(b_forgotten, 15, "the crashed instance's presence expired")


async def test_approving_a_pending_station_on_instance_b_via_a_makes_it_boot(
        tmp_path: Path, pg_cluster: PgCluster) -> None:  # noqa: F811
    """The approval arrives at A; B holds the Pending station and re-triggers its boot."""
    import json

    import websockets

    async with two_instances(tmp_path, pg_cluster) as (a, b, _proxy):
        async with a.api() as api:
            r = await api.post("/api/v1/stations", json={"id": "PEND-1", "security_profile": 0,
                                                         "approved": False})
            assert r.status_code == 201, r.text
        async with websockets.connect(f"ws://127.0.0.1:{b.ocpp_port}/ocpp/PEND-1",
                                      subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                      open_timeout=10) as ws:
            boot = ["BootNotification", {"reason": "PowerUp", "chargingStation": {
                "model": "raw", "vendorName": "tests"}}]
            await ws.send(json.dumps([2, "b1", *boot]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply[0] == 3 and reply[2]["status"] == "Pending", reply
            async with a.api() as api:
                async def a_sees_b() -> bool:
                    d = (await api.get("/api/v1/stations/PEND-1")).json()
                    return bool(d["connection"].get("instance") == "b")
                await until(a_sees_b, 10, "A sees PEND-1 on B")
                r = await api.post("/api/v1/stations/PEND-1/approve")
                assert r.status_code == 200, r.text
            # B asks the station to boot again now (not at its retry interval, 300 s)
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert msg[0] == 2 and msg[2] == "TriggerMessage", msg
            assert msg[3]["requestedMessage"] == "BootNotification"
            await ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
            await ws.send(json.dumps([2, "b2", *boot]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply[0] == 3 and reply[2]["status"] == "Accepted", reply
