"""The ``chaos`` scenario: every process around the station dies or goes away while two trucks
charge, and the station must come back by itself (issue 14).

Unlike the lockstep demo (``runner.py``, one process on a simulated clock), chaos runs the
real processes on the real clock, because "kill -9" only means something for a process:

- ``mwc sim modules --trucks …`` (Modbus simulators and the SECC bridges, fixed ports so a
  restarted simulator answers where the old one did),
- ``mwc run`` (the controller, with ``[mqtt]``, ``[ocpp]`` and its control socket),
- ``mosquitto`` (when installed) and ``ocpp_server`` (services.py),
- this runner as the independent observer: a Modbus master reading the gun meters every
  ``SAMPLE_S`` and, at the end, the contactor matrix.

The scenario's events (``sim/scenarios/chaos.toml``, times in wall seconds after both trucks
charge, scaled by ``--shorten``) are carried out on those processes: ``backend_offline`` /
``backend_online``, ``broker_restart``, ``simulator_kill`` / ``simulator_restart`` (SIGKILL,
then a new process on the same ports), ``controller_kill`` (SIGKILL) / ``controller_restart``.

Verdicts (``report.json``), each from measurements, never assumed:

- ``charging_started`` — both guns above ``CHARGING_A`` before the first event;
- one ``recovery:<event>`` per event that ends a disturbance — both guns above
  ``CHARGING_A`` within ``fault_window_s`` after it and before the next event (the time it
  took is in the verdict; the schedule waits for it, so one recovery never hides another);
  ``backend_offline`` instead checks that charging went on while the backend was away;
- ``mqtt_after_broker_restart`` — a new subscriber on the restarted broker gets the station's
  telemetry within ``fault_window_s``;
- ``no_spurious_unplug`` — no session ended ``EVDisconnected`` (the trucks never left);
- ``violations`` — no ``safety violation`` line in any controller life;
- ``transactions_complete`` — every transaction the backend holds that had ended has
  Started … Ended with gap-free ``seqNo`` (those still open at the end are listed);
- ``stopped_safely`` — after the final SIGTERM the controller exits 0 and no matrix coil is on;
- ``recovered_without_restart`` — every disturbance other than the controller's own kill
  recovered while the *same* controller process kept running (its pid unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sim.demo.chaos_report import (
    CHARGING_A,
    ENDS,
    ChaosState,
    Sample,
    failed,
    write_report,
)
from sim.demo.scenario import Event, Scenario
from sim.demo.tasks import join
from sim.ports import free_port_block

#: Event kinds only the process runner can carry out (the lockstep runner has no processes).
PROCESS_EVENTS = frozenset({"broker_restart", "simulator_kill", "simulator_restart",
                            "controller_kill", "controller_restart"})
SAMPLE_S = 0.25
SETTLE_S = 2.0  # charging again this long before the next disturbance
ROOT = Path(__file__).resolve().parent.parent.parent


def is_chaos(sc: Scenario) -> bool:
    """True when the scenario needs the process runner (one of its events does)."""
    return any(e.kind in PROCESS_EVENTS for e in sc.events)


def presets_of(sc: Scenario) -> list[str]:
    """The simulator's ``--trucks`` presets, gun order: each truck's ``name`` must be one (the
    simulator process builds its trucks from presets, not from the scenario's fields)."""
    from sim.truck import PRESETS

    trucks = sorted(sc.trucks, key=lambda t: t.gun)
    if [t.gun for t in trucks] != [0, 1]:
        raise ValueError("chaos needs two trucks, on guns 0 and 1")
    names = [t.params.name for t in trucks]
    bad = [n for n in names if n not in PRESETS]
    if bad:
        raise ValueError(f"chaos trucks are simulator presets by name: {bad} not in "
                         f"{sorted(PRESETS)}")
    return names


def _unreadable(what: str, exc: BaseException, level: str = "debug") -> None:
    """A measurement not taken (expected while a device is down: debug): NaN / None in the
    data, and a log line."""
    from controller import logs

    getattr(logs.get_logger("sim.demo.chaos"), level)("chaos measurement failed", what=what,
                                                     error=repr(exc)[:200])


def _mwc() -> list[str]:
    exe = Path(sys.executable).with_name("mwc")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "controller.cli"]


class Procs:
    """The simulator and controller processes (the services are in services.py)."""

    def __init__(self, st: ChaosState, env: dict[str, str]) -> None:
        self.st = st
        self.env = env
        self.sim: subprocess.Popen[str] | None = None
        self.ctl: subprocess.Popen[bytes] | None = None
        self.layout: dict[str, Any] = {}
        self.base = 0
        self.config = st.out / "station.toml"
        self.lives = 0

    async def start_sim(self, modules: int, presets: list[str], tries: int = 3) -> None:
        """Start the simulator process. Its restarts must keep the ports the controller
        knows, so it gets a block of consecutive ports rather than port 0; the block is
        picked before the simulator binds it, so the *first* start moves to another block
        when the simulator cannot bind (up to ``tries`` times). A restart that cannot bind
        is an error."""
        first = not self.base
        for attempt in range(tries if first else 1):
            if first:
                self.base = free_port_block(modules + 4)
            if await self._start_sim_once(modules, presets):
                return
            if not first or attempt == tries - 1:
                raise RuntimeError(f"the simulator exited ({self.sim and self.sim.poll()}); "
                                   "see simulator.log")

    async def _start_sim_once(self, modules: int, presets: list[str]) -> bool:
        """True when the simulator serves (its layout read); False when it exited."""
        cmd = [*_mwc(), "sim", "modules", "--count", str(modules), "--guns", "2",
               "--port", str(self.base), "--trucks", ",".join(presets)]
        err = (self.st.out / "simulator.log").open("ab")
        self.sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                    env=self.env, start_new_session=True)
        err.close()
        assert self.sim.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.sim.stdout.readline), 30)
        if not line:
            self.sim.wait()
            return False
        self.layout = json.loads(line)
        return True

    def kill_sim(self) -> None:
        if self.sim is not None and self.sim.poll() is None:
            self.sim.kill()
            self.sim.wait()

    async def start_ctl(self) -> None:
        self.lives += 1
        path = self.st.out / f"controller-{self.lives}.log"
        self.st.controller_logs.append(path)
        with path.open("wb") as log:
            self.ctl = subprocess.Popen([*_mwc(), "run", "--config", str(self.config)],
                                        stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)

    def kill_ctl(self) -> None:
        if self.ctl is not None and self.ctl.poll() is None:
            self.ctl.kill()
            self.ctl.wait()

    def stop_all(self) -> None:
        for p in (self.ctl, self.sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def station_file(layout: dict[str, Any], sc: Scenario, out: Path, broker_port: int | None,
                 ocpp_url: str | None, password: str) -> str:
    from sim.layout import station_toml

    s = sc.station
    sections = f'[control]\nsocket = "{out / "control.sock"}"\n'
    if broker_port is not None:
        sections += (f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n'
                     f'client_id = "mwc-{s.id}-chaos"\ntelemetry_period_s = 1.0\n'
                     'reconnect_min_s = 0.2\nreconnect_max_s = 2.0\n')
    if ocpp_url is not None:
        sections += (f'[ocpp]\nurl = "{ocpp_url}/ocpp"\npassword = "{password}"\n'
                     f'database = "{out / "station-ocpp.sqlite3"}"\n'
                     'retry_backoff_wait_minimum_s = 0.5\nretry_backoff_random_range_s = 0.5\n'
                     'response_timeout_s = 10.0\nmessage_attempt_interval_s = 1.0\n'
                     'heartbeat_interval_s = 30\nsampled_interval_s = 10.0\n')
    return station_toml(layout, {"id": s.id, "max_kw": s.max_kw,
                                 "fallback_grid_kw": s.fallback_grid_kw,
                                 "free_charging": True, "cable_check_s": 0.5},
                        cable_rating_a=s.cable_rating_a, sections=sections)


async def _currents(layout: dict[str, Any]) -> tuple[float, float]:
    """Both gun meters read by our own Modbus master (NaN when the simulator is down)."""
    from power.meters import ModbusMeter
    from power.modbus_base import DeviceEndpoint, LinkSettings

    link = LinkSettings(timeout_s=0.5, poll_budget_s=0.6, max_missed=1)
    out = []
    for g in range(2):
        m = ModbusMeter(g, DeviceEndpoint(layout["host"], layout["meters"]["port"],
                                          layout["meters"]["units"][g]), link)
        try:
            r = await m.poll()
            out.append(r.current_a if r.available else math.nan)
        except Exception as exc:  # the meter is down (the chaos): NaN in the series
            _unreadable(f"meter {g}", exc)
            out.append(math.nan)
        finally:
            try:
                await m.close()
            except Exception as exc:
                _unreadable(f"closing meter {g}", exc)
    return out[0], out[1]


async def _coils_on(layout: dict[str, Any]) -> int | None:
    """Matrix coils on, read as an independent Modbus master (None if unreadable)."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient(layout["host"], port=int(layout["matrix"]["port"]),
                                  timeout=1.0)
    try:
        if not await client.connect():
            return None
        n = int(layout["modules"]["count"]) * 2
        r = await client.read_coils(0, count=n, device_id=1)  # coil m*G+g, from 0
        if r.isError():
            return None
        return int(sum(bool(b) for b in r.bits[:n]))
    except Exception as exc:  # the matrix is down (the chaos): no sample
        _unreadable("matrix coils", exc)
        return None
    finally:
        client.close()


async def run_chaos(sc: Scenario, out: Path, shorten: float = 1.0, live: bool = True,
                    stop: asyncio.Event | None = None) -> ChaosState:
    """Run ``sc`` on real processes (see the module docstring); writes ``report.json``."""
    from sim.demo.services import Backend, Broker, mosquitto_binary

    out.mkdir(parents=True, exist_ok=True)
    st = ChaosState(sc, out, shorten)
    stop = stop or asyncio.Event()
    t_start = time.monotonic()
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get(
        "NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba")), "PYTHONUNBUFFERED": "1"}
    env.pop("MWC__CONTROL__SOCKET", None)
    presets = presets_of(sc)
    tokens = [f"{p[:14].upper()}-{g + 1}" for g, p in enumerate(presets)]
    procs = Procs(st, env)
    broker: Broker | None = None
    backend: Backend | None = None
    sampler: asyncio.Task[None] | None = None

    def say(text: str) -> None:
        if live:
            print(f"  [{time.monotonic() - t_start:6.1f} s] {text}", flush=True)

    def note(kind: str, text: str, status: str = "done") -> None:
        st.log.append({"t_s": round(time.monotonic() - st.t0, 2) if st.t0 else None,
                       "kind": kind, "text": text, "status": status})
        say(text if status == "done" else f"{text} [{status}]")

    try:
        binary = mosquitto_binary()
        if binary is not None:
            broker = Broker(out / "services" / "mosquitto", binary)
            await broker.start()
        else:
            st.notes.append("no mosquitto binary: broker_restart is skipped")
        backend = Backend(out / "services" / "ocpp_server")
        await backend.start(sc.station.id, tokens)
        await procs.start_sim(sc.station.modules, presets)
        procs.config.write_text(station_file(procs.layout, sc, out,
                                             broker.port if broker else None,
                                             backend.ocpp_url, Backend.PASSWORD))
        await procs.start_ctl()
        say(f"simulator on {procs.base}.., controller pid {procs.ctl.pid if procs.ctl else '?'}")

        async def sample() -> None:
            while True:
                cur = await _currents(procs.layout)
                pid = procs.ctl.pid if procs.ctl and procs.ctl.poll() is None else None
                st.samples.append(Sample(time.monotonic(), cur, pid))
                await asyncio.sleep(SAMPLE_S)

        sampler = asyncio.create_task(sample())
        deadline = time.monotonic() + 90.0
        while not _charging(st.samples[-1:]):
            if time.monotonic() > deadline or stop.is_set():
                raise RuntimeError("the trucks did not start charging within 90 s; see "
                                   f"{st.controller_logs[-1]}")
            if procs.ctl is not None and procs.ctl.poll() is not None:
                raise RuntimeError(f"the controller exited ({procs.ctl.returncode}); see "
                                   f"{st.controller_logs[-1]}")
            await asyncio.sleep(0.1)
        st.t0 = time.monotonic()
        note("charging", f"both trucks charging: {st.samples[-1].currents}")
        shift = 0.0  # the schedule moves on when a recovery took longer than planned
        for i, ev in enumerate(sc.events):
            at = st.t0 + ev.at_s * shorten + shift
            while time.monotonic() < at and not stop.is_set():
                await asyncio.sleep(min(0.1, at - time.monotonic()))
            if stop.is_set():
                st.interrupted = True
                break
            await _apply(ev, procs, broker, backend, note)
            if ev.kind in ENDS:  # the cause is gone: the station's recovery window, undisturbed
                t_end = time.monotonic()
                while (time.monotonic() < t_end + sc.fault_window_s and not stop.is_set()
                       and not _charging(st.samples[-1:], after=t_end)):
                    await asyncio.sleep(0.1)
                ready = time.monotonic() + SETTLE_S
                nxt = sc.events[i + 1].at_s if i + 1 < len(sc.events) else sc.max_duration_s
                shift = max(shift, ready - (st.t0 + nxt * shorten))
        settle = st.t0 + sc.max_duration_s * shorten + shift
        while time.monotonic() < settle and not stop.is_set():
            await asyncio.sleep(0.1)
        st.interrupted = st.interrupted or stop.is_set()
        # the end: transactions at the backend, then a clean stop and the matrix
        await asyncio.sleep(2.0)  # the last queued messages
        st.transactions = await _transactions(backend, sc.station.id)
        if procs.ctl is not None and procs.ctl.poll() is None:
            procs.ctl.send_signal(signal.SIGTERM)
            t_term = time.monotonic()
            st.final_rc = await asyncio.to_thread(procs.ctl.wait, 30)
            st.notes.append(f"controller stopped {time.monotonic() - t_term:.1f} s after "
                            "SIGTERM")
        sampler.cancel()
        await join(sampler, "meter sampler", "sim.demo.chaos")
        st.coils_on = await _coils_on(procs.layout)
    except Exception as exc:  # reported as such: the verdicts that could not run say so
        st.notes.append(f"aborted: {exc}")
        say(f"aborted: {exc}")
    finally:
        if sampler is not None:
            sampler.cancel()
            await join(sampler, "meter sampler", "sim.demo.chaos")
        procs.stop_all()
        if backend is not None:
            backend.stop()
        if broker is not None:
            broker.stop()
        st.wall_s = time.monotonic() - t_start
    write_report(st)
    return st


def _charging(samples: list[Sample], after: float = -math.inf) -> bool:
    return (bool(samples) and samples[-1].t > after
            and all(c > CHARGING_A for c in samples[-1].currents))


async def _apply(ev: Event, procs: Procs, broker: Any, backend: Any, note: Any) -> None:
    k = ev.kind
    if k == "backend_offline":
        await asyncio.to_thread(backend.stop)
    elif k == "backend_online":
        await backend.serve()
    elif k == "broker_restart":
        if broker is None:
            note(k, ev.label, "skipped: no mosquitto")
            return
        await asyncio.to_thread(broker.stop)
        await broker.start()
        t = time.monotonic()
        seen = await _telemetry_after(broker.port, procs.st.scenario.station.id,
                                      procs.st.scenario.fault_window_s)
        procs.st.mqtt_back_s = None if seen is None else round(seen - t, 2)
    elif k == "simulator_kill":
        procs.kill_sim()
    elif k == "simulator_restart":
        await procs.start_sim(procs.st.scenario.station.modules, presets_of(procs.st.scenario))
    elif k == "controller_kill":
        procs.kill_ctl()
    elif k == "controller_restart":
        await procs.start_ctl()
    else:
        note(k, ev.label, f"skipped: {k} is not a chaos event")
        return
    note(k, ev.label)


async def _telemetry_after(port: int, station_id: str, within_s: float) -> float | None:
    """When a fresh subscriber on the restarted broker first gets the station's telemetry
    (monotonic time), None if not within ``within_s``."""
    import aiomqtt

    async def first() -> float:
        async with aiomqtt.Client("127.0.0.1", port, identifier="mwc-chaos-observer") as c:
            await c.subscribe(f"mwc/{station_id}/telemetry", qos=0)
            async for _msg in c.messages:
                return time.monotonic()
        raise RuntimeError("subscription ended")

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            return await asyncio.wait_for(first(), max(0.1, deadline - time.monotonic()))
        except (TimeoutError, aiomqtt.MqttError, OSError, RuntimeError):
            await asyncio.sleep(0.2)
    return None


async def _transactions(backend: Any, station_id: str) -> list[dict[str, Any]] | None:
    import httpx

    if backend is None or backend.proc is None:
        return None
    headers = {"Authorization": f"Bearer {backend.API_TOKEN}"}
    try:
        async with httpx.AsyncClient(base_url=backend.api_url, headers=headers,
                                     timeout=10) as client:
            reply = await client.get("/api/v1/transactions", params={"station_id": station_id})
            reply.raise_for_status()
            return [(await client.get(f"/api/v1/transactions/{tx['id']}")).json()
                    for tx in reply.json()]
    except Exception as exc:  # the verdicts that need them say they could not run
        _unreadable("backend transactions", exc, "warning")
        return None


def main(sc: Scenario, args: Any) -> int:
    """`mwc sim run chaos`: run, print the verdicts, exit 0 (all pass or not run) / 1 / 130."""
    import datetime as dt

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if getattr(args, "out", None) else Path("out") / stamp
    shorten = float(getattr(args, "shorten", 1.0) or 1.0)
    try:
        presets_of(sc)
    except ValueError as exc:
        print(f"mwc: {sc.name}: {exc}", file=sys.stderr)
        return 2
    print(f"mwc sim run: scenario {sc.name!r} on real processes — {sc.description}")
    from controller import logs

    out.mkdir(parents=True, exist_ok=True)
    log_stream: Any = (out / "mwc-chaos.log").open("a", encoding="utf-8")
    logs.configure(level="INFO", stream=log_stream)  # (pymodbus / httpx of the observer)
    print(f"  out: {out}  (shorten {shorten:g}: about "
          f"{sc.max_duration_s * shorten + 30:.0f} s of wall time)")

    async def go() -> ChaosState:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        return await run_chaos(sc, out, shorten, live=not getattr(args, "quiet", False),
                               stop=stop)

    st = asyncio.run(go())
    rep = json.loads((out / "report.json").read_text())
    for name, c in rep["checks"].items():
        print(f"  {c['verdict']:>7}  {name}: {c['detail']}")
    print(f"  recovered_without_restart = {rep['recovered_without_restart']}")
    for n in rep["notes"]:
        print(f"  note: {n}")
    if st.interrupted:
        return 130
    return 1 if failed(st) else 0
