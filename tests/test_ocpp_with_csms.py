"""End to end: the real station (Modbus simulator, simulated clock), its OCPP client and the
project's own backend (ocpp_server) on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

from csms_fixtures import PASSWORD, add_token, make_config, provision, running_csms
from cycle_fixtures import rig, small_truck
from ocpp_fixtures import shutdown

from controller.ocpp.config import OcppConfig
from controller.ocpp.v201.service import OcppService
from ocpp_server.repository import TxFilter


async def test_real_station_transaction_reaches_project_csms(tmp_path: Path) -> None:
    async with running_csms(make_config(tmp_path)) as server:
        await provision(server, "TEST-1")
        await add_token(server, "TRUCK-A")
        async with rig([small_truck("A"), small_truck("B")], free_charging=False) as r:
            cfg = OcppConfig(url=f"ws://127.0.0.1:{server.ocpp_port}/ocpp", password=PASSWORD,
                             database=str(tmp_path / "station.sqlite3"), sampled_interval_s=1,
                             retry_backoff_wait_minimum_s=0, retry_backoff_random_range_s=0)
            # OCPP timestamps from the rig's simulated clock, as in the demo: the backend
            # checks meter values against the time between them (plausibility.py).
            base = time.time() - r.clock()
            svc = OcppService(cfg, r.station.config,
                        wall=lambda: dt.datetime.fromtimestamp(base + r.clock(), dt.UTC))
            svc.attach(r.station)
            task = asyncio.ensure_future(svc.run())
            try:
                for _ in range(200):
                    if svc.online:
                        break
                    await asyncio.sleep(0.02)
                assert svc.online
                r.trucks[0].plug_in()
                await r.until(lambda rec: rec.guns[0].state == "Finishing", max_cycles=600)
                r.trucks[0].unplug()
                await r.step(3)
                for _ in range(200):
                    if len(svc.queue) == 0:
                        break
                    await asyncio.sleep(0.02)
                txs = await server.repo.list_transactions(TxFilter(station_id="TEST-1"))
                assert len(txs) == 1
                tx = await server.repo.get_transaction(txs[0]["id"])
                assert tx is not None
                seqs = [e["seq_no"] for e in tx["events"]]
                assert seqs == list(range(len(seqs))) and len(seqs) >= 3
                assert tx["events"][0]["event_type"] == "Started"
                assert tx["events"][-1]["event_type"] == "Ended"
                assert tx["id_token"] == "TRUCK-A"  # authorized by the CSMS (Authorize)
                assert tx["stop_reason"] == "StoppedByEV" and not tx["active"]
                assert tx["energy_wh"] > 300.0
                r.assert_safe()
            finally:
                await shutdown(svc, task)
