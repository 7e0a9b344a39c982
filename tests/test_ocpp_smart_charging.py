"""Smart charging: K01 validation, composite schedule, limits in the control cycle (K01–K08)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cycle_fixtures import rig, small_truck
from ocpp.v201 import call
from ocpp_fixtures import Backend, ocpp_config, online, shutdown
from test_ocpp_transactions import charge, events

from controller.config import parse_config
from controller.limits import STATION, LimitBook, gun
from controller.ocpp.smart_charging import Profiles
from controller.ocpp.v201.service import OcppService

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def prof(pid: int = 1, purpose: str = "TxDefaultProfile", kind: str = "Absolute",
         level: int = 0, unit: str = "A", periods: list[tuple[int, float]] | None = None,
         start: datetime | None = T0, **kw: Any) -> dict[str, Any]:
    sched: dict[str, Any] = {"id": pid, "charging_rate_unit": unit, "charging_schedule_period": [
        {"start_period": s, "limit": v} for s, v in (periods or [(0, 500.0)])]}
    if start is not None and kind != "Relative":
        sched["start_schedule"] = start.isoformat()
    p = {"id": pid, "stack_level": level, "charging_profile_purpose": purpose,
         "charging_profile_kind": kind, "charging_schedule": [sched]}
    p.update(kw)
    return p


@pytest.fixture
def book(tmp_path: Path) -> Profiles:
    return Profiles(sqlite3.connect(tmp_path / "p.sqlite3"), 2, [1000.0, 1000.0])


@pytest.mark.parametrize(("evse", "p", "why"), [
    (0, prof(purpose="ChargingStationExternalConstraints"), "ExternalConstraints"),
    (3, prof(), "unknown EVSE"),
    (1, prof(purpose="ChargingStationMaxProfile"), "only on EVSE 0"),
    (0, prof(purpose="ChargingStationMaxProfile", kind="Relative"), "cannot be Relative"),
    (0, prof(purpose="TxProfile"), "EVSE > 0"),
    (1, prof(purpose="TxProfile"), "no transaction"),
    (1, prof(level=10), "stackLevel"),
    (1, prof(start=None), "needs startSchedule"),
    (1, prof(kind="Recurring"), "recurrencyKind"),
    (1, prof(periods=[(10, 5.0)]), "first startPeriod"),
    (1, prof(periods=[(0, 5.0), (60, 4.0), (60, 3.0)]), "must increase"),
    (1, prof(periods=[(i * 60, 5.0) for i in range(25)]), "more than 24"),
    (1, prof(unit="Wh"), "A or W"),
])
def test_K01_validation_rules(book: Profiles, evse: int, p: dict[str, Any], why: str) -> None:
    reason = book.validate(evse, p)
    assert reason is not None and why in reason


def test_K01_same_stack_level_and_purpose_rejected_same_id_replaces(book: Profiles) -> None:
    assert book.validate(1, prof(1)) is None
    book.install(1, prof(1))
    assert "same purpose and stackLevel" in (book.validate(1, prof(2)) or "")
    assert book.validate(1, prof(2, level=1)) is None
    assert book.validate(2, prof(2)) is None  # another EVSE
    assert book.validate(1, prof(1, periods=[(0, 100.0)])) is None  # same id: replaces
    book.tx[1] = ("tx-1", T0)
    assert book.validate(1, prof(3, purpose="TxProfile", transaction_id="other")) is not None
    assert book.validate(1, prof(3, purpose="TxProfile", transaction_id="tx-1")) is None


def test_K08_composite_limits_with_expiry_at_period_end(book: Profiles) -> None:
    book.install(0, prof(1, purpose="ChargingStationMaxProfile", unit="W",
                         periods=[(0, 900_000.0), (3600, 600_000.0)]))
    book.install(0, prof(2, periods=[(0, 800.0), (1800, 400.0)]))  # TxDefault for all EVSEs
    book.install(2, prof(3, level=1, unit="W", periods=[(0, 300_000.0)], valid_to=(
        T0 + timedelta(hours=2)).isoformat()))
    lb = LimitBook()
    now = T0 + timedelta(minutes=10)
    book.apply(lb, 100.0, now)
    st = lb.get(STATION, "ocpp")
    g0, g1 = lb.get(gun(0), "ocpp"), lb.get(gun(1), "ocpp")
    assert st is not None and g0 is not None and g1 is not None
    assert (st.value, st.source, st.expires_at) == (900_000.0, "OCPP", 100.0 + 50 * 60)
    assert (g0.value, g0.expires_at) == (800.0, 100.0 + 20 * 60)
    assert g1.value == 300.0  # 300 kW at 1000 V (no voltage measured yet)
    book.voltage[1] = 750.0
    book.apply(lb, 101.0, now)
    assert lb.get(gun(1), "ocpp").value == 400.0  # type: ignore[union-attr]
    sched = book.composite(1, T0, 7200, "A")
    assert sched == [{"startPeriod": 0, "limit": 800.0}, {"startPeriod": 1800, "limit": 400.0}]
    assert book.composite(0, T0, 7200, "W") == [{"startPeriod": 0, "limit": 900_000.0},
                                                {"startPeriod": 3600, "limit": 600_000.0}]
    book.clear(purpose="TxDefaultProfile")
    book.apply(lb, 102.0, now)
    assert lb.get(gun(0), "ocpp") is None


def test_K01_recurring_daily(book: Profiles) -> None:
    book.install(1, prof(1, kind="Recurring", recurrency_kind="Daily",
                         periods=[(0, 100.0), (12 * 3600, 200.0)]))
    got = book.evse_limit(1, T0 + timedelta(days=3, hours=13))
    assert got is not None and got[0] == 200.0
    assert got[2] == T0 + timedelta(days=4)


async def test_K01_tx_profile_lowers_gun_current_within_one_cycle(tmp_path: Path) -> None:
    be = Backend()
    await be.start()
    async with rig([small_truck("A", target_soc_pct=95), small_truck("B")]) as r:
        cfg = ocpp_config(tmp_path, be.port, station_id="MWC-T1")
        svc = OcppService(cfg, r.station.config)
        svc.attach(r.station)
        import asyncio
        task = asyncio.ensure_future(svc.run())
        try:
            await be.wait_for(lambda: svc.online)
            r.trucks[0].plug_in()
            await r.until(lambda rec: rec.guns[0].current_a > 300.0, max_cycles=200)
            await be.wait_for(lambda: bool(events(be)))
            tx_id = events(be)[0]["transaction_info"]["transaction_id"]
            assert be.cp is not None
            res = await be.cp.call(call.SetChargingProfile(evse_id=1, charging_profile={
                "id": 7, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Relative", "transactionId": tx_id,
                "chargingSchedule": [{"id": 1, "chargingRateUnit": "A",
                                      "chargingSchedulePeriod": [{"startPeriod": 0,
                                                                  "limit": 200.0}]}]}),
                suppress=False)
            assert res.status == "Accepted"
            rec = await r.step(1)
            assert rec.guns[0].setpoint_a <= 200.0 + 1e-6
            assert rec.guns[0].binding_source == "OCPP"
            comp = await be.cp.call(call.GetCompositeSchedule(duration=600, evse_id=1),
                                    suppress=False)
            assert comp.status == "Accepted"
            assert comp.schedule["charging_schedule_period"][0]["limit"] == 200.0
            gp = await be.cp.call(call.GetChargingProfiles(request_id=3, charging_profile={
                "chargingProfilePurpose": "TxProfile"}), suppress=False)
            assert gp.status == "Accepted"
            await be.wait_for(lambda: bool(be.of("ReportChargingProfiles")))
            assert be.of("ReportChargingProfiles")[0]["charging_profile"][0]["id"] == 7
            clr = await be.cp.call(call.ClearChargingProfile(charging_profile_id=7),
                                   suppress=False)
            assert clr.status == "Accepted"
            assert r.station.limits.get(gun(0), "ocpp") is None
            r.assert_safe()
        finally:
            await shutdown(svc, task)
    await be.stop()


async def test_K05_remote_start_with_tx_profile_and_K01_rejections(tmp_path: Path) -> None:
    async with online(tmp_path) as (be, svc, st, _wall):
        assert be.cp is not None
        profile = {"id": 9, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
                   "chargingProfileKind": "Relative", "chargingSchedule": [{
                       "id": 1, "chargingRateUnit": "W",
                       "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 400_000.0}]}]}
        r = await be.cp.call(call.SetChargingProfile(evse_id=1, charging_profile=profile),
                             suppress=False)
        assert r.status == "Rejected" and r.status_info["reason_code"] == "InvalidProfile"
        r2 = await be.cp.call(call.RequestStartTransaction(
            id_token={"idToken": "FLEET-7", "type": "Central"}, remote_start_id=1, evse_id=1,
            charging_profile=profile), suppress=False)
        assert r2.status == "Accepted"
        assert await svc.authorize(0, None) is True
        charge(st)
        lim = st.limits.get(gun(0), "ocpp")
        assert lim is not None and lim.value == pytest.approx(400_000.0 / 1250.0)
        assert svc.profiles.items[9][1]["transaction_id"] == svc.tx.open[0].tx_id
        st.limits.set(STATION, "grid", __import__("controller.limits").limits.Limit(
            500_000.0, "grid:mqtt", 0.0, 1e9))
        from types import SimpleNamespace
        st.emit(SimpleNamespace(kind="cycle", record=None))
        await be.wait_for(lambda: bool(be.of("NotifyChargingLimit")))
        assert be.of("NotifyChargingLimit")[0]["charging_limit"]["charging_limit_source"] == \
            "EMS"


def test_parse_station_config_for_service(tmp_path: Path) -> None:
    cfg = parse_config({"station": {"id": "X", "max_kw": 100, "fallback_grid_kw": 100},
                        "guns": [{"cable_rating_a": 100, "max_voltage_v": 1000}],
                        "modules": {"count": 1}})
    svc = OcppService(ocpp_config(tmp_path, 1), cfg)
    assert svc.station_id == "X" and svc.guns == 1
    svc.db.close()
