"""The Prometheus endpoint: scraped over HTTP from a station on the Modbus simulators, with
the OCPP client and MQTT connection wired by ``run_services`` against a test backend and the
suite's own mosquitto. Values are compared with the cycle records they come from."""

from __future__ import annotations

import asyncio
import gc
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cycle_fixtures import Rig, rig, small_truck
from helpers import eventually, listening_ports, logged, logged_events
from mqtt_fixtures import broker, needs_mosquitto, station_config
from prometheus_client.parser import text_string_to_metric_families

from controller.config import MetricsConfig
from controller.limits import Limit
from controller.metrics import MetricsExporter
from controller.services import run_services, start_metrics
from controller.station import CycleEvent, StationEvent

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int, path: str = "/metrics") -> httpx.Response:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def samples(port: int) -> Samples:
    """Every sample of one scrape by (sample name, sorted labels), parsed by the client
    library's own parser (so the exposition format is valid too)."""
    r = await scrape(port)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, tuple(sorted(labels.items())))]


def named(got: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {lab: v for (n, lab), v in got.items() if n == name}


async def until(pred: Callable[[], Any], timeout: float = 15.0) -> None:
    await eventually(pred, timeout, 0.05)


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_scrape_reports_the_last_cycle_record() -> None:
    async with rig([small_truck("A", target_soc_pct=95.0)], modules=4) as r:
        exporter = MetricsExporter(r.station, MetricsConfig(enabled=True, port=0))
        await exporter.start()
        try:
            assert exporter.port is not None
            t0 = r.clock.t
            r.station.limits.set("station", "grid", Limit(100_000.0, "grid:ems:peak-1", t0,
                                                          t0 + 600.0))
            first = len(r.records)
            r.trucks[0].plug_in()
            rec = await r.until(lambda rec: rec.guns[0].current_a > 100.0)
            await r.step(5)
            rec = r.records[-1]
            observed = r.records[first:]
            got = await samples(exporter.port)

            g = rec.guns[0]
            assert g.state == "Charging"
            assert value(got, "mwc_gun_current_amperes", gun="1") == g.current_a
            assert value(got, "mwc_gun_power_watts", gun="1") == g.power_w
            assert value(got, "mwc_gun_voltage_volts", gun="1") == g.voltage_v
            assert value(got, "mwc_gun_setpoint_amperes", gun="1") == g.setpoint_a
            states = named(got, "mwc_gun_state")
            assert states[(("gun", "1"), ("state", "Charging"))] == 1.0
            assert sum(states.values()) == 1.0 and len(states) == 9
            assert value(got, "mwc_gun_binding_info", gun="1", binding=g.binding,
                         source=g.binding_source) == 1.0

            # the cap names the binding station limit (the grid one, below the 1440 kW max)
            assert rec.cap_source == "grid:ems:peak-1"
            assert value(got, "mwc_station_cap_watts", source="grid:ems:peak-1") == 100_000.0
            assert named(got, "mwc_station_cap_watts") == {(("source", "grid:ems:peak-1"),):
                                                            100_000.0}
            assert value(got, "mwc_station_power_watts") == rec.station_power_w
            limits = named(got, "mwc_station_limit_watts")
            assert limits[(("source", "station_max:config"),)] == 1_440_000.0
            assert limits[(("source", "grid:ems:peak-1"),)] == 100_000.0
            left = value(got, "mwc_limit_expires_in_seconds", gun="",  # "" = the station
                         source="grid:ems:peak-1")
            assert left == pytest.approx(600.0 - (r.clock.t - t0))
            assert value(got, "mwc_gun_limit_amperes", gun="1", source="cable:config") == 1500.0

            for m in rec.modules:
                k = str(m.module + 1)  # numbered from 1, as on the cabinet
                want = "connected" if m.gun >= 0 else "idle"
                assert value(got, "mwc_module_state", module=k, state=want) == 1.0
                assert value(got, "mwc_module_current_amperes", module=k) == m.current_a
                assert value(got, "mwc_module_gun", module=k) == float(m.gun + 1)
                for sensor, c in (("inlet", m.inlet_c), ("outlet", m.outlet_c),
                                  ("internal", m.internal_c)):
                    assert value(got, "mwc_module_temperature_celsius", module=k,
                                 sensor=sensor) == c
            connected = [lab for lab, v in named(got, "mwc_module_state").items()
                         if v == 1.0 and ("state", "connected") in lab]
            assert len(connected) == len(g.modules) > 0

            # the histogram saw every cycle since the exporter subscribed, nothing else
            assert value(got, "mwc_cycle_duration_seconds_count") == len(observed)
            assert value(got, "mwc_cycle_duration_seconds_sum") == pytest.approx(
                sum(x.work_ms for x in observed) / 1000.0)
            under = sum(1 for x in observed if x.work_ms / 1000.0 <= 0.1)
            assert value(got, "mwc_cycle_duration_seconds_bucket", le="0.1") == under
            assert value(got, "mwc_cycle_duration_seconds_bucket", le="+Inf") == len(observed)
            assert value(got, "mwc_cycles_total") == r.station.seq
            assert value(got, "mwc_cycle_overruns_total") == r.station.overruns
            assert value(got, "mwc_safety_violations_total") == 0.0
            assert value(got, "mwc_cycle_age_seconds") == pytest.approx(r.dt)
            assert not [k for k in got if k[0].startswith(("mwc_ocpp", "mwc_mqtt"))]

            # violations are counted from the records the station emits
            r.station._emit(CycleEvent(replace(rec, violations=("gun_current: a", "b: c"))))
            got = await samples(exporter.port)
            assert value(got, "mwc_safety_violations_total") == 2.0

            assert (await scrape(exporter.port, "/nope")).status_code == 404
            async with httpx.AsyncClient() as client:
                post = await client.post(f"http://127.0.0.1:{exporter.port}/metrics")
            assert post.status_code == 405
        finally:
            await exporter.close()
        assert refused(exporter.port)  # closed with the station


async def test_metrics_are_off_by_default_and_open_no_socket() -> None:
    async with rig([small_truck("A")], modules=4) as r:
        cfg = r.station.config
        assert cfg.metrics == MetricsConfig() and not cfg.metrics.enabled
        assert cfg.metrics.host == "127.0.0.1"
        listening = listening_ports()  # the rig's simulators
        off = cfg.model_copy(update={"metrics": MetricsConfig(port=0)})
        assert await start_metrics(r.station, off) is None
        stop = asyncio.Event()
        task = asyncio.create_task(run_services(r.station, off, stop))
        await eventually(lambda: r.station.seq > 0, what="a cycle of run_services")
        # the cycle runs, and no socket was opened: not on a port 0 bound, nor any other
        assert r.station.seq > 0 and listening_ports() == listening
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_taken_port_leaves_the_station_running_without_metrics() -> None:
    async with rig([small_truck("A")], modules=4) as r:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            cfg = r.station.config.model_copy(
                update={"metrics": MetricsConfig(enabled=True, port=port)})
            assert await start_metrics(r.station, cfg) is None
            assert len(r.station._observers) == 1  # the rig's own; the exporter left none


def _ticking(r: Rig) -> None:
    def tick(ev: StationEvent) -> None:  # simulated time: one dt per cycle
        if ev.kind == "cycle":
            r.clock.t += r.dt
            r.sim.advance(r.dt)

    r.station.subscribe(tick)


@needs_mosquitto
async def test_run_services_exports_ocpp_and_mqtt_connection_state(tmp_path: Path) -> None:
    """The endpoint as `mwc run` wires it: MQTT connected flips with the suite's broker,
    OCPP connected and the queue depth (the real SQLite queue) follow the backend."""
    from ocpp_fixtures import Backend, ocpp_config

    be = Backend()
    await be.start()
    try:
        with broker(tmp_path / "mq") as b:
            async with rig([small_truck("A", target_soc_pct=95.0)], modules=4) as r:
                _ticking(r)
                ocpp = ocpp_config(tmp_path, be.port, security_profile=0, password=None)
                cfg = r.station.config.model_copy(update={
                    "mqtt": station_config(b), "ocpp": ocpp,
                    "metrics": MetricsConfig(enabled=True, port=0)})
                stop = asyncio.Event()
                with logged_events("controller.metrics") as events:  # the port it bound
                    task = asyncio.create_task(run_services(r.station, cfg, stop))
                    port = await eventually(lambda: logged(events, "metrics_listening", "port"),
                                            what="metrics_listening")

                def db_depth() -> int:
                    with sqlite3.connect(ocpp.database) as db:
                        return int(db.execute("SELECT COUNT(*) FROM queue").fetchone()[0])

                async def state(**want: float) -> bool:
                    try:
                        got = await samples(port)
                    except httpx.TransportError:
                        return False
                    return all(got.get((f"mwc_{k}", ())) == v for k, v in want.items())

                await until(lambda: state(ocpp_connected=1.0, mqtt_connected=1.0))
                await until(lambda: state(ocpp_queue_depth=0.0))

                b.stop()
                await until(lambda: state(mqtt_connected=0.0))
                got = await samples(port)
                assert value(got, "mwc_mqtt_connect_failures") >= 1.0
                assert value(got, "mwc_mqtt_connections_total") == 1.0
                b.start()
                await until(lambda: state(mqtt_connected=1.0, mqtt_connect_failures=0.0))

                await be.stop()  # backend away: the transaction's events wait in the queue
                await until(lambda: state(ocpp_connected=0.0))
                r.trucks[0].plug_in()

                async def queued() -> bool:
                    return value(await samples(port), "mwc_ocpp_queue_depth") >= 1.0

                await until(queued)
                before = value(await samples(port), "mwc_ocpp_queue_depth")
                in_db = db_depth()
                after = value(await samples(port), "mwc_ocpp_queue_depth")
                assert 1.0 <= before <= in_db <= after  # the queue only grows while offline

                await be.start(be.port)  # back: the queue drains in order
                await until(lambda: state(ocpp_connected=1.0, ocpp_queue_depth=0.0), 20)
                assert be.of("TransactionEvent")
                stop.set()
                await asyncio.wait_for(task, 15)
                assert refused(port)
    finally:
        await be.stop()
        gc.collect()


async def test_observer_costs_microseconds_per_cycle() -> None:
    """The only work inside the cycle: measured on real records (the figure is reported)."""
    async with rig([small_truck("A", target_soc_pct=95.0)], modules=8) as r:
        exporter = MetricsExporter(r.station, MetricsConfig(enabled=True))
        try:
            r.trucks[0].plug_in()
            await r.until(lambda rec: rec.guns[0].current_a > 100.0)
            ev = CycleEvent(r.records[-1])
            n = 20_000
            t0 = time.perf_counter()
            for _ in range(n):
                exporter.collector.observe(ev)
            per_call_us = (time.perf_counter() - t0) / n * 1e6
            t0 = time.perf_counter()
            body = exporter.render()
            render_ms = (time.perf_counter() - t0) * 1000.0
        finally:
            await exporter.close()
        print(f"observer {per_call_us:.2f} us/cycle; scrape render {render_ms:.2f} ms, "
              f"{len(body)} bytes")
        assert per_call_us < 20.0
        assert exporter.collector.histogram.count >= n
