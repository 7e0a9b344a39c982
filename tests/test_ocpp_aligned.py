"""Clock-aligned meter values (J01): idle EVSEs, ongoing transactions, SendDuringIdle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ocpp_fixtures import Backend, FakeStation, SimWall, online
from test_ocpp_transactions import charge, events

from controller.ocpp.v201.service import OcppService


def tick(st: FakeStation, wall: SimWall, seconds: int) -> None:
    """``seconds`` of 1 s cycles (each a CycleEvent with every gun's meter read)."""
    for _ in range(seconds):
        wall.advance(1.0)
        st.cycle()


def clock_events(be: Backend) -> list[dict[str, Any]]:
    return [e for e in events(be) if e["trigger_reason"] == "MeterValueClock"]


async def test_TC_J_01_CS_clock_aligned_meter_values_no_transaction(tmp_path: Path) -> None:
    async with online(tmp_path, aligned_interval_s=60) as (be, svc, st, wall):
        st.energy = [1000.0, 2000.0]
        tick(st, wall, 125)  # at least two interval boundaries
        await be.wait_for(lambda: len(be.of("MeterValues")) >= 4 and len(svc.queue) == 0)
        mvs = be.of("MeterValues")
        assert {m["evse_id"] for m in mvs} == {1, 2}
        for m in mvs:
            sv = m["meter_value"][0]["sampled_value"][0]
            assert sv["context"] == "Sample.Clock"
            assert sv["measurand"] == "Energy.Active.Import.Register"
            assert sv["value"] == {1: 1000.0, 2: 2000.0}[m["evse_id"]]
        stamps = sorted({m["meter_value"][0]["timestamp"] for m in mvs})
        assert all(s[17:19] == "00" for s in stamps), stamps  # on the minute
        assert events(be) == []


async def test_TC_J_02_CS_clock_aligned_in_transaction_idle_gun_by_meter_values(
        tmp_path: Path) -> None:
    async with online(tmp_path, aligned_interval_s=60) as (be, svc, st, wall):
        charge(st, 0)
        tick(st, wall, 65)
        await be.wait_for(lambda: len(clock_events(be)) >= 1 and len(svc.queue) == 0)
        ev = clock_events(be)[0]
        assert ev["meter_value"][0]["sampled_value"][0]["context"] == "Sample.Clock"
        assert {m["evse_id"] for m in be.of("MeterValues")} == {2}  # the idle gun only


async def test_TC_J_06_CS_send_during_idle_no_aligned_values_in_transaction(
        tmp_path: Path) -> None:
    async with online(tmp_path, aligned_interval_s=60) as (be, svc, st, wall):
        await _set(svc, "SendDuringIdle", "true")
        charge(st, 0)
        tick(st, wall, 125)
        await be.wait_for(lambda: len(svc.queue) == 0 and len(events(be)) >= 1)
        assert clock_events(be) == [] and be.of("MeterValues") == []


async def _set(svc: OcppService, name: str, value: str) -> None:
    result = svc.dm.write({"name": "AlignedDataCtrlr"}, {"name": name}, value, None)
    assert result == "Accepted", result
