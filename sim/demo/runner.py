"""Orchestration: simulator, station and the services around them, in lockstep on one clock.

One simulated clock drives everything: the runner calls ``station.cycle()`` (which polls and
commands the Modbus simulator over real TCP on loopback), then moves the clock by ``dt`` and
``sim.advance(dt)`` (physics, trucks), then lets the grid feed publish. MQTT and the backend
run as their own processes; the grid source and telemetry as tasks next to the cycle.
``speed`` (simulated s per wall s) throttles the lockstep; 0 runs it as fast as it goes.

A *backend link* (the station's OCPP client) is an optional object with ``start()``,
``stop()``, ``set_online(bool)`` and ``transactions()``; without one the backend runs but the
transaction verdicts are reported ``not_run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from controller.clock import SimClock
from sim.demo.collect import Collector
from sim.demo.live import Live
from sim.demo.scenario import Event, Scenario
from sim.demo.services import Backend, Broker, GridFeed, MqttPublisher, mosquitto_binary
from sim.demo.tasks import join


class BackendLink(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def set_online(self, online: bool) -> None: ...


@dataclass
class Options:
    speed: float | None = None  # None: the scenario's
    out: Path = Path("out")
    use_mqtt: bool = True
    use_backend: bool = True
    use_ocpp: bool = True  # connect the station's OCPP client when it is available
    live: bool = True
    shorten: float = 1.0
    layout: str = "port_per_device"  # or "power_unit" (docs/modbus-map.md)


@dataclass
class RunState:
    scenario: Scenario
    options: Options
    notes: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)  # scenario events as they ran
    interrupted: bool = False
    wall_s: float = 0.0
    grid_mode: str = ""
    backend_mode: str = ""
    transactions: list[dict[str, Any]] | None = None  # as the backend stored them


def station_config(sc: Scenario, broker_port: int | None, free: bool = True) -> dict[str, Any]:
    s = sc.station
    cycle_ms = sc.dt_s * 1000.0
    data: dict[str, Any] = {
        "station": {"id": s.id, "max_kw": s.max_kw, "fallback_grid_kw": s.fallback_grid_kw,
                    "cycle_ms": cycle_ms, "watchdog_ms": int(max(500.0, 4 * cycle_ms)),
                    "vehicle_timeout_s": max(1.0, 3 * sc.dt_s), "ramp_a_per_s": s.ramp_a_per_s,
                    "cable_check_s": 0.5, "finishing_timeout_s": max(5.0, 3 * sc.dt_s),
                    "free_charging": free},
        "guns": [{"cable_rating_a": s.cable_rating_a, "max_voltage_v": 1000.0,
                  "connector": "MCS"} for _ in range(max(2, sc.guns))],
        "modules": {"count": s.modules, "rated_power_w": s.module_power_w,
                    "rated_current_a": s.module_current_a},
    }
    if broker_port is not None:
        data["mqtt"] = {"host": "127.0.0.1", "port": broker_port,
                        "client_id": f"mwc-{s.id}-demo", "telemetry_period_s": 1.0}
    return data


async def run(sc: Scenario, opts: Options, backend_link: Any = None) -> RunState:
    """Run ``sc`` to its end (or SIGINT/SIGTERM); writes the report into ``opts.out``."""
    from controller.config import parse_config
    from controller.station import Station
    from power.modbus_base import LinkSettings
    from power.power_unit import make_hardware
    from sim.demo import report
    from sim.modbus_server import StationSimulator
    from sim.modules import ModuleParams
    from sim.physics import StationPhysics
    from sim.truck import TruckSim

    if opts.shorten != 1.0:
        sc = sc.shortened(opts.shorten)
    state = RunState(sc, opts)
    opts.out.mkdir(parents=True, exist_ok=True)
    live = Live(enabled=opts.live)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    clock = SimClock(wall_start=time.time())  # simulated wall time starts now
    guns = max(2, sc.guns)
    trucks: list[TruckSim | None] = [None] * guns
    for spec in sc.trucks:
        trucks[spec.gun] = TruckSim(spec.params, clock)
    loads = [t if t is not None else TruckSim(clock=clock) for t in trucks]
    physics = StationPhysics(sc.station.modules, guns, ModuleParams(
        rated_power_w=sc.station.module_power_w, rated_current_a=sc.station.module_current_a),
        loads=loads, chiller_c=sc.station.chiller_c)
    if opts.layout == "power_unit":
        from sim.power_unit import PowerUnitSimulator

        sim: StationSimulator = PowerUnitSimulator(physics, realtime=False)
    else:
        sim = StationSimulator(physics, realtime=False)
    broker: Broker | None = None
    backend: Backend | None = None
    tasks: list[asyncio.Task[Any]] = []
    station: Station | None = None
    t_wall0 = time.monotonic()
    try:
        binary = mosquitto_binary() if opts.use_mqtt else None
        if binary is not None:
            broker = Broker(opts.out / "services" / "mosquitto", binary)
            await broker.start()
            state.grid_mode = f"MQTT via mosquitto on 127.0.0.1:{broker.port}"
        else:
            why = "disabled (--no-mqtt)" if not opts.use_mqtt else "no mosquitto binary found"
            state.grid_mode = "in-process (LimitBook)"
            state.notes.append(f"MQTT {why}: the grid schedule is fed in-process through the "
                               "station's limit interface (LimitBook key 'grid')")
        live.note(f"grid signal: {state.grid_mode}")
        if opts.use_backend:
            backend = Backend(opts.out / "services" / "ocpp_server")
            tokens = [t.params.id_token for t in sc.trucks]
            await backend.start(sc.station.id, tokens)
            live.note(f"backend: ocpp_server at {backend.ocpp_url}, REST {backend.api_url}, "
                      f"station {sc.station.id} and tokens {tokens} provisioned")
        await sim.start()
        if backend_link is None and backend is not None and opts.use_ocpp:
            from sim.demo import backend_link as bl

            why_not = bl.available()
            if why_not is not None:
                state.notes.append(why_not)
        else:
            why_not = "disabled"
        auto_link = backend is not None and opts.use_ocpp and why_not is None
        cfg = parse_config(station_config(sc, broker.port if broker else None,
                                          free=not (auto_link or backend_link is not None)))
        link = LinkSettings(timeout_s=0.2, poll_budget_s=0.3, max_missed=2,
                            backoff_initial_s=0.01, backoff_max_s=0.05)
        hw = make_hardware(sim.hardware_config(link), clock)
        async def advance(dt: float) -> None:  # the stop sequence's waits, on the sim clock
            clock.t += dt
            sim.advance(dt)

        station = Station(cfg, loads, hardware=hw, clock=clock,
                          wall_clock=lambda: _iso(clock.time()), pause=advance)
        feed = await _grid(sc, cfg, station, clock, broker, tasks)
        if auto_link and backend is not None:
            backend_link = bl.OcppLink(backend, station, clock.time,
                                       opts.out / "services" / "station_ocpp")
        state.backend_mode = await _backend(backend_link, backend, station, state, live)
        collector = Collector(sc, physics)
        station.subscribe(collector.observe)
        from sim.demo.why import LimitTrace

        collector.why = LimitTrace(station)  # type: ignore[attr-defined]  # the "why" plots
        from sim.demo import pages

        view = await pages.start_view(station, live)
        station.subscribe(live.observe)
        live.note(f"starting station {sc.station.id}: {sc.station.modules} modules × "
                  f"{sc.station.module_power_w / 1000:g} kW / {sc.station.module_current_a:g} A,"
                  f" {guns} guns; scenario {sc.name!r}, dt {sc.dt_s:g} s")
        await pages.with_progress(station.start(), live, "starting the station")
        tasks.append(asyncio.create_task(pages.compile_progress(station, live),
                                         name="compile progress"))
        await _loop(sc, opts, state, station, sim, clock, trucks, feed, collector, live, stop,
                    backend_link)
        if opts.live and not stop.is_set():  # a person's run (`make demo`), not --quiet
            await pages.screenshots(view, backend.api_url if backend else None,
                                    Backend.API_TOKEN, opts.out, live)
        await pages.close_view(view)
        state.interrupted = stop.is_set()
        if backend_link is not None and hasattr(backend_link, "drain"):
            live.note("waiting for the station's OCPP queue to drain into the backend")
            if not await backend_link.drain():
                state.notes.append("the OCPP queue did not drain within 30 s")
            state.transactions = await backend_link.transactions(sc.station.id)
    finally:
        live.close()
        if station is not None:
            await _shutdown_step("station close", station.close())
        if backend_link is not None:
            await _shutdown_step("backend link stop", backend_link.stop())
        for t in tasks:
            t.cancel()
        for t in tasks:
            await join(t, t.get_name())
        await sim.stop()
        if backend is not None:
            backend.stop()
        if broker is not None:
            broker.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, ValueError):
                loop.remove_signal_handler(sig)
    state.wall_s = time.monotonic() - t_wall0
    if station is not None:
        report.write(state, collector, station, physics, opts.out)
    return state


async def _shutdown_step(what: str, step: Awaitable[Any]) -> None:
    """One step of the demo's shutdown pass: a failure is logged, and the pass goes on."""
    try:
        await step
    except Exception as exc:
        from controller import logs

        logs.get_logger("sim.demo").warning("demo shutdown step failed", step=what,
                                            error=repr(exc)[:200])


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


async def _grid(sc: Scenario, cfg: Any, station: Any, clock: SimClock, broker: Broker | None,
                tasks: list[asyncio.Task[Any]]) -> GridFeed:
    from controller.limits import install_grid_fallback

    if broker is None or cfg.mqtt is None:
        install_grid_fallback(station.limits, sc.station.fallback_grid_kw * 1000.0)
        return GridFeed(sc.grid, sc.station.id, clock.time, clock, book=station.limits)
    from controller.grid import GridLimitSource
    from controller.mqtt import MqttConnection
    from controller.telemetry import TelemetryPublisher

    conn = MqttConnection(cfg.mqtt, cfg.station.id)
    telemetry = TelemetryPublisher(conn)
    GridLimitSource(station.limits, conn, fallback_w=cfg.station.fallback_grid_kw * 1000.0,
                    events=telemetry, mono=clock, wall=clock.time)
    station.subscribe(telemetry.observe)
    pub = MqttPublisher(broker.port, f"mwc-sim-grid-{sc.station.id}")
    for name, coro in (("MQTT connection", conn.run()), ("telemetry", telemetry.run()),
                       ("grid publisher", pub.run())):
        tasks.append(asyncio.create_task(coro, name=name))
    await asyncio.wait_for(pub.connected.wait(), 10)
    await asyncio.wait_for(conn.wait_connected(), 10)  # subscribed before the first limit
    await asyncio.sleep(0.1)
    return GridFeed(sc.grid, sc.station.id, clock.time, clock, publish=pub.publish)


async def _backend(link: Any, backend: Backend | None, station: Any, state: RunState,
                   live: Live) -> str:
    if link is not None:
        await link.start()
        live.note("backend link: the station's OCPP 2.0.1 client is online")
        return "OCPP 2.0.1 station client (controller.ocpp) connected to ocpp_server"
    why = ("no OCPP station client is wired into the demo yet (controller/ocpp/ is being "
           "built); ocpp_server runs and is provisioned, but the station does not connect")
    if backend is None:
        why = "backend disabled (--no-backend)"
    state.notes.append(why)
    live.note(f"backend link: {why}")
    return "not connected"


async def _loop(sc: Scenario, opts: Options, state: RunState, station: Any, sim: Any,
                clock: SimClock, trucks: list[Any], feed: GridFeed, collector: Collector,
                live: Live, stop: asyncio.Event, link: Any) -> None:
    from controller.session import GunState

    speed = sc.speed if opts.speed is None else opts.speed
    pending = list(sc.events)
    arrivals = {spec.gun: spec for spec in sc.trucks}
    gone: set[int] = set()
    t_wall0 = time.monotonic()
    feed.tick()
    await asyncio.sleep(0.05)
    while not stop.is_set() and clock.elapsed < sc.max_duration_s:
        now = clock.elapsed
        for g, spec in list(arrivals.items()):
            if now >= spec.arrive_s:
                trucks[g].plug_in()
                del arrivals[g]
                _log(state, live, collector, now, "arrive", f"truck {spec.params.name} arrives "
                     f"at gun {g + 1} ({spec.params.capacity_kwh:g} kWh, SoC "
                     f"{spec.params.start_soc_pct:g} → {spec.params.target_soc_pct:g} %)")
        while pending and pending[0].at_s <= now:
            _apply(pending.pop(0), state, live, collector, now, sim, station, feed, link)
        rec = await station.cycle()
        collector.add(rec, clock.elapsed, feed)
        live.update(rec, clock.elapsed, feed)
        for spec in sc.trucks:
            g, truck = spec.gun, trucks[spec.gun]
            s = station.sessions[g].state
            if (truck.plugged and truck.stop_requested and spec.leave_at_target
                    and s in (GunState.FINISHING, GunState.AVAILABLE, GunState.SUSPENDED_EV)
                    and abs(rec.guns[g].current_a) < 5.0):
                truck.unplug()
                gone.add(g)
                _log(state, live, collector, now, "leave", f"truck {spec.params.name} leaves "
                     f"gun {g + 1} at SoC {truck.soc_pct:.1f} %")
        if not arrivals and len(gone) == len(sc.trucks) and all(
                station.sessions[g].state is GunState.AVAILABLE for g in gone):
            break
        clock.t += sc.dt_s
        sim.advance(sc.dt_s)
        feed.tick()
        if speed > 0:
            await asyncio.sleep(max(0.0, t_wall0 + clock.elapsed / speed - time.monotonic()))
        else:
            await asyncio.sleep(0)
    if clock.elapsed >= sc.max_duration_s:
        state.notes.append(f"stopped at max_duration_s = {sc.max_duration_s:g} s")


def _log(state: RunState, live: Live, collector: Collector, t: float, kind: str, text: str,
         status: str = "done") -> None:
    entry = {"t_s": round(t, 3), "kind": kind, "text": text, "status": status}
    state.log.append(entry)
    collector.markers.append(entry)
    live.event(t, text if status == "done" else f"{text} [{status}]")


def _apply(ev: Event, state: RunState, live: Live, collector: Collector, now: float, sim: Any,
           station: Any, feed: GridFeed, link: Any) -> None:
    physics = sim.physics
    a = ev.args
    text, status = ev.label, "done"
    if ev.kind == "grid_limit":
        kw = float(a["limit_kw"]) if "limit_kw" in a else float(a["fraction"]) * feed.spec.normal_kw
        storage = float(a.get("storage_kw", feed.spec.storage_kw))
        feed.set(kw, storage, ev.label)
        text = f"{ev.label}: grid limit {kw:g} kW, storage {storage:g} kW"
    elif ev.kind == "grid_normal":
        feed.set(feed.spec.normal_kw, feed.spec.storage_kw, "normal")
        text = f"{ev.label}: grid limit back to {feed.spec.normal_kw:g} kW"
    elif ev.kind in ("grid_signal_lost", "grid_signal_restored"):
        feed.lost = ev.kind == "grid_signal_lost"
        feed.set(feed.limit_kw, feed.storage_kw, feed.label)
    elif ev.kind in ("pump_failure", "pump_restored", "module_fault", "module_fault_cleared"):
        m = _module(a.get("module", "auto"), station,
                    {f[1] for f in collector.fault_modules if ev.kind.endswith("_failure")
                     or ev.kind == "module_fault"})
        collector.fault_modules.append((now, m, ev.kind))
        if ev.kind == "pump_failure":
            physics.set_pump_failure(True, m)
        elif ev.kind == "pump_restored":
            physics.set_pump_failure(False, m)
        elif ev.kind == "module_fault":
            physics.inject_module_fault(m, int(a.get("code", 1)))
        else:
            physics.clear_module_fault(m)
        text = f"{ev.label} (module {m + 1}; index {m} in the scenario file)"
    elif ev.kind in ("backend_offline", "backend_online"):
        if link is None:
            status = "skipped: no OCPP station client wired"
        else:
            link.set_online(ev.kind == "backend_online")
    _log(state, live, collector, now, ev.kind, text, status)


def _module(value: Any, station: Any, exclude: set[int]) -> int:
    """The module index, or for "auto" the busiest module not hit by an earlier fault."""
    if value != "auto":
        return int(value)
    rec = station.last_record
    if rec is not None:
        busy = sorted((m for m in rec.modules if m.gun >= 0 and m.module not in exclude),
                      key=lambda m: -m.setpoint_a)
        if busy:
            return int(busy[0].module)
    return 0
