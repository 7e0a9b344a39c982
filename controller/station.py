"""The station: wiring (configuration, hardware, vehicles, limits, sessions) and the run loop.

``Station.cycle()`` runs one control cycle — poll, safety check, ``decide`` (pure), safety
guard, ordered apply, events — and returns its :class:`CycleRecord`. ``Station.run()`` calls
it every period on the injected clock until stopped; tests call ``cycle()`` themselves between
``sim.advance(dt)`` steps on a simulated clock.

Observers (``subscribe``) receive every :class:`~controller.session.SessionEvent`
(state_changed, authorized, charging_started, charging_stopped), a :class:`MeterSample` per
charging gun and cycle, and a :class:`CycleEvent` per cycle. They are called synchronously
inside the cycle, so they must not block (queue the work); an observer that raises is logged
and skipped. The event types live in ``controller/station_events.py``; what the outside asked
of each gun (authorization, stops, fault clears, availability) and the rules for it in
``controller/gun_requests.py``. Both are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from controller import logs
from controller.apply import apply_commands
from controller.clock import Monotonic
from controller.config import StationConfig
from controller.cycle import (
    CYCLE_KEYS,
    CycleInputs,
    CycleMemory,
    StationParams,
    install_static_limits,
    vehicle_limits,
)
from controller.decide import decide
from controller.gun_requests import Authorizer as Authorizer
from controller.gun_requests import GunRequests
from controller.limits import Limit, LimitBook, LimitKey
from controller.logfold import DeviceErrorFolder, HardwareSummary
from controller.module_care import ModuleCare
from controller.module_faults import ModuleFaultPolicy
from controller.records import CycleRecord
from controller.recovery import CommRecovery
from controller.safety import SafetyMonitor, Violation
from controller.session import ENERGY_STATES, GunSession, GunState, SessionEvent
from controller.shutdown import Pause, StopReport, stop_hardware
from controller.station_events import CycleEvent as CycleEvent
from controller.station_events import MeterSample as MeterSample
from controller.station_events import Observer as Observer
from controller.station_events import StationEvent as StationEvent
from controller.station_events import emit
from controller.vehicle import VehicleLink, VehicleStatus
from power import allocator
from power.hardware_api import StationHardware
from power.modbus_driver import HardwareConfig, HardwareSnapshot
from power.power_unit import PowerUnitConfig, make_hardware


def _wall() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Station:
    """One charging station: the one place that decides."""

    def __init__(
        self,
        config: StationConfig,
        vehicles: Sequence[VehicleLink],
        *,
        hardware: StationHardware | HardwareConfig | PowerUnitConfig | None = None,
        clock: Monotonic = time.monotonic,
        wall_clock: Callable[[], str] = _wall,
        limits: LimitBook | None = None,
        authorizer: Authorizer | None = None,
        pause: Pause | None = None,
    ) -> None:
        if len(vehicles) != len(config.guns):
            raise ValueError(f"{len(vehicles)} vehicle links for {len(config.guns)} guns")
        self.config = config
        self.params = StationParams.from_config(config)
        self.clock = clock
        self.wall_clock = wall_clock
        self.vehicles = list(vehicles)
        self.hw: StationHardware = make_hardware(hardware or config.hardware_config(), clock)
        if len(self.hw.modules) != self.params.modules or len(self.hw.meters) != self.params.guns:
            raise ValueError("hardware does not match the configured modules / guns")
        self.limits = limits or LimitBook()
        self.limits.on_decrease = self._limit_decreased
        self.wakeups = 0  # cycles started early by a lowered limit or an emergency stop
        #: extra cycles one module response time after a woken one, to read the meters
        self.confirmations = 0
        install_static_limits(self.limits, config)
        g_n = self.params.guns
        self.seq = 0
        self.overruns = 0
        self.restarts = 0
        self.warmup_s = 0.0  # allocator compile / cache load time of the last start
        self.jit_source = "none"  # allocator.jit_source() after start
        self.jit_cold = False  # the last start found no compiled kernel in the cache
        self.log = logs.get_logger("controller.station", station=config.station.id)
        self._observers: list[Observer] = []
        self._emergency: str | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: what the outside asked of each gun; faults and availability are kept on restart
        self.requests = GunRequests(g_n, authorizer, config.station.free_charging,
                                    self._tasks, self.log)
        #: waits between the stop sequence's polls (a simulated clock's test advances there)
        self._pause: Pause = pause or asyncio.sleep
        #: what the last stop sequence could not do (None before the first close)
        self.stop_report: StopReport | None = None
        st = config.station
        self.module_faults = ModuleFaultPolicy(self.params.modules, st.fault_reset_tries,
                                               st.fault_reset_backoff_s)
        self.device_errors = DeviceErrorFolder(self.log, st.log_fold_s)
        self.hw_summary = HardwareSummary(self.log, st.log_fold_s)
        self.recovery = CommRecovery(self.params.modules, g_n, self.params.switch_threshold_a,
                                     st.finishing_timeout_s + 1.0)
        self._fresh()

    def _fresh(self) -> None:
        """The state a controller start begins with (also after ``restart``)."""
        g_n = self.params.guns
        self.safety = SafetyMonitor(self.params,
                                    fault_cycles=self.config.station.violation_fault_cycles,
                                    grace_s=self.config.modules.response_ms / 1000.0)
        self.sessions: tuple[GunSession, ...] = tuple(GunSession(g) for g in range(g_n))
        self.memory = CycleMemory()
        self.last_record: CycleRecord | None = None
        self.requests.fresh()
        self._cuts: frozenset[int] = frozenset()
        self._stopping = False
        self.care = ModuleCare(self.hw, self.config.station.watchdog_ms, self.recovery,
                               self.module_faults, self.device_errors, self.log, self._emit,
                               self._command_timeout, self._tasks)
        #: Where the last cycle's work went: poll, decide (incl. safety), apply (ms).
        self.last_timing: dict[str, float] = {}

    # ------------------------------------------------------------------ observers & commands
    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Add an observer; returns the function that removes it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def _emit(self, event: StationEvent) -> None:
        emit(self._observers, event, self.log)

    @property
    def authorizer(self) -> Authorizer | None:
        return self.requests.authorizer

    @authorizer.setter
    def authorizer(self, authorizer: Authorizer | None) -> None:
        """Wired after construction when the authorizer needs the station (OCPP)."""
        self.requests.authorizer = authorizer

    @property
    def _faults(self) -> list[str | None]:
        """The latched gun faults (tests latch one directly to show a Faulted gun)."""
        return self.requests.faults

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
        self.requests.clear_all()

    def stop_charging(self, gun: int, reason: str = "Remote") -> None:
        """End the gun's session (OCPP RequestStopTransaction, local stop button)."""
        self.requests.stop(gun, reason)

    def clear_fault(self, gun: int) -> None:
        """Acknowledge a gun fault: Faulted → Available (when the cause is gone)."""
        self.requests.clear_fault(gun)
        self.recovery.forget(gun)

    @property
    def module_count(self) -> int:
        return self.params.modules

    @property
    def given_up_modules(self) -> list[int]:
        """Modules the fault-reset policy gave up on (out of the pool until forgotten)."""
        return self.module_faults.given_up

    def forget_module_faults(self, module: int | None = None) -> None:
        """Operator clear of the fault-reset policy: a given-up module (or every one) gets
        fault resets again (docs/control-cycle.md, "Latched module faults")."""
        for ev in self.module_faults.forget(module, self.clock()):
            self.log.warning("module fault history cleared", module=ev.module)
            self._emit(ev)

    def set_authorization(self, gun: int, accepted: bool) -> None:
        """Authorization result for the gun's waiting session (OCPP wires this)."""
        self.requests.set_authorization(gun, accepted)

    def set_available(self, gun: int, available: bool) -> None:
        """OCPP ChangeAvailability: an inoperative gun starts no session (its authorization
        is refused without asking, even with free charging); a running session goes on."""
        self.requests.set_available(gun, available, self.sessions[gun])

    def _limit_decreased(self, scope: str, key: LimitKey, limit: Limit) -> None:
        """A lower grid / OCPP / other outside limit acts at once: wake the cycle (the
        cycle's own keys, set inside it every cycle, never wake it)."""
        if key in CYCLE_KEYS:
            return
        self.log.debug("limit lowered: cycle woken", scope=scope, key=key, value=limit.value,
                       source=limit.source)
        self._wake.set()

    @property
    def violations(self) -> int:
        return self.safety.total

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Compile the allocator, connect every device, arm the module watchdogs."""
        # Ready at once, cold cache or warm: the first cycles allocate on the pure-Python
        # reference while the numba kernel is compiled elsewhere / loaded, then switch.
        t_jit = time.perf_counter()
        self.jit_cold = allocator.jit_source() in ("none", "reference") and not (
            allocator.kernel_cached())
        await asyncio.to_thread(allocator.use_reference)
        self.warmup_s = time.perf_counter() - t_jit
        self.jit_source = allocator.jit_source()
        jit_task = asyncio.ensure_future(self._prepare_allocator())
        self._tasks.add(jit_task)
        jit_task.add_done_callback(self._tasks.discard)
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
                t.exception()  # retrieved: failures re-armed once the module answers
        self.recovery.needs_arm.update(failed)
        self.log.info("station started", modules=self.params.modules, guns=self.params.guns,
                      unavailable=snap.unavailable[:8], arm_failed=failed[:8])

    async def _prepare_allocator(self) -> None:
        """Compile / load the numba kernel in the background and switch to it."""
        try:
            seconds = await allocator.prepare()
        except Exception as exc:  # the reference gives the same results, only slower
            self.log.error("allocator kernel not ready: staying on the reference",
                           error=repr(exc))
            return
        self.jit_source = allocator.jit_source()
        self.log.info("allocator switched to the compiled kernel", seconds=round(seconds, 3),
                      allocator_code=self.jit_source)

    async def close(self) -> None:
        """The stop sequence (controller/shutdown.py): vehicles told to stop, setpoints 0,
        wait (``station.drain_timeout_s``) until every module measures ≤ the switch
        threshold, open its contactors and confirm by the feedback, disable every module,
        disconnect. What did not go to plan is logged in one error line and kept in
        ``stop_report`` (``mwc run`` then exits non-zero)."""
        for t in list(self._tasks):
            t.cancel()
        for g, s in enumerate(self.sessions):
            if s.state in ENERGY_STATES or s.state is GunState.PRECHARGE:
                try:
                    self.vehicles[g].stop()
                except Exception as exc:  # contract: never raises; the stop goes on
                    self.log.error("vehicle stop failed", gun=g, error=repr(exc))
        st = self.config.station
        try:
            rep = await stop_hardware(
                self.hw, threshold_a=self.params.switch_threshold_a,
                drain_timeout_s=st.drain_timeout_s, period_s=self.params.cycle_s,
                timeout_s=self._command_timeout(), poll_deadline_s=self._poll_deadline(),
                pause=self._pause)
        except Exception:  # a bug: still disconnect, and say the stop is unconfirmed
            self.log.exception("stop sequence failed")
            rep = StopReport(matrix_unconfirmed=True)
        self.stop_report = rep
        if rep.ok:
            self.log.info("station stopped safely", seconds=round(rep.seconds, 2),
                          polls=rep.polls)
        else:
            self.log.error("stop sequence incomplete: " + rep.message(st.drain_timeout_s),
                           seconds=round(rep.seconds, 2))
        await self.hw.close()

    async def restart(self) -> None:
        """Reboot the controller in place (OCPP Reset): the stop sequence of ``close``
        (setpoints 0, drained, contactors opened and confirmed, modules disabled, devices
        disconnected), then the state of a fresh start and ``start`` again. Kept:
        configuration, hardware, vehicle links, limits,
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
        """Cycle every period until ``stop`` is set (or ``stop()``); never catches up a stall.

        A lowered limit wakes an extra cycle at once; one module response time after it
        (``[modules] response_ms``) a confirmation cycle reads the meters again, unless the
        period's next cycle comes first. Neither moves the period's schedule."""
        period = self.params.cycle_s
        grace = self.safety.grace_s
        next_t = self.clock()
        confirm_t: float | None = None  # a confirmation cycle due (after a woken one)
        while not self._stopping and not (stop is not None and stop.is_set()):
            # Cleared before the cycle: a wake that arrives while it runs starts the next one
            # at once. A woken cycle is an extra one: the period's schedule stays as it was.
            woken = self._wake.is_set()
            self._wake.clear()
            now = self.clock()
            scheduled = now >= next_t - 0.002  # a timer may fire a little early
            confirming = (not scheduled and not woken and confirm_t is not None
                          and now >= confirm_t - 0.002)
            if confirming:
                self.confirmations += 1
            elif not scheduled:
                self.wakeups += 1
            confirm_t = None  # any cycle reads the meters: it confirms what came before
            t0 = time.perf_counter()
            await self.cycle()
            work = time.perf_counter() - t0
            if work > period:
                self.overruns += 1
                self.log.warning("cycle overrun", seq=self.seq, work_ms=round(work * 1000, 1),
                                 period_ms=period * 1000)
            if scheduled:
                next_t += period
            now = self.clock()
            if next_t < now:
                next_t = now  # a stall is not caught up: start the next period now
            if woken and now + grace < next_t - 0.002:
                # The woken cycle's lower setpoints are out; the meters show them once the
                # modules have followed (the safety grace): read them then, not a period on.
                confirm_t = now + grace
            wait_until = next_t if confirm_t is None else confirm_t
            with contextlib.suppress(TimeoutError):
                waiters = [asyncio.ensure_future(self._wake.wait())]
                if stop is not None:
                    waiters.append(asyncio.ensure_future(stop.wait()))
                _d, pend = await asyncio.wait(waiters, timeout=max(0.0, wait_until - now),
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
        back = self.recovery.observe(snap, now)  # before any command: who answers again
        self._book_poll(snap)
        statuses = tuple(self._status(g) for g in range(self.params.guns))
        for g, st in enumerate(statuses):
            vehicle_limits(self.limits, g, st, self.params.vehicle_timeout_s)

        measured = self.safety.check(snap)
        self._handle_persistent(measured)
        self.seq += 1
        req = self.requests.snapshot()
        inputs = CycleInputs(
            seq=self.seq, now=now, wall_time=self.wall_clock(), snapshot=snap,
            vehicles=statuses, sessions=self.sessions, limits=self.limits, memory=self.memory,
            auth=req.auth, stops=req.stops, faults=req.faults,
            clear_faults=req.clear_faults, cut_modules=self._cuts | self._cut(measured),
            emergency=self._emergency,
        )
        decision = decide(inputs, self.params)
        guarded = self.safety.guard(decision, snap)
        self._cuts = self._cut(guarded)
        self.safety.remember(decision.memory)
        self.requests.decided()
        old = self.sessions
        self.sessions = decision.sessions
        self.memory = decision.memory
        t_decided = time.perf_counter()
        deadline = t_work + self.params.cycle_s * 0.9  # commands never spill into the next
        result = await apply_commands(self.hw, decision.commands, self.vehicles,
                                      self.hw.config.link.timeout_s,
                                      lambda: deadline - time.perf_counter())
        self.safety.sent(self.clock())  # a lowered limit's grace starts when it is out
        self.care.reenable(snap, back, self._emergency is not None)
        self.care.fault_policy(snap, now, self._emergency is not None)
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
        for device, msg in result.failures:  # folded: one line per device per interval
            self.device_errors.error(device, msg)
        self.device_errors.flush()
        self._after(old, decision.events, record, snap, now)
        return record

    def _book_poll(self, snap: HardwareSnapshot) -> None:
        """Unreachable devices into the folded log and the station summary line."""
        for ms in snap.modules:
            if not ms.available:
                self.device_errors.error(f"module {ms.index}", ms.reason or "unavailable")
        if not snap.matrix.available:
            self.device_errors.error("matrix", snap.matrix.reason or "unavailable")
        for mt in snap.meters:
            if not mt.available:
                self.device_errors.error(f"meter {mt.gun}", mt.reason or "unavailable")
        self.hw_summary.update(snap)

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
                if self.requests.fault(g, f"safety: {v}"):
                    self.log.error("persistent safety violation: gun faulted", gun=g,
                                   violation=str(v))

    def _after(self, old: tuple[GunSession, ...], events: list[SessionEvent],
               record: CycleRecord, snap: HardwareSnapshot, now: float) -> None:
        for g in self.recovery.to_clear(snap):
            if self.sessions[g].state is GunState.FAULTED and self._faults[g] is None:
                self.log.info("communication back with sane readings: gun fault cleared",
                              gun=g, fault=self.sessions[g].reason)
                self.requests.acknowledge(g)
        for ev in events:
            if (ev.kind == "state_changed" and ev.state is GunState.FAULTED
                    and self._faults[ev.gun] is None and not self._emergency
                    and self.recovery.fault_raised(ev.gun, ev.reason or "", now)):
                self.log.warning("gun fault while its devices did not answer: clears itself "
                                 "when they answer again", gun=ev.gun, reason=ev.reason)
            if ev.kind == "state_changed":
                self.log.info("gun state", gun=ev.gun, state=ev.state.value,
                              previous=ev.previous.value if ev.previous else None,
                              reason=ev.reason)
            self.requests.on_events((ev,))  # before the observers: they may answer at once
            self._emit(ev)
        for s, gr in zip(self.sessions, record.guns, strict=True):
            if s.state in ENERGY_STATES:
                self._emit(MeterSample(s.gun, record.t, gr))
        self._emit(CycleEvent(record))
