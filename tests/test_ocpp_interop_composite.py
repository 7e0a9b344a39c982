"""Issue 16 item 5: GetCompositeSchedule includes the station's own limits (K08).

K08 (and 1.6 §3.13.5): the composite schedule is the result of all active charging profiles
*and* the local limits of the station. The test station: two guns with a 1,200 A cable rated
for 1,250 V, 1,440 kW; the gun's last measured voltage is 800 V. With a 576 kW grid limit
for the next 10 minutes and a 1,500 A TxDefaultProfile, EVSE 1 can take at most
576,000 / 800 = 720 A now, and its cable's 1,200 A once the grid limit has expired —
never the 1,500 A of the profile, nor 1,250 V × 1,200 A / 800 V = 1,875 A.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ocpp.v16 import call as call16
from ocpp.v201 import call
from ocpp16_fixtures import online16
from ocpp_fixtures import FakeStation, online

from controller.limits import STATION, Limit


def _grid(st: FakeStation, watts: float, seconds: float, fallback: float | None) -> None:
    now = st.clock()
    st.limits.set(STATION, "grid", Limit(watts, "grid:mqtt", now, now + seconds))
    if fallback is not None:
        st.limits.set_fallback(STATION, "grid", Limit(fallback, "grid:fallback"))


def _periods(sched: dict[str, Any]) -> list[tuple[int, float]]:
    return [(p["start_period"], p["limit"]) for p in sched["charging_schedule_period"]]


async def test_TC_K_08_composite_schedule_capped_by_cable_and_grid(tmp_path: Path) -> None:
    async with online(tmp_path) as (be, _svc, st, _wall):
        assert be.cp is not None
        st.sample(0, current=100.0, volts=800.0)  # the gun's measured voltage
        r = await be.cp.call(call.GetCompositeSchedule(duration=3600, evse_id=1,
                                                       charging_rate_unit="A"),
                             suppress=False)
        assert _periods(r.schedule) == [(0, 1200.0)]  # the cable rating, not 1,875 A
        p = await be.cp.call(call.SetChargingProfile(evse_id=1, charging_profile={
            "id": 5, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative", "chargingSchedule": [{
                "id": 1, "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 1500.0}]}]}),
            suppress=False)
        assert p.status == "Accepted"
        _grid(st, 576_000.0, 600.0, fallback=None)
        r = await be.cp.call(call.GetCompositeSchedule(duration=3600, evse_id=1,
                                                       charging_rate_unit="A"),
                             suppress=False)
        assert _periods(r.schedule) == [(0, 720.0), (600, 1200.0)]
        _grid(st, 576_000.0, 600.0, fallback=800_000.0)
        r = await be.cp.call(call.GetCompositeSchedule(duration=3600, evse_id=1,
                                                       charging_rate_unit="A"),
                             suppress=False)
        assert _periods(r.schedule) == [(0, 720.0), (600, 1000.0)]  # then the fallback
        r = await be.cp.call(call.GetCompositeSchedule(duration=3600, evse_id=0,
                                                       charging_rate_unit="W"),
                             suppress=False)
        assert _periods(r.schedule) == [(0, 576_000.0), (600, 800_000.0)]
        assert r.schedule["evse_id"] == 0


async def test_16_composite_schedule_capped_by_cable_and_grid(tmp_path: Path) -> None:
    async with online16(tmp_path) as (be, _svc, st, _wall):
        assert be.cp is not None
        st.sample(0, current=100.0, volts=800.0)
        _grid(st, 576_000.0, 600.0, fallback=None)
        r = await be.cp.call(call16.GetCompositeSchedule(connector_id=1, duration=1200,
                                                         charging_rate_unit="A"),
                             suppress=False)
        assert r.status == "Accepted"
        assert _periods(r.charging_schedule) == [(0, 720.0), (600, 1200.0)]
