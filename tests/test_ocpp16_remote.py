"""OCPP 1.6J remote control and smart charging: RemoteStart (with a TxProfile) / RemoteStop on
the real station, SetChargingProfile / ClearChargingProfile / GetCompositeSchedule feeding the
LimitBook like 2.0.1, Reset."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cycle_fixtures import rig, small_truck
from ocpp.v16 import call
from ocpp16_fixtures import Backend16, charge, config16, finish, online16, shutdown16

from controller.limits import STATION, gun
from controller.ocpp.v16.service import Ocpp16Service


def prof16(pid: int, purpose: str, limit: float, unit: str = "A", kind: str = "Relative",
           level: int = 0, **kw: Any) -> dict[str, Any]:
    sched: dict[str, Any] = {"chargingRateUnit": unit,
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}
    if kind == "Absolute":
        sched["startSchedule"] = "2026-01-05T08:00:00Z"
    return {"chargingProfileId": pid, "stackLevel": level, "chargingProfilePurpose": purpose,
            "chargingProfileKind": kind, "chargingSchedule": sched, **kw}


async def test_remote_start_with_tx_profile_then_tx_profile_and_remote_stop_on_station(
        tmp_path: Path) -> None:
    be = Backend16(next_tx=40, tokens={"FLEET-7"})
    await be.start()
    async with rig([small_truck("A", target_soc_pct=95), small_truck("B")],
                   free_charging=False) as r:
        svc = Ocpp16Service(config16(tmp_path, be.port), r.station.config)
        svc.attach(r.station)
        task = asyncio.ensure_future(svc.run())
        try:
            await be.wait_for(lambda: svc.online)
            res = await be.cp.call(call.RemoteStartTransaction(
                id_tag="FLEET-7", connector_id=1,
                charging_profile=prof16(9, "TxProfile", 250.0)), suppress=False)
            assert res.status == "Accepted"
            r.trucks[0].plug_in()
            rec = await r.until(lambda rec: rec.guns[0].state == "Charging", max_cycles=300)
            await r.step(1)  # the profile was installed when the transaction started
            rec = await r.until(lambda rec: rec.guns[0].current_a > 200.0, max_cycles=200)
            assert rec.guns[0].setpoint_a <= 250.0 + 1e-6
            assert rec.guns[0].binding_source == "OCPP"
            await be.wait_for(lambda: bool(be.of("StartTransaction")) and len(svc.queue) == 0)
            assert be.of("StartTransaction")[0]["id_tag"] == "FLEET-7"
            # a TxProfile for the running transaction lowers the limit within one cycle
            res = await be.cp.call(call.SetChargingProfile(connector_id=1, cs_charging_profiles=
                                   prof16(10, "TxProfile", 120.0, level=1, transactionId=41)),
                                   suppress=False)
            assert res.status == "Accepted"
            rec = await r.step(1)
            assert rec.guns[0].setpoint_a <= 120.0 + 1e-6
            comp = await be.cp.call(call.GetCompositeSchedule(connector_id=1, duration=600),
                                    suppress=False)
            assert comp.status == "Accepted" and comp.connector_id == 1
            assert comp.charging_schedule["charging_schedule_period"][0]["limit"] == 120.0
            assert comp.charging_schedule["charging_rate_unit"] == "A"
            wrong = await be.cp.call(call.RemoteStopTransaction(transaction_id=999),
                                     suppress=False)
            assert wrong.status == "Rejected"
            res = await be.cp.call(call.RemoteStopTransaction(transaction_id=41),
                                   suppress=False)
            assert res.status == "Accepted"
            await r.until(lambda rec: rec.guns[0].state in ("Finishing", "Available"),
                          max_cycles=300)
            await be.wait_for(lambda: bool(be.of("StopTransaction")) and len(svc.queue) == 0)
            stop = be.of("StopTransaction")[0]
            assert stop["transaction_id"] == 41 and stop["reason"] == "Remote"
            assert stop["meter_stop"] > be.of("StartTransaction")[0]["meter_start"]
            assert r.station.limits.get(gun(0), "ocpp") is None  # TxProfiles end with it
            r.assert_safe()
        finally:
            await shutdown16(svc, task)
    await be.stop()


async def test_set_clear_profiles_and_composite_schedule(tmp_path: Path) -> None:
    async with online16(tmp_path) as (be, svc, st, _wall):
        cp = be.cp

        async def setp(connector: int, p: dict[str, Any]) -> str:
            r = await cp.call(call.SetChargingProfile(connector_id=connector,
                                                      cs_charging_profiles=p), suppress=False)
            return str(r.status)

        assert await setp(0, prof16(1, "ChargePointMaxProfile", 900_000.0, unit="W",
                                    kind="Absolute")) == "Accepted"
        assert await setp(1, prof16(2, "ChargePointMaxProfile", 1000.0)) == "Rejected"
        assert await setp(1, prof16(3, "TxProfile", 100.0)) == "Rejected"  # no transaction
        assert await setp(1, prof16(4, "TxDefaultProfile", 300.0, kind="Absolute")) == \
            "Accepted"
        assert await setp(1, prof16(5, "TxDefaultProfile", 300.0, kind="Absolute")) == \
            "Rejected"  # same stack level and purpose on the connector
        assert await setp(1, prof16(6, "TxDefaultProfile", 300.0, level=99)) == "Rejected"
        st.cycle()
        station_lim, gun_lim = st.limits.get(STATION, "ocpp"), st.limits.get(gun(0), "ocpp")
        assert station_lim is not None and station_lim.value == 900_000.0
        assert station_lim.source == "OCPP"
        assert gun_lim is not None and gun_lim.value == 300.0
        r = await cp.call(call.GetCompositeSchedule(connector_id=1, duration=3600,
                                                    charging_rate_unit="W"), suppress=False)
        assert r.status == "Accepted"
        assert r.charging_schedule["charging_schedule_period"][0]["limit"] == pytest.approx(
            300.0 * 1250.0)  # W → A at the gun's voltage (its maximum before any reading)
        r = await cp.call(call.GetCompositeSchedule(connector_id=0, duration=60),
                          suppress=False)
        assert r.charging_schedule["charging_rate_unit"] == "W"
        assert r.charging_schedule["charging_schedule_period"][0]["limit"] == 900_000.0
        r = await cp.call(call.GetCompositeSchedule(connector_id=9, duration=60),
                          suppress=False)
        assert r.status == "Rejected"
        r = await cp.call(call.ClearChargingProfile(id=4), suppress=False)
        assert r.status == "Accepted" and st.limits.get(gun(0), "ocpp") is None
        r = await cp.call(call.ClearChargingProfile(id=4), suppress=False)
        assert r.status == "Unknown"
        r = await cp.call(call.ClearChargingProfile(charging_profile_purpose=
                                                    "ChargePointMaxProfile"), suppress=False)
        assert r.status == "Accepted" and st.limits.get(STATION, "ocpp") is None
        assert svc.profiles.items == {}


async def test_remote_start_rules_and_reset(tmp_path: Path) -> None:
    async with online16(tmp_path, Backend16(tokens={"FLEET-1"})) as (be, svc, st, _wall):
        cp = be.cp
        r = await cp.call(call.RemoteStartTransaction(
            id_tag="X", connector_id=1, charging_profile=prof16(1, "TxDefaultProfile", 5.0)),
            suppress=False)
        assert r.status == "Rejected"  # only a TxProfile may come with a remote start
        r = await cp.call(call.RemoteStartTransaction(id_tag="X", connector_id=3),
                          suppress=False)
        assert r.status == "Rejected"
        r = await cp.call(call.RemoteStartTransaction(id_tag="FLEET-1"), suppress=False)
        assert r.status == "Accepted"
        assert await svc.authorize(0, None) is True  # the remote start answers the plug-in
        assert await svc.authorize(1, None) is False
        charge(st, token="FLEET-1")
        await be.wait_for(lambda: bool(be.of("StartTransaction")))
        resets: list[bool] = []
        svc.on_reset = lambda: resets.append(True)
        r = await cp.call(call.Reset(type="Hard"), suppress=False)
        assert r.status == "Accepted"
        await be.wait_for(lambda: bool(resets) and any(
            e["type"] == "ResetOrReboot" for e in be.of("SecurityEventNotification")))
        assert st.stops == [(0, "HardReset")]
        assert [m["reason"] for m in be.of("StopTransaction")] == ["HardReset"]  # before it
        finish(st, "HardReset")  # the station's late report changes nothing
        assert len(svc.queue) == 0 or all(m.action != "StopTransaction"
                                          for m in svc.queue.all())
