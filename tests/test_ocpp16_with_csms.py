"""End to end over OCPP 1.6J: the real station (Modbus simulator, simulated clock), its 1.6
client and the project's own backend (ocpp_server) on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

from csms_fixtures import PASSWORD, add_token, make_config, provision, running_csms
from cycle_fixtures import rig, small_truck
from ocpp16_fixtures import shutdown16, until

from controller.ocpp.config import OcppConfig
from controller.ocpp.v16.service import Ocpp16Service
from ocpp_server.repository import TxFilter


async def test_real_station_1_6_transaction_reaches_project_csms(tmp_path: Path) -> None:
    async with running_csms(make_config(tmp_path)) as server:
        await provision(server, "TEST-1")
        await add_token(server, "TRUCK-A")
        async with rig([small_truck("A"), small_truck("B")], free_charging=False) as r:
            cfg = OcppConfig(version="1.6", url=f"ws://127.0.0.1:{server.ocpp_port}/ocpp",
                             password=PASSWORD, database=str(tmp_path / "station.sqlite3"),
                             sampled_interval_s=1, retry_backoff_wait_minimum_s=0,
                             retry_backoff_random_range_s=0)
            # OCPP timestamps from the rig's simulated clock, as in the demo: the backend
            # checks meter values against the time between them (plausibility.py).
            base = time.time() - r.clock()
            svc = Ocpp16Service(cfg, r.station.config,
                        wall=lambda: dt.datetime.fromtimestamp(base + r.clock(), dt.UTC))
            svc.attach(r.station)
            task = asyncio.ensure_future(svc.run())
            try:
                await until(lambda: svc.online)
                r.trucks[0].plug_in()
                await r.until(lambda rec: rec.guns[0].state == "Finishing", max_cycles=600)
                r.trucks[0].unplug()
                await r.step(3)
                await until(lambda: len(svc.queue) == 0 and not svc.tx.open)
                txs = await server.repo.list_transactions(TxFilter(station_id="TEST-1"))
                assert len(txs) == 1
                tx = await server.repo.get_transaction(txs[0]["id"])
                assert tx is not None
                assert [e["event_type"] for e in tx["events"]] == ["StartTransaction",
                                                                   "StopTransaction"]
                assert tx["id_token"] == "TRUCK-A"  # authorized by the CSMS (Authorize)
                assert tx["stop_reason"] == "Local" and not tx["active"]  # stopped by the EV
                assert tx["energy_wh"] > 300.0
                assert tx["evse_id"] == 1
                sources = {m["source"] for m in tx["meter_values"]}
                assert sources == {"MeterValues", "StopTransaction"}  # + transactionData
                assert all(m["value"] is not None for m in tx["meter_values"])
                r.assert_safe()
            finally:
                await shutdown16(svc, task)
