"""The station with its MQTT services wired as `mwc run` wires them: a grid limit published
to a real broker binds the station cap, and telemetry comes out."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path
from typing import Any

import pytest

from controller.services import mqtt_services, run_services
from tests.cycle_fixtures import rig, small_truck
from tests.mqtt_fixtures import (
    Listener,
    broker,
    eventually,
    needs_mosquitto,
    station_config,
    tasks,
)

pytestmark = [needs_mosquitto, pytest.mark.timeout(60)]


async def test_grid_limit_over_mqtt_binds_the_station_cap(tmp_path: Path) -> None:
    with broker(tmp_path) as b:
        async with rig([small_truck("A", capacity_kwh=200.0)], modules=8) as r:
            cfg = r.station.config.model_copy(update={"mqtt": station_config(b)})
            services = mqtt_services(r.station, cfg)
            assert [name for name, _ in services] == ["mqtt", "telemetry", "grid"]
            async with Listener(b, "mwc/TEST-1/telemetry") as listener, tasks(
                *(coro for _, coro in services)
            ):
                r.trucks[0].plug_in()
                await r.until(lambda rec: rec.guns[0].current_a > 100.0)
                issued = r.station.wall_clock()
                payload = {"id": "peak-1", "limit_kw": 40.0, "valid_for_s": 60,
                           "issued_at": issued, "source": "ems"}
                await listener.publish("mwc/TEST-1/grid/limit", json.dumps(payload).encode())
                await eventually(lambda: r.station.limits.get("station", "grid") is not None)
                rec = await r.until(lambda rec: rec.cap_source.startswith("grid:ems:peak-1"))
                assert rec.station_cap_w == pytest.approx(40_000.0)
                rec = await r.until(lambda rec: rec.station_power_w <= 40_000.0 * 1.01, 30)
                r.assert_safe()
                await eventually(lambda: listener.json("mwc/TEST-1/telemetry"))
                assert "guns" in json.dumps(listener.json("mwc/TEST-1/telemetry")[-1])


async def test_run_services_without_mqtt_runs_the_cycle_until_stopped(tmp_path: Path) -> None:
    async with rig([small_truck("A")], modules=4) as r:
        assert r.station.config.mqtt is None
        assert mqtt_services(r.station, r.station.config) == []
        stop = asyncio.Event()
        task = asyncio.create_task(run_services(r.station, r.station.config, stop))
        seq = r.station.seq
        await eventually(lambda: r.station.seq > seq, what="a cycle of run_services")
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_run_services_boots_the_ocpp_client_and_closes_it(tmp_path: Path) -> None:
    from tests.ocpp_fixtures import Backend, ocpp_config

    backend = Backend()
    await backend.start()
    try:
        async with rig([small_truck("A")], modules=4) as r:
            cfg = r.station.config.model_copy(
                update={"ocpp": ocpp_config(tmp_path, backend.port, security_profile=0,
                                            password=None)}
            )
            stop = asyncio.Event()
            task = asyncio.create_task(run_services(r.station, cfg, stop))
            await backend.wait_for(lambda: bool(backend.of("StatusNotification")), 15)
            assert backend.of("BootNotification")
            assert r.station.authorizer is not None  # the client answers authorizations
            stop.set()
            await asyncio.wait_for(task, 15)
    finally:
        await backend.stop()


async def test_TC_B_22_CS_reset_restarts_the_station_and_its_services(tmp_path: Path) -> None:
    """Reset Immediate during a session: the transaction ends (ResetCommand), the cycle loop
    stops through the station's close path (no contactor opened under load), the station
    restarts in place and the client boots again with RemoteReset; a still plugged truck
    starts a new transaction."""
    from ocpp.v201 import call

    from controller.station import StationEvent
    from tests.ocpp_fixtures import Backend, ocpp_config

    backend = Backend()
    await backend.start()
    try:
        async with rig([small_truck("A", target_soc_pct=95.0)], modules=4) as r:
            def tick(ev: StationEvent) -> None:  # simulated time: one dt per cycle
                if ev.kind == "cycle":
                    r.clock.t += r.dt
                    r.sim.advance(r.dt)

            r.station.subscribe(tick)
            cfg = r.station.config.model_copy(
                update={"ocpp": ocpp_config(tmp_path, backend.port, security_profile=0,
                                            password=None)})
            stop = asyncio.Event()
            task = asyncio.create_task(run_services(r.station, cfg, stop))
            r.trucks[0].plug_in()
            def tx() -> list[dict[str, Any]]:
                return backend.of("TransactionEvent")

            await backend.wait_for(lambda: len(tx()) >= 1, 20)
            assert backend.cp is not None
            reply = await backend.cp.call(call.Reset(type="Immediate"), suppress=False)
            assert reply.status == "Accepted"
            await backend.wait_for(lambda: len(backend.of("BootNotification")) == 2, 20)
            assert backend.of("BootNotification")[1]["reason"] == "RemoteReset"
            assert r.station.restarts == 1 and not task.done()
            ended = [e for e in tx() if e["event_type"] == "Ended"]
            assert ended[0]["trigger_reason"] == "ResetCommand"
            assert ended[0]["transaction_info"]["stopped_reason"] == "ImmediateReset"
            first = ended[0]["transaction_info"]["transaction_id"]
            await backend.wait_for(lambda: any(
                e["event_type"] == "Started"
                and e["transaction_info"]["transaction_id"] != first for e in tx()), 20)
            assert [e["type"] for e in backend.of("SecurityEventNotification")].count(
                "StartupOfTheDevice") == 2
            assert "ResetOrReboot" in [e["type"] for e in backend.of("SecurityEventNotification")]
            r.assert_safe()  # the restart opened no contactor under load
            stop.set()
            await asyncio.wait_for(task, 15)
            assert backend.of("BootNotification")[-1]["reason"] == "RemoteReset"
    finally:
        await backend.stop()
        gc.collect()  # the restart's garbage is collected here, not in a later timed poll


async def test_inoperative_gun_starts_no_session_even_with_free_charging() -> None:
    """The station hook behind OCPP ChangeAvailability (G03): a plugged truck on an
    inoperative gun waits in Preparing without current; Operative again, it charges."""
    async with rig([small_truck("A")], modules=4) as r:
        assert r.station.config.station.free_charging
        r.station.set_available(0, False)
        r.trucks[0].plug_in()
        await r.step(30)
        assert r.states() == ["Preparing"] and r.records[-1].guns[0].current_a < 1.0
        r.station.set_available(0, True)
        await r.until(lambda rec: rec.guns[0].current_a > 100.0)
        r.assert_safe()
