"""The station: wiring (configuration, hardware, vehicles, limits, sessions) and the run loop.

``Station.cycle()`` runs one control cycle — poll, safety check, ``decide`` (pure), safety
guard, ordered apply, events — and returns its :class:`CycleRecord`. ``Station.run()`` calls
it every period on the injected clock until stopped; tests call ``cycle()`` themselves between
``sim.advance(dt)`` steps on a simulated clock.

Observers (``subscribe``) receive every :class:`~controller.session.SessionEvent`
(state_changed, authorized, charging_started, charging_stopped), a :class:`MeterSample` per
charging gun and cycle, and a :class:`CycleEvent` per cycle. They are called synchronously
inside the cycle, so they must not block (queue the work); an observer that raises is logged
and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from controller import logs
from controller.apply import apply_commands, zero_all
from controller.config import StationConfig
from controller.cycle import (
    CycleInputs,
    CycleMemory,
    StationParams,
    install_static_limits,
    vehicle_limits,
)
from controller.decide import decide
from controller.limits import LimitBook
from controller.records import CycleRecord, GunRecord
from controller.safety import SafetyMonitor, Violation
from controller.session import ENERGY_STATES, GunSession, GunState, SessionEvent
from controller.vehicle import VehicleLink, VehicleStatus
from power import allocator
from power.modbus_driver import Hardware, HardwareConfig, HardwareSnapshot

Clock = Callable[[], float]
Authorizer = Callable[[int, str | None], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class MeterSample:
    """One cycle's measured values of a gun with a running transaction."""

    gun: int
    t: float
    record: GunRecord
    kind: str = "meter_sample"


@dataclass(frozen=True, slots=True)
class CycleEvent:
    """A finished cycle (telemetry, logs)."""

    record: CycleRecord
    kind: str = "cycle"


StationEvent = SessionEvent | MeterSample | CycleEvent
Observer = Callable[[StationEvent], None]


def _wall() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Station:
    """One charging station: the one place that decides."""

    def __init__(
        self,
        config: StationConfig,
        vehicles: Sequence[VehicleLink],
        *,
        hardware: Hardware | HardwareConfig | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], str] = _wall,
        limits: LimitBook | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        if len(vehicles) != len(config.guns):
            raise ValueError(f"{len(vehicles)} vehicle links for {len(config.guns)} guns")
        self.config = config
        self.params = StationParams.from_config(config)
        self.clock = clock
        self.wall_clock = wall_clock
        self.vehicles = list(vehicles)
        if isinstance(hardware, Hardware):
            self.hw = hardware
        else:
            self.hw = Hardware(hardware or config.hardware_config(), clock)
        if len(self.hw.modules) != self.params.modules or len(self.hw.meters) != self.params.guns:
            raise ValueError("hardware does not match the configured modules / guns")
        self.limits = limits or LimitBook()
        install_static_limits(self.limits, config)
        self.authorizer = authorizer
        g_n = self.params.guns
        self.seq = 0
        self.overruns = 0
        self.restarts = 0
        self.warmup_s = 0.0  # allocator compile / cache load time of the last start
        self.jit_source = "none"  # allocator.jit_source() after start
        self.log = logs.get_logger("controller.station", station=config.station.id)
        self._observers: list[Observer] = []
        self._faults: list[str | None] = [None] * g_n
        self._unavailable: list[bool] = [False] * g_n  # OCPP Inoperative, kept on restart
        self._emergency: str | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fresh()

    def _fresh(self) -> None:
        """The state a controller start begins with (also after ``restart``)."""
        g_n = self.params.guns
        self.safety = SafetyMonitor(self.params,
                                    fault_cycles=self.config.station.violation_fault_cycles)
        self.sessions: tuple[GunSession, ...] = tuple(GunSession(g) for g in range(g_n))
        self.memory = CycleMemory()
        self.last_record: CycleRecord | None = None
        self._auth: list[bool | None] = [None] * g_n
        self._stops: list[str | None] = [None] * g_n
        self._clear: list[bool] = [False] * g_n
        self._cuts: frozenset[int] = frozenset()
        self._stopping = False
        self._enable_pending: set[int] = set()
        #: Where the last cycle's work went: poll, decide (incl. safety), apply (ms).
        self.last_timing: dict[str, float] = {}

    # ------------------------------------------------------------------ observers & commands
    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Add an observer; returns the function that removes it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def _emit(self, event: StationEvent) -> None:
        for obs in list(self._observers):
            try:
                obs(event)
            except Exception:
                self.log.exception("observer failed", kind=event.kind)

    def emergency_stop(self, reason: str = "emergency stop") -> None:
        """All setpoints to 0 within one cycle (the next cycle starts at once); every session
        goes Faulted with ``reason`` until ``clear_emergency_stop``."""
        if not reason.startswith("emergency"):
            reason = f"emergency stop: {reason}"
        self._emergency = reason
        self.log.error("emergency stop", reason=reason)
        self._wake.set()

    def clear_emergency_stop(self) -> None:
        """Lift the emergency stop; the Faulted guns return to Available."""
        self._emergency = None
        self._clear = [True] * self.params.guns

    def stop_charging(self, gun: int, reason: str = "Remote") -> None:
        """End the gun's session (OCPP RequestStopTransaction, local stop button)."""
        self._stops[gun] = reason

    def clear_fault(self, gun: int) -> None:
        """Acknowledge a gun fault: Faulted → Available (when the cause is gone)."""
        self._faults[gun] = None
        self._clear[gun] = True

    def set_authorization(self, gun: int, accepted: bool) -> None:
        """Authorization result for the gun's waiting session (OCPP wires this)."""
        self._auth[gun] = accepted

    def set_available(self, gun: int, available: bool) -> None:
        """OCPP ChangeAvailability: an inoperative gun starts no session (its authorization
        is refused without asking, even with free charging); a running session goes on."""
        self._unavailable[gun] = not available
        waiting = self.sessions[gun].state is GunState.PREPARING
        if not available and waiting:
            self._auth[gun] = False
        elif available and waiting and self._auth[gun] is False:
            self._auth[gun] = None
            self._request_auth(gun, self.sessions[gun].id_token)

    @property
    def violations(self) -> int:
        return self.safety.total

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Compile the allocator, connect every device, arm the module watchdogs."""
        self.warmup_s = await asyncio.to_thread(allocator.warm_up)
        self.jit_source = allocator.jit_source()
        snap = await self.hw.start()
        ms = self.config.station.watchdog_ms
        timeout = self.hw.config.link.timeout_s * 2

        async def arm(i: int) -> None:
            await self.hw.modules[i].set_output(0.0, 0.0)
            await self.hw.modules[i].set_watchdog(ms)
            await self.hw.modules[i].enable()

        tasks = [asyncio.ensure_future(arm(i)) for i in range(self.params.modules)]
        _done, pending = await asyncio.wait(tasks, timeout=timeout * 3)
        for t in pending:
            t.cancel()
        failed = [i for i, t in enumerate(tasks) if t.cancelled() or t.exception()]
        for t in tasks:
            if not t.cancelled():
                t.exception()  # retrieved: failures retried by the cycle's re-enable
        self.log.info("station started", modules=self.params.modules, guns=self.params.guns,
                      unavailable=snap.unavailable[:8], arm_failed=failed[:8])

    async def close(self) -> None:
        """Zero every setpoint, open contactors at low current, disconnect."""
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await zero_all(self.hw, self.hw.config.link.timeout_s)
            snap = await self.hw.poll_all()
            thr = self.params.switch_threshold_a
            for m, ms in enumerate(snap.modules):
                for g in range(self.params.guns):
                    if snap.matrix.commanded.size and snap.matrix.commanded[m, g] and (
                            math.isfinite(ms.current_a) and abs(ms.current_a) <= thr):
                        with contextlib.suppress(Exception):
                            await self.hw.matrix.disconnect(m, g)
        await self.hw.close()

    async def restart(self) -> None:
        """Reboot the controller in place (OCPP Reset): the close path (setpoints 0,
        contactors opened at low current, devices disconnected), then the state of a fresh
        start and ``start`` again. Kept: configuration, hardware, vehicle links, limits,
        observers, the sequence counter, and the safety latches (gun faults, emergency stop),
        which only their explicit clear lifts."""
        await self.close()
        self._tasks.clear()
        self._fresh()
        self._wake.clear()
        install_static_limits(self.limits, self.config)
        self.restarts += 1
        self.log.warning("station restarted", restarts=self.restarts)
        await self.start()

    def stop(self) -> None:
        """Ask ``run`` to end after the current cycle."""
        self._stopping = True
        self._wake.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Cycle every period until ``stop`` is set (or ``stop()``); never catches up a stall."""
        period = self.params.cycle_s
        next_t = self.clock()
        while not self._stopping and not (stop is not None and stop.is_set()):
            t0 = time.perf_counter()
            await self.cycle()
            work = time.perf_counter() - t0
            if work > period:
                self.overruns += 1
                self.log.warning("cycle overrun", seq=self.seq, work_ms=round(work * 1000, 1),
                                 period_ms=period * 1000)
            next_t += period
            now = self.clock()
            if next_t < now:
                next_t = now  # a stall is not caught up: start the next period now
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                waiters = [asyncio.ensure_future(self._wake.wait())]
                if stop is not None:
                    waiters.append(asyncio.ensure_future(stop.wait()))
                _d, pend = await asyncio.wait(waiters, timeout=max(0.0, next_t - now),
                                              return_when=asyncio.FIRST_COMPLETED)
                for w in pend:
                    w.cancel()

    # ------------------------------------------------------------------ one cycle
    async def cycle(self) -> CycleRecord:
        """One control cycle; returns its record (see docs/control-cycle.md)."""
        t_work = time.perf_counter()
        snap = await self.hw.poll_all(self._poll_deadline())
        t_polled = time.perf_counter()
        now = self.clock()
        statuses = tuple(self._status(g) for g in range(self.params.guns))
        for g, st in enumerate(statuses):
            vehicle_limits(self.limits, g, st, self.params.vehicle_timeout_s)

        measured = self.safety.check(snap)
        self._handle_persistent(measured)
        self.seq += 1
        inputs = CycleInputs(
            seq=self.seq, now=now, wall_time=self.wall_clock(), snapshot=snap,
            vehicles=statuses, sessions=self.sessions, limits=self.limits, memory=self.memory,
            auth=tuple(self._auth), stops=tuple(self._stops), faults=tuple(self._faults),
            clear_faults=tuple(self._clear), cut_modules=self._cuts | self._cut(measured),
            emergency=self._emergency,
        )
        decision = decide(inputs, self.params)
        guarded = self.safety.guard(decision, snap)
        self._cuts = self._cut(guarded)
        self.safety.remember(decision.memory)
        self._clear = [False] * self.params.guns
        old = self.sessions
        self.sessions = decision.sessions
        self.memory = decision.memory
        t_decided = time.perf_counter()
        deadline = t_work + self.params.cycle_s * 0.9  # commands never spill into the next
        result = await apply_commands(self.hw, decision.commands, self.vehicles,
                                      self.hw.config.link.timeout_s,
                                      lambda: deadline - time.perf_counter())
        self._reenable(snap)
        violations = [*measured, *guarded]
        t_end = time.perf_counter()
        work_ms = (t_end - t_work) * 1000.0
        self.last_timing = {"poll_ms": (t_polled - t_work) * 1000.0,
                            "decide_ms": (t_decided - t_polled) * 1000.0,
                            "apply_ms": (t_end - t_decided) * 1000.0}
        record = replace(decision.record, work_ms=work_ms,
                         overrun=work_ms > self.params.cycle_s * 1000.0,
                         violations=tuple(str(v) for v in violations))
        self.last_record = record
        if violations:
            self.log.error("safety violation", seq=self.seq, count=self.safety.total,
                           violations=[str(v) for v in violations], cycle=record.to_dict())
        if result.errors:
            self.log.warning("commands failed", seq=self.seq, errors=result.errors[:10],
                             failed=len(result.errors))
        self._after(old, decision.events, record)
        return record

    def _poll_deadline(self) -> float:
        return min(self.hw.config.link.poll_budget_s + 0.02, self.params.cycle_s * 0.6)

    def _command_timeout(self) -> float:
        return min(self.hw.config.link.timeout_s, self.params.cycle_s * 0.25)

    def _status(self, g: int) -> VehicleStatus:
        try:
            return self.vehicles[g].status()
        except Exception as exc:  # contract says it never raises; treat as no vehicle
            self.log.error("vehicle link failed", gun=g, error=repr(exc))
            return VehicleStatus(plugged=False, read_at=-math.inf)

    @staticmethod
    def _cut(found: list[Violation]) -> frozenset[int]:
        return frozenset(m for v in found for m in v.modules)

    def _handle_persistent(self, found: list[Violation]) -> None:
        for v in self.safety.persistent(found):
            for g in v.guns or range(self.params.guns):
                if self._faults[g] is None:
                    self._faults[g] = f"safety: {v}"
                    self.log.error("persistent safety violation: gun faulted", gun=g,
                                   violation=str(v))

    def _reenable(self, snap: HardwareSnapshot) -> None:
        """Re-arm modules whose output went off without a fault (e.g. watchdog expiry)."""
        if self._emergency:
            return
        for ms in snap.modules:
            i = ms.index
            if (ms.available and ms.ready and not ms.fault and not ms.output_on
                    and i not in self._enable_pending):
                self._enable_pending.add(i)
                task = asyncio.ensure_future(self._enable(i))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _enable(self, i: int) -> None:
        try:
            await asyncio.wait_for(self.hw.modules[i].enable(), self._command_timeout())
        except Exception as exc:
            self.log.warning("module enable failed", module=i, error=repr(exc))
        finally:
            self._enable_pending.discard(i)

    def _after(self, old: tuple[GunSession, ...], events: list[SessionEvent],
               record: CycleRecord) -> None:
        for ev in events:
            if ev.kind == "state_changed":
                self.log.info("gun state", gun=ev.gun, state=ev.state.value,
                              previous=ev.previous.value if ev.previous else None,
                              reason=ev.reason)
                if ev.state is GunState.PREPARING:
                    self._auth[ev.gun] = None
                    self._request_auth(ev.gun, ev.id_token)
                if ev.state in (GunState.AVAILABLE, GunState.FINISHING, GunState.FAULTED):
                    self._stops[ev.gun] = None
            self._emit(ev)
        for s, gr in zip(self.sessions, record.guns, strict=True):
            if s.state in ENERGY_STATES:
                self._emit(MeterSample(s.gun, record.t, gr))
        self._emit(CycleEvent(record))

    def _request_auth(self, g: int, token: str | None) -> None:
        if self._unavailable[g]:
            self._auth[g] = False
            return
        if self.config.station.free_charging or self.authorizer is None:
            return
        authorizer = self.authorizer

        async def ask() -> None:
            try:
                ok = await authorizer(g, token)
            except Exception as exc:
                self.log.error("authorizer failed", gun=g, error=repr(exc))
                ok = False
            self._auth[g] = bool(ok)

        task = asyncio.ensure_future(ask())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
