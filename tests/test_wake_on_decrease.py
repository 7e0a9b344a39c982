"""A lowered outside limit (grid, OCPP, emergency) starts the next cycle at once; an increase
keeps the period (and the ramp)."""

from __future__ import annotations

import asyncio
import time

from cycle_fixtures import TEST_LINK, make_config, rig, small_truck

from controller.limits import STATION, Limit, LimitBook, gun
from controller.station import CycleEvent, Station, StationEvent
from sim.modbus_server import StationSimulator
from sim.physics import StationPhysics
from sim.truck import TruckSim


def test_limit_book_reports_only_decreases_of_the_effective_value() -> None:
    seen: list[tuple[str, str, float]] = []
    book = LimitBook(on_decrease=lambda s, k, lim: seen.append((s, k, lim.value)))
    book.set(STATION, "station_max", Limit(1_000_000.0, "config"))
    assert seen == [(STATION, "station_max", 1_000_000.0)]  # from "no limit" down
    seen.clear()
    book.set(STATION, "grid", Limit(800_000.0, "grid", 10.0, 20.0))
    book.set(STATION, "grid", Limit(900_000.0, "grid", 11.0, 20.0))  # increase: silent
    book.set(STATION, "ocpp", Limit(950_000.0, "ocpp", 11.0, 20.0))  # not binding: silent
    book.set(STATION, "grid", Limit(500_000.0, "grid", 12.0, 20.0))
    book.set(gun(0), "ocpp", Limit(300.0, "ocpp", 12.0, 20.0))
    assert seen == [(STATION, "grid", 800_000.0), (STATION, "grid", 500_000.0),
                    (gun(0), "ocpp", 300.0)]


async def test_station_wakes_for_outside_decreases_only() -> None:
    async with rig([small_truck("A"), small_truck("B")]) as r:
        st = r.station
        await r.step()
        st._wake.clear()
        st.limits.set(STATION, "grid", Limit(900_000.0, "grid", r.clock.t, r.clock.t + 60))
        assert st._wake.is_set()
        st._wake.clear()
        st.limits.set(STATION, "grid", Limit(950_000.0, "grid", r.clock.t, r.clock.t + 60))
        assert not st._wake.is_set()  # an increase waits for the period
        st.limits.set(STATION, "station_max", Limit(500_000.0, "config"))
        assert not st._wake.is_set()  # the cycle's own keys never wake it
        st.limits.set(STATION, "ocpp", Limit(400_000.0, "ocpp", r.clock.t, r.clock.t + 60))
        assert st._wake.is_set()


async def test_run_starts_a_cycle_at_once_for_a_decrease_and_keeps_the_period() -> None:
    # Real clock, 1 s period: a woken cycle must come far sooner than the period would.
    cars = [TruckSim(small_truck(n), time.monotonic) for n in "AB"]
    sim = StationSimulator(StationPhysics(8, 2, loads=cars), realtime=False)
    await sim.start()
    st = Station(make_config(8, 2, cycle_ms=1000.0), cars,
                 hardware=sim.hardware_config(TEST_LINK))
    cycles: list[float] = []
    got = asyncio.Event()

    def on(ev: StationEvent) -> None:
        if isinstance(ev, CycleEvent):
            cycles.append(time.monotonic())
            got.set()

    st.subscribe(on)
    stop = asyncio.Event()
    try:
        await st.start()
        runner = asyncio.create_task(st.run(stop))
        await asyncio.wait_for(got.wait(), 10)  # the first, scheduled cycle
        # lets the loop reach its wait, so the lowered limit comes between cycles (the case
        # under test); later, the wake would still start a cycle at once
        await asyncio.sleep(0.05)
        got.clear()
        n0, t0 = len(cycles), time.monotonic()
        now = st.clock()
        st.limits.set(STATION, "grid", Limit(300_000.0, "grid", now, now + 60))
        await asyncio.wait_for(got.wait(), 10)
        woke_after = cycles[n0] - t0
        assert woke_after < 0.5, woke_after  # not the 1 s period
        assert st.last_record is not None
        assert st.wakeups == 1
        # one module response time (60 ms) later a confirmation cycle reads the meters again
        got.clear()
        await asyncio.wait_for(got.wait(), 10)
        assert 0.04 < cycles[n0 + 1] - cycles[n0] < 0.5, cycles
        assert st.confirmations == 1
        # the schedule is kept: the next cycle is the one due one period after the first
        got.clear()
        await asyncio.wait_for(got.wait(), 10)
        assert 0.6 < cycles[n0 + 2] - cycles[n0 - 1] < 1.6, cycles
        assert st.wakeups == 1 and st.confirmations == 1
        # an increase does not start a cycle early
        got.clear()
        n1 = len(cycles)
        now = st.clock()
        st.limits.set(STATION, "grid", Limit(900_000.0, "grid", now, now + 60))
        await asyncio.sleep(0.3)  # the subject: no early cycle within this time
        assert len(cycles) == n1 or cycles[n1] - cycles[n1 - 1] > 0.6
        assert st.wakeups == 1 and st.confirmations == 1  # nor a confirmation
        stop.set()
        await asyncio.wait_for(runner, 10)
    finally:
        stop.set()
        await st.close()
        await sim.stop()
