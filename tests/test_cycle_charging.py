"""The control cycle against the real Modbus simulators: charging, sharing, stopping."""

from __future__ import annotations

import dataclasses
import itertools

from cycle_fixtures import rig, small_truck
from helpers import eventually

from controller.limits import STATION, Limit
from controller.session import SessionEvent


def _charging(rec: object, g: int) -> bool:
    return rec.guns[g].state == "Charging" and rec.guns[g].current_a > 50  # type: ignore[attr-defined]


async def test_one_truck_charges_to_its_target() -> None:
    async with rig([small_truck("A"), small_truck("B")]) as r:
        truck = r.trucks[0]
        truck.plug_in()
        rec = await r.until(lambda rec: rec.guns[0].state == "Finishing", max_cycles=400)
        assert truck.soc_pct >= truck.params.target_soc_pct
        await r.step(3)
        assert abs(r.records[-1].guns[0].current_a) <= 5.0
        assert r.records[-1].guns[0].modules == ()  # contactors released
        truck.unplug()
        await r.step(2)
        assert r.states() == ["Available", "Available"]
        states = [e.state.value for e in r.events
                  if isinstance(e, SessionEvent) and e.kind == "state_changed" and e.gun == 0]
        assert states == ["Preparing", "CableCheck", "PreCharge", "Charging", "Finishing",
                          "Available"]
        kinds = [e.kind for e in r.events if isinstance(e, SessionEvent) and e.gun == 0]
        assert "authorized" in kinds and "charging_started" in kinds
        stopped = [e for e in r.events if isinstance(e, SessionEvent)
                   and e.kind == "charging_stopped"]
        assert stopped[0].reason == "StoppedByEV" and (stopped[0].energy_wh or 0) > 500
        # ramp: the gun current never rose faster than 1000 A/s (100 A per 0.1 s cycle)
        sp = [x.guns[0].setpoint_a for x in r.records]
        assert max(b - a for a, b in itertools.pairwise(sp)) <= 100.0 + 1e-6
        assert rec.guns[0].binding_source in ("ev_request", "none")
        r.assert_safe()


async def test_two_trucks_share_the_pool_equally() -> None:
    async with rig([small_truck("A", target_soc_pct=95), small_truck("B", target_soc_pct=95)]) as r:
        for t in r.trucks:
            t.plug_in()
        await r.until(lambda rec: _charging(rec, 0) and _charging(rec, 1))
        await r.step(15)
        a, b = r.records[-1].guns
        assert a.binding == b.binding == "POOL" and a.binding_source == "pool"
        assert abs(a.current_a - b.current_a) <= 2.0, (a.current_a, b.current_a)
        assert a.current_a + b.current_a > 380  # the whole pool (8 × ~50 A at ~790 V)
        assert len(a.modules) == len(b.modules) == 4
        r.assert_safe()


async def test_second_truck_takes_modules_only_after_they_drained() -> None:
    async with rig([small_truck("A", target_soc_pct=95), small_truck("B", target_soc_pct=95)]) as r:
        r.trucks[0].plug_in()
        await r.until(lambda rec: rec.guns[0].current_a > 395)
        assert len(r.records[-1].guns[0].modules) == 8
        r.trucks[1].plug_in()
        start = len(r.records)
        await r.until(lambda rec: _charging(rec, 1) and rec.guns[1].current_a > 195)
        moved = [e for e in r.physics.switch_log if e.gun == 0 and not e.closed]
        assert moved, "modules moved from gun 0 to gun 1"
        assert all(abs(e.current_a) <= 5.0 for e in r.physics.switch_log)
        # gun 0 gave up only what the pool requires: never below its fair half
        after = [x.guns[0].current_a for x in r.records[start:]]
        assert min(after) > 195
        r.assert_safe()


async def test_vehicle_stop_request_ends_the_session() -> None:
    async with rig([small_truck("A", target_soc_pct=95), small_truck("B")]) as r:
        r.trucks[0].plug_in()
        await r.until(lambda rec: rec.guns[0].current_a > 300)
        r.trucks[0].request_stop()
        rec = await r.step(2)
        assert rec.guns[0].state == "Finishing"
        assert rec.guns[0].setpoint_a == 0.0
        await r.step(2)
        assert abs(r.records[-1].guns[0].current_a) <= 5.0
        assert r.records[-1].guns[0].modules == ()
        stopped = [e for e in r.events if isinstance(e, SessionEvent)
                   and e.kind == "charging_stopped"]
        assert [e.reason for e in stopped] == ["StoppedByEV"]
        r.trucks[0].unplug()
        await r.step(1)
        assert r.states()[0] == "Available"
        r.assert_safe()


async def test_station_stop_and_unplug_mid_charge() -> None:
    async with rig([small_truck("A", target_soc_pct=95), small_truck("B", target_soc_pct=95)]) as r:
        for t in r.trucks:
            t.plug_in()
        await r.until(lambda rec: _charging(rec, 0) and _charging(rec, 1))
        r.station.stop_charging(0, "Remote")
        r.trucks[1].unplug()
        await r.step(3)
        assert r.states() == ["Finishing", "Available"]
        reasons = sorted(e.reason or "" for e in r.events if isinstance(e, SessionEvent)
                         and e.kind == "charging_stopped")
        assert reasons == ["EVDisconnected", "Remote"]
        assert all(abs(g.current_a) <= 5.0 for g in r.records[-1].guns)
        r.assert_safe()


async def test_emergency_stop_zeroes_every_setpoint_within_one_cycle() -> None:
    async with rig([small_truck("A", target_soc_pct=95), small_truck("B", target_soc_pct=95)]) as r:
        for t in r.trucks:
            t.plug_in()
        await r.until(lambda rec: _charging(rec, 0) and _charging(rec, 1))
        r.station.emergency_stop("test button")
        rec = await r.station.cycle()  # one cycle, no simulated time needed
        assert all(m.setpoint_a == 0.0 for m in rec.modules)
        assert all(m.current_limit_a == 0.0 for m in r.physics.modules)  # sent, not only decided
        assert r.states() == ["Faulted", "Faulted"]
        r.clock.t += r.dt
        r.sim.advance(r.dt)
        await r.step(3)
        assert all(abs(g.current_a) <= 5.0 for g in r.records[-1].guns)
        assert all(g.modules == () for g in r.records[-1].guns)
        reasons = {e.reason for e in r.events if isinstance(e, SessionEvent)
                   and e.kind == "charging_stopped"}
        assert reasons == {"EmergencyStop"}
        r.station.clear_emergency_stop()
        await r.step(2)
        assert "Faulted" not in r.states()
        r.assert_safe()


async def test_grid_limit_binds_with_its_source_and_expires_to_the_fallback() -> None:
    async with rig([small_truck("A", target_soc_pct=95), small_truck("B")],
                   fallback_grid_kw=250.0) as r:
        r.trucks[0].plug_in()
        await r.until(lambda rec: rec.guns[0].current_a > 250)
        rec = r.records[-1]
        assert rec.guns[0].binding == "STATION" and rec.guns[0].binding_source == "grid:fallback"
        now = r.clock()
        r.station.limits.set(STATION, "grid", Limit(100_000.0, "grid:mqtt:test", now, now + 1.0))
        rec = await r.step(2)
        assert rec.cap_source == "grid:mqtt:test" and rec.station_cap_w == 100_000.0
        assert rec.guns[0].power_w <= 100_000.0 * 1.02
        rec = await r.step(15)  # expired: back to the fallback, ramping up again
        assert rec.cap_source == "grid:fallback" and rec.guns[0].power_w > 200_000.0
        r.assert_safe()


async def test_authorization_callback_gates_charging() -> None:
    async with rig([small_truck("A"), small_truck("B")], free_charging=False) as r:
        asked: list[tuple[int, str | None]] = []

        async def authorizer(gun: int, token: str | None) -> bool:
            asked.append((gun, token))
            return token == "TRUCK-A"

        r.station.authorizer = authorizer
        for t in r.trucks:
            t.plug_in()
        await r.step(10)
        assert sorted(asked) == [(0, "TRUCK-A"), (1, "TRUCK-B")]
        assert r.states()[1] == "Preparing" and r.station.sessions[1].reason == "not authorized"
        assert r.states()[0] in ("Charging", "PreCharge")
        r.station.set_authorization(1, True)  # e.g. a remote start from the backend
        await r.step(8)
        assert r.states() == ["Charging", "Charging"]
        r.assert_safe()


async def test_run_loop_cycles_and_wakes_at_once_for_an_emergency_stop() -> None:
    import asyncio

    async with rig([small_truck("A"), small_truck("B")]) as r:
        r.station.params = dataclasses.replace(r.station.params, cycle_s=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(r.station.run(stop))
        await eventually(lambda: r.station.seq >= 3, what="three cycles of run()")
        seq = r.station.seq
        assert seq >= 3
        stop.set()
        await asyncio.wait_for(task, 2.0)
        # A period far longer than the test may wait: only a wake can run the next cycle.
        r.station.params = dataclasses.replace(r.station.params, cycle_s=600.0)
        stop = asyncio.Event()
        task = asyncio.create_task(r.station.run(stop))
        await eventually(lambda: r.station.seq > seq, what="the first cycle of the slow run()")
        seq, wakeups = r.station.seq, r.station.wakeups
        r.station.emergency_stop("test")
        await eventually(lambda: r.states() == ["Faulted", "Faulted"], what="the woken cycle")
        assert r.station.seq > seq and r.station.wakeups == wakeups + 1
        stop.set()
        await asyncio.wait_for(task, 2.0)
