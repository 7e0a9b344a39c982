"""Transactions a crash left open (E: stoppedReason PowerLoss) when the meter cannot be
read at once, or when the gun's next session begins first. The normal case, with the
real process and the meter of the moment of the crash, is tests/test_crash_safety.py."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from ocpp_fixtures import Backend, FakeStation, SimWall, ocpp_config, shutdown, station_config
from test_ocpp_transactions import charge, events, run_for

from controller.ocpp.bridge import ORPHAN_WAIT_CYCLES
from controller.ocpp.v201.service import OcppService
from controller.session import GunState


async def _crashed_with_open_tx(tmp_path: Path, be: Backend) -> tuple[SimWall, float]:
    """A transaction on gun 0 with 5 s of samples (persisted), then a crash."""
    wall = SimWall()
    cfg = ocpp_config(tmp_path, be.port, sampled_interval_s=1)
    svc = OcppService(cfg, station_config(), wall=wall)
    st = FakeStation(wall)
    svc.attach(st)
    task = asyncio.ensure_future(svc.run())
    await be.wait_for(lambda: svc.online)
    charge(st)
    run_for(st, wall, 5)
    await be.wait_for(lambda: len(events(be)) >= 6 and len(svc.queue) == 0)
    task.cancel()  # the crash: nothing ends cleanly
    svc.db.close()
    return wall, st.energy[0]


async def _restart(tmp_path: Path, be: Backend, wall: SimWall
                   ) -> tuple[OcppService, FakeStation, asyncio.Task[None]]:
    svc = OcppService(ocpp_config(tmp_path, be.port), station_config(), wall=wall)
    st = FakeStation(wall)
    svc.attach(st)
    return svc, st, asyncio.ensure_future(svc.run())


async def test_meter_unreadable_after_restart_ends_with_the_persisted_register(
        tmp_path: Path) -> None:
    be = Backend()
    await be.start()
    wall, persisted = await _crashed_with_open_tx(tmp_path, be)
    svc, st, task = await _restart(tmp_path, be, wall)
    try:
        st.energy[0] = math.nan  # the meter does not answer
        for _ in range(ORPHAN_WAIT_CYCLES):
            st.cycle()
        assert 0 in svc.tx.open  # still waiting for a reading
        st.cycle()
        assert 0 not in svc.tx.open
        await be.wait_for(lambda: events(be)[-1]["event_type"] == "Ended")
        end = events(be)[-1]
        assert end["transaction_info"]["stopped_reason"] == "PowerLoss"
        assert end["meter_value"][0]["sampled_value"][0]["value"] == round(persisted, 3)
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_new_session_on_the_gun_ends_the_crashed_transaction_first(
        tmp_path: Path) -> None:
    be = Backend()
    await be.start()
    wall, _persisted = await _crashed_with_open_tx(tmp_path, be)
    svc, st, task = await _restart(tmp_path, be, wall)
    try:
        st.energy[0] = math.nan
        st.cycle()
        old = svc.tx.open[0].tx_id
        st.go(0, GunState.PREPARING, "vehicle plugged")  # before any reading came
        assert 0 not in svc.tx.open
        charge(st)
        await be.wait_for(lambda: len(svc.queue) == 0 and events(be)[-1]["event_type"]
                          == "Started")
        ended = [e for e in events(be) if e["event_type"] == "Ended"]
        assert [e["transaction_info"]["transaction_id"] for e in ended] == [old]
        assert events(be)[-1]["transaction_info"]["transaction_id"] != old
    finally:
        await shutdown(svc, task)
        await be.stop()
