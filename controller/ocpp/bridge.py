"""Where an OCPP client meets the station, both versions.

:class:`StationView` is the station as the client's parts see it: attached or not, each
gun's last meter reading, the limits it writes from the charging profiles, the station's
own limits for a composite schedule. :class:`StationBridge` owns the observer subscription
and the authorizer hook: it keeps the readings, checks the sampling interval of every
transaction, ends the transactions a crash left open (orphans) and dispatches session
events, periodic and clock-aligned samples and the per-cycle work to the version's
:class:`Reporter`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol, cast

from controller.config import GunConfig
from controller.limits import STATION, Limit, LimitKey
from controller.ocpp.availability import Availability
from controller.ocpp.ports import Authorizer, StationPort
from controller.ocpp.smart_charging import Profiles
from controller.records import CycleRecord, GunRecord
from controller.session import SessionEvent
from controller.station import CycleEvent, MeterSample, StationEvent

#: Cycles a transaction left open by a crash waits for a meter reading of its gun before it
#: is ended with the last persisted register instead.
ORPHAN_WAIT_CYCLES = 20

LocalLimit = tuple[float, str, datetime | None, datetime | None]


class Sampled(Protocol):
    """An open transaction, as far as sampling goes."""

    last_sample_t: float


class OpenTransactions(Protocol):
    """The version's open transactions by gun (0-based)."""

    @property
    def open(self) -> Mapping[int, Sampled]: ...


class Reporter(Protocol):
    """What a version reports of the station's events (its transaction reporter)."""

    def on_session_event(self, ev: SessionEvent) -> None: ...

    def sample_interval(self) -> float:
        """Seconds between periodic samples of a transaction (0: off)."""

    def periodic_sample(self, g: int, rec: GunRecord) -> None: ...

    def aligned_interval(self) -> float:
        """Seconds of the clock-aligned interval (0: off)."""

    def aligned_sample(self) -> None: ...

    def end_orphan(self, g: int, rec: GunRecord | None) -> None:
        """End gun ``g``'s transaction left open by a crash (PowerLoss) with ``rec``'s
        register, or the last persisted one when None."""

    def after_cycle(self) -> None:
        """Anything else a cycle brings (2.0.1: the grid limit report)."""


class StationView:
    """The attached station (None before ``attach``), the guns' last readings and the
    limits the client writes and reads."""

    def __init__(self, guns: Sequence[GunConfig], max_w: float, profiles: Profiles,
                 txs: OpenTransactions, wall: Callable[[], datetime]) -> None:
        self.gun_cfg, self.max_w, self.profiles, self.txs = guns, max_w, profiles, txs
        self.guns = len(guns)
        self.wall = wall
        self.station: StationPort | None = None
        self.last: list[GunRecord | None] = [None] * self.guns

    @property
    def attached(self) -> StationPort:
        """The station this client observes; a backend request that needs it before
        ``attach`` is answered with an error, not run against nothing."""
        if self.station is None:
            raise RuntimeError("the OCPP client is not attached to a station yet")
        return self.station

    def busy(self, g: int) -> bool:
        """Gun ``g`` has a running transaction."""
        return g in self.txs.open

    def apply_limits(self) -> None:
        """The profiles' limits of now into the station's LimitBook."""
        if self.station is not None:
            self.profiles.apply(self.station.limits, self.station.clock(), self.wall())

    def nameplate_w(self, evse: int) -> float:
        """The power the EVSE / connector (0: the station) can deliver at most."""
        if evse == 0:
            return self.max_w
        g = self.gun_cfg[evse - 1]
        return float(min(self.max_w, g.cable_rating_a * g.max_voltage_v))

    def local_limits(self, evse: int, horizon_s: float = 86_400.0
                     ) -> tuple[LocalLimit, ...]:
        """The station's own limits for GetCompositeSchedule (K08: the composite is that of
        the active profiles *and* the local limits): the EVSE's cable rating (A), the rated
        power, and every other station limit of the LimitBook (the energy manager's grid
        limit while it lasts, then its fallback) — what the station will actually enforce.
        Not included: what the vehicle asks for (it is not the station's limit)."""
        out: list[LocalLimit] = [(self.max_w, "W", None, None)]
        if evse > 0:
            out.append((float(self.gun_cfg[evse - 1].cable_rating_a), "A", None, None))
        st = self.station
        if st is None:
            return tuple(out)
        now, wall = float(st.clock()), self.wall()

        def others(t: float) -> list[Limit]:
            return [lim for lim in st.limits.in_force(STATION, t)
                    if lim.key is not LimitKey.OCPP]

        marks = [now]  # the station's limits change only when one of them expires
        while len(marks) < 8:
            ends = [lim.expires_at for lim in others(marks[-1]) if lim.expires_at is not None
                    and marks[-1] < lim.expires_at <= now + horizon_s]
            if not ends:
                break
            marks.append(min(ends))
        for i, t in enumerate(marks):
            since = None if i == 0 else wall + timedelta(seconds=t - now)
            until = (wall + timedelta(seconds=marks[i + 1] - now)) if i + 1 < len(marks) \
                else None
            vals = [lim.value for lim in others(t)]
            if vals:
                out.append((min(vals), "W", since, until))
        return tuple(out)


class StationBridge:
    """The station observer of one client: never blocks (SQLite writes of a few rows at
    most); the version's reporter says what each event means on the wire."""

    def __init__(self, view: StationView, reporter: Reporter, availability: Availability,
                 authorize: Authorizer, notify: Callable[[], None]) -> None:
        self.view, self.reporter, self.availability = view, reporter, availability
        self.authorize, self.notify = authorize, notify
        self._unsubscribe: Callable[[], None] | None = None
        self._aligned_slot: float | None = None
        #: Guns whose transaction a crash left open (found at start). They are ended at the
        #: first cycle that reads the gun's meter: no energy has flowed since the modules'
        #: watchdogs switched off, so that register is the one of the moment of the crash.
        self.orphans: set[int] = set(view.txs.open)
        self._orphan_cycles = 0
        self._orphan_seq = -1

    def attach(self, station: StationPort) -> None:
        """Observe ``station`` and answer its authorization requests."""
        self.view.station = station
        self._unsubscribe = station.subscribe(self.on_event)
        station.authorizer = self.authorize
        for g in range(self.view.guns):
            self.availability.apply(g)

    def detach(self) -> None:
        """A restarted station must not report to us any more."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def end_orphans(self) -> None:
        """End every orphan with its last persisted register (the client closes)."""
        for g in sorted(self.orphans):
            self.reporter.end_orphan(g, None)
        self.orphans.clear()

    def on_event(self, ev: StationEvent) -> None:
        """The station observer."""
        if self.orphans:
            self._settle_orphans(ev)
        if ev.kind == "cycle":  # by kind: a cycle event may come without its record
            self._on_cycle(cast(CycleEvent, ev).record)
        elif ev.kind == "meter_sample":
            sample = cast(MeterSample, ev)
            self._on_sample(sample.gun, sample.t, sample.record)
        elif isinstance(ev, SessionEvent):
            self.reporter.on_session_event(ev)
            self.notify()
        # other station events (module_fault, ...) are not OCPP's: telemetry reports them

    def _on_sample(self, g: int, t: float, rec: GunRecord) -> None:
        self.view.last[g] = rec
        if math.isfinite(rec.voltage_v) and rec.voltage_v > 50.0:
            self.view.profiles.voltage[g] = rec.voltage_v  # W → A of the gun's profiles
        tx = self.view.txs.open.get(g)
        interval = self.reporter.sample_interval()
        if tx is None or interval <= 0:
            return
        if not math.isfinite(tx.last_sample_t):
            tx.last_sample_t = t
        elif t - tx.last_sample_t >= interval - 1e-9:
            tx.last_sample_t = t
            self.reporter.periodic_sample(g, rec)
            self.notify()

    def _on_cycle(self, record: CycleRecord | None) -> None:
        """Keep every gun's last meter reading: the station reports ``charging_started``
        before the first ``meter_sample``, so a transaction starts with the reading of the
        cycle before (one period old)."""
        for gr in record.guns if record is not None else ():
            if 0 <= gr.gun < self.view.guns:
                self.view.last[gr.gun] = gr
        self.view.apply_limits()
        interval = self.reporter.aligned_interval()
        if interval > 0:
            slot = math.floor(self.view.wall().timestamp() / interval)
            if self._aligned_slot is not None and slot != self._aligned_slot:
                self.reporter.aligned_sample()
                self.notify()
            self._aligned_slot = slot
        self.reporter.after_cycle()

    def _settle_orphans(self, ev: StationEvent) -> None:
        """End the crash's transactions with this cycle's reading of their meter (the
        station keeps the cycle's record before it tells its events); without a reading
        after :data:`ORPHAN_WAIT_CYCLES` cycles, or at once when a session event of the gun
        comes first, with the last persisted register."""
        station = self.view.station
        rec = station.last_record if station is not None else None
        if rec is None:
            return
        if rec.seq != self._orphan_seq:
            self._orphan_seq = rec.seq
            self._orphan_cycles += 1
        ev_gun = ev.gun if isinstance(ev, SessionEvent | MeterSample) else None
        for gr in rec.guns:
            if gr.gun not in self.orphans:
                continue
            if math.isfinite(gr.energy_wh) and gr.energy_wh > 0.0:
                reading: GunRecord | None = gr
            elif self._orphan_cycles > ORPHAN_WAIT_CYCLES or ev_gun == gr.gun:
                reading = None
            else:
                continue
            self.orphans.discard(gr.gun)
            self.reporter.end_orphan(gr.gun, reading)
            self.notify()
