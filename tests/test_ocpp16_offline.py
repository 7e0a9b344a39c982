"""OCPP 1.6J offline behaviour: transaction messages persisted and delivered in order after a
reconnect and a restart, placeholder transaction ids mapped to the backend's, retries per
TransactionMessageAttempts, clock-aligned meter values."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ocpp16_fixtures import (
    Backend16,
    charge,
    config16,
    finish,
    online16,
    run_for,
    shutdown16,
    started16,
    until,
)
from ocpp_fixtures import FakeStation, SimWall, station_config

from controller.ocpp.v16.service import Ocpp16Service
from controller.session import GunState


async def test_offline_minutes_and_restart_every_message_delivered_in_order(
        tmp_path: Path) -> None:
    be = Backend16()
    await be.start()
    port = be.port
    wall = SimWall()
    cfg = config16(tmp_path, port)
    svc, st, task = await started16(cfg, wall)
    await be.wait_for(lambda: svc.online)
    charge(st)  # gun 0: started while online
    await be.wait_for(lambda: len(be.of("StartTransaction")) == 1 and len(svc.queue) == 0)
    assert svc.tx.open[0].tx_id == 101
    await be.stop()  # the backend goes away ...
    await until(lambda: not svc.online)
    run_for(st, wall, 10 * 60)  # ... for ten minutes of simulated time
    charge(st, g=1, token="TRUCK-2")  # gun 1 starts while offline: a placeholder id
    run_for(st, wall, 120, g=1)
    local = svc.tx.open[1].tx_id
    assert local < 0
    st.go(0, GunState.SUSPENDED_EVSE, "no power available")
    queued = len(svc.queue)
    assert queued == 10 + 1 + 2  # MeterValues gun 0, StartTransaction + MeterValues gun 1
    # the controller crashes while offline: nothing is ended cleanly
    task.cancel()
    svc.db.close()
    svc2 = Ocpp16Service(cfg, station_config(), wall=wall)
    st2 = FakeStation(wall)
    svc2.attach(st2)
    assert len(svc2.queue) == queued + 1  # StartupOfTheDevice
    st2.energy = list(st.energy)  # the meters have not moved since: the modules are off
    st2.cycle()  # the first cycle reads the meters: the crashed transactions stop with them
    assert len(svc2.queue) == queued + 3  # two PowerLoss stops
    task2 = asyncio.ensure_future(svc2.run())
    be2 = Backend16(next_tx=200)
    await be2.start(port)
    try:
        await be2.wait_for(lambda: len(be2.of("StopTransaction")) == 2 and len(svc2.queue) == 0)
        msgs = be2.tx_msgs()
        assert [a for a, _ in msgs] == (["MeterValues"] * 10 + ["StartTransaction"]
                                        + ["MeterValues"] * 2 + ["StopTransaction"] * 2)
        assert all(kw["transaction_id"] == 101 for _, kw in msgs[:10])
        assert msgs[10][1]["id_tag"] == "TRUCK-2" and msgs[10][1]["connector_id"] == 2
        assert [kw["transaction_id"] for _, kw in msgs[11:]] == [201, 201, 101, 201]
        times = [kw["meter_value"][0]["timestamp"] for _, kw in msgs[:10]]
        assert times == sorted(times)
        stop0 = msgs[13][1]
        assert stop0["reason"] == "PowerLoss"
        assert stop0["meter_stop"] == round(st.energy[0])  # the register at the crash
        assert stop0["transaction_data"][0]["sampled_value"][0]["context"] == \
            "Transaction.Begin"
        assert len(stop0["transaction_data"]) == 1 + 10 + 1
        assert svc2.tx.real_id(local) == 201  # the mapping is kept
        assert not svc2.tx.open
    finally:
        await shutdown16(svc2, task2)
        await be2.stop()


async def test_start_answered_after_reconnect_maps_queued_stop(tmp_path: Path) -> None:
    be = Backend16(next_tx=500)
    await be.start()
    port = be.port
    wall = SimWall()
    svc, st, task = await started16(config16(tmp_path, port), wall)
    try:
        await be.wait_for(lambda: svc.online and len(svc.queue) == 0)
        await be.stop()
        await until(lambda: not svc.online)
        charge(st)
        run_for(st, wall, 61)
        finish(st, "Remote")
        rows = svc.queue.all()
        assert [m.action for m in rows] == ["StartTransaction", "MeterValues",
                                            "StopTransaction"]
        assert rows[1].payload["transactionId"] == rows[2].payload["transactionId"] < 0
        await be.start(port)
        await be.wait_for(lambda: len(svc.queue) == 0 and bool(be.of("StopTransaction")))
        assert [kw["transaction_id"] for a, kw in be.tx_msgs()[1:]] == [501, 501]
        assert be.of("StopTransaction")[0]["reason"] == "Remote"
    finally:
        await shutdown16(svc, task)
        await be.stop()


async def test_failing_stop_transaction_retried_then_dropped(tmp_path: Path) -> None:
    be = Backend16(reject_stop=10)
    async with online16(tmp_path, be, message_attempts=3) as (be, svc, st, wall):
        charge(st)
        run_for(st, wall, 5)
        finish(st, "EVDisconnected")
        svc.security_event("SettingSystemTime", "queued behind the failing stop")
        await be.wait_for(lambda: bool(be.of("SecurityEventNotification")[1:])
                          and len(svc.queue) == 0)
        assert len(be.of("StopTransaction")) == 3  # TransactionMessageAttempts, then dropped
        assert be.of("StopTransaction")[0]["reason"] == "EVDisconnected"
        assert be.of("SecurityEventNotification")[-1]["type"] == "SettingSystemTime"


async def test_clock_aligned_meter_values(tmp_path: Path) -> None:
    async with online16(tmp_path, aligned_interval_s=900) as (be, svc, st, wall):
        st.cycle()  # 08:00:00: the first slot
        charge(st)
        await be.wait_for(lambda: len(svc.queue) == 0 and bool(be.of("StartTransaction")))
        wall.advance(899)
        st.cycle()
        assert not be.of("MeterValues")
        wall.advance(1)  # 08:15:00
        st.cycle()
        await be.wait_for(lambda: len(be.of("MeterValues")) == 2)
        tx_mv = [m for m in be.of("MeterValues") if "transaction_id" in m]
        idle = [m for m in be.of("MeterValues") if "transaction_id" not in m]
        assert [m["connector_id"] for m in tx_mv] == [1]
        assert [m["connector_id"] for m in idle] == [2]
        sv = tx_mv[0]["meter_value"][0]["sampled_value"]
        assert [(s["measurand"], s["context"]) for s in sv] == [
            ("Energy.Active.Import.Register", "Sample.Clock")]
        assert tx_mv[0]["meter_value"][0]["timestamp"] == "2026-01-05T08:15:00.000Z"
        finish(st, "Local")
        await be.wait_for(lambda: bool(be.of("StopTransaction")))
        data = be.of("StopTransaction")[0]["transaction_data"]
        assert [mv["sampled_value"][0]["context"] for mv in data] == [
            "Transaction.Begin", "Sample.Clock", "Transaction.End"]


async def test_queue_bound_drops_meter_values_never_start_or_stop(tmp_path: Path) -> None:
    be = Backend16()
    async with online16(tmp_path, be, queue_max=10, sampled_interval_s=1) as (
            be, svc, st, wall):
        await be.stop()
        await until(lambda: not svc.online)
        charge(st)
        run_for(st, wall, 30)  # 30 MeterValues for a queue of 10
        finish(st, "Local")
        rows = svc.queue.all()
        assert len(rows) == 10 and svc.queue.dropped == 22
        assert rows[0].action == "StartTransaction" and rows[-1].action == "StopTransaction"
        assert [m.action for m in rows[1:-1]] == ["MeterValues"] * 8  # the newest kept
        await be.start(be.port)
        await be.wait_for(lambda: len(svc.queue) == 0 and bool(be.of("StopTransaction")))
        assert len(be.of("StopTransaction")[0]["transaction_data"]) == 32  # all samples


async def test_restart_after_the_real_id_came_keeps_it(tmp_path: Path) -> None:
    """The StartTransaction is answered, the StopTransaction behind it fails and the
    controller dies while waiting to retry: after the restart the stop carries the real id."""
    be = Backend16(next_tx=700, reject_stop=1)
    await be.start()
    port = be.port
    wall = SimWall()
    cfg = config16(tmp_path, port, message_attempt_interval_s=600)
    svc, st, task = await started16(cfg, wall)
    await be.wait_for(lambda: svc.online and len(svc.queue) == 0)
    await be.stop()
    await until(lambda: not svc.online)
    charge(st)
    run_for(st, wall, 3)
    finish(st, "EVDisconnected")
    assert svc.queue.all()[-1].payload["transactionId"] < 0
    await be.start(port)
    await be.wait_for(lambda: len(be.of("StopTransaction")) == 1)  # refused: retry in 600 s
    task.cancel()
    svc.db.close()
    svc2 = Ocpp16Service(cfg, station_config(), wall=wall)
    assert [m.payload.get("transactionId") for m in svc2.queue.all()
            if m.action == "StopTransaction"] == [701]  # rewritten before the crash
    svc2.attach(FakeStation(wall))
    task2 = asyncio.ensure_future(svc2.run())
    try:
        await be.wait_for(lambda: len(be.of("StopTransaction")) == 2 and len(svc2.queue) == 0)
        assert [kw["transaction_id"] for kw in be.of("StopTransaction")] == [701, 701]
        assert len(be.of("StartTransaction")) == 1
    finally:
        await shutdown16(svc2, task2)
        await be.stop()
