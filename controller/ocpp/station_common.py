"""The station observer both OCPP versions share: meter readings, sampling intervals, limits.

:class:`StationEvents` takes the station's events: every cycle keeps each gun's last meter
reading, writes the charging-profile limits into the LimitBook and finds clock-aligned
boundaries; every meter sample of a charging gun is checked against the sampling interval of
its transaction. What is reported (TransactionEvent or MeterValues) and the session events
are the version's, through the hook methods at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from controller.limits import STATION
from controller.ocpp.ports import StationPort
from controller.ocpp.smart_charging import SOURCE, Profiles
from controller.records import GunRecord
from controller.session import SessionEvent

#: Cycles a transaction left open by a crash waits for a meter reading of its gun before it
#: is ended with the last persisted register instead.
ORPHAN_WAIT_CYCLES = 20
#: A Reset asks the station to stop its transactions and waits this long for the station
#: to report their ends (then ends the rest itself).
STATION_END_WAIT_S = 5.0


class StationEvents:
    """Mixin of a version's station side (needs ``tx.open`` with ``last_sample_t``)."""

    profiles: Profiles
    station: StationPort | None
    tx: Any
    guns: int
    max_w: float
    gun_cfg: Any
    last: list[GunRecord | None]
    wall: Callable[[], datetime]
    _aligned_slot: float | None
    #: Guns whose transaction a crash left open (found at start). They are ended at the
    #: first cycle that reads the gun's meter: no energy has flowed since the modules'
    #: watchdogs switched off, so that register is the one of the moment of the crash.
    orphans: set[int]
    _orphan_cycles: int = 0
    _orphan_seq: int = -1

    # The connection side's methods (``common.Link``, first in each service's MRO).
    def notify(self) -> None: ...
    def put(self, action: str, payload: dict[str, Any]) -> None: ...
    def apply_availability(self, g: int) -> None: ...
    def spawn(self, coro: Any, *, connection: bool = False) -> Any: ...
    def _send_status(self, g: int) -> None: ...
    def security_event(self, kind: str, info: str = "") -> None: ...
    async def wait_connected(self, timeout: float = 10.0) -> None: ...
    def _pulse(self) -> None: ...
    async def reset_transactions(self, why: str, wait: bool,
                                 end_here: Callable[[int, str], None]) -> None: ...
    async def restart_after_reset(self) -> None: ...
    async def until(self, done: Callable[[], bool], timeout: float) -> bool:
        raise NotImplementedError

    @property
    def attached(self) -> StationPort:
        """The station this client observes; a backend request that needs it before
        ``attach`` is answered with an error, not run against nothing."""
        if self.station is None:
            raise RuntimeError("the OCPP client is not attached to a station yet")
        return self.station

    def on_event(self, ev: Any) -> None:
        """The station observer: never blocks (SQLite writes of a few rows at most)."""
        if self.orphans:
            self._settle_orphans(ev)
        if ev.kind == "cycle":
            self._on_cycle(ev.record)
        elif ev.kind == "meter_sample":
            self._on_sample(ev.gun, ev.t, ev.record)
        elif isinstance(ev, SessionEvent):
            self.on_session_event(ev)
        # other station events (module_fault, ...) are not OCPP's: telemetry reports them
            self.notify()

    def _on_sample(self, g: int, t: float, rec: GunRecord) -> None:
        self.last[g] = rec
        if math.isfinite(rec.voltage_v) and rec.voltage_v > 50.0:
            self.profiles.voltage[g] = rec.voltage_v  # W → A of the gun's profiles
        tx = self.tx.open.get(g)
        interval = self.sample_interval()
        if tx is None or interval <= 0:
            return
        if not math.isfinite(tx.last_sample_t):
            tx.last_sample_t = t
        elif t - tx.last_sample_t >= interval - 1e-9:
            tx.last_sample_t = t
            self.periodic_sample(g, rec)
            self.notify()

    def _on_cycle(self, record: Any) -> None:
        """Keep every gun's last meter reading: the station reports ``charging_started``
        before the first ``meter_sample``, so a transaction starts with the reading of the
        cycle before (one period old)."""
        for gr in getattr(record, "guns", None) or ():
            if 0 <= gr.gun < self.guns:
                self.last[gr.gun] = gr
        self.apply_limits()
        interval = self.aligned_interval()
        if interval > 0:
            slot = math.floor(self.wall().timestamp() / interval)
            if self._aligned_slot is not None and slot != self._aligned_slot:
                self.aligned_sample()
                self.notify()
            self._aligned_slot = slot
        self.after_cycle()

    def _settle_orphans(self, ev: Any) -> None:
        """End the crash's transactions with this cycle's reading of their meter (the
        station keeps the cycle's record before it tells its events); without a reading
        after ORPHAN_WAIT_CYCLES, or at once when a session event of the gun comes first,
        with the last persisted register."""
        rec = getattr(self.station, "last_record", None) if self.station is not None else None
        if rec is None:
            return
        if rec.seq != self._orphan_seq:
            self._orphan_seq = rec.seq
            self._orphan_cycles += 1
        for gr in rec.guns:
            if gr.gun not in self.orphans:
                continue
            if math.isfinite(gr.energy_wh) and gr.energy_wh > 0.0:
                reading: GunRecord | None = gr
            elif self._orphan_cycles > ORPHAN_WAIT_CYCLES or getattr(ev, "gun", None) == gr.gun:
                reading = None
            else:
                continue
            self.orphans.discard(gr.gun)
            self.end_orphan(gr.gun, reading)
            self.notify()

    def apply_limits(self) -> None:
        if self.station is not None:
            self.profiles.apply(self.station.limits, self.station.clock(), self.wall())

    def nameplate_w(self, evse: int) -> float:
        """The power the EVSE / connector (0: the station) can deliver at most."""
        if evse == 0:
            return self.max_w
        g = self.gun_cfg[evse - 1]
        return float(min(self.max_w, g.cable_rating_a * g.max_voltage_v))

    def local_limits(self, evse: int, horizon_s: float = 86_400.0
                     ) -> tuple[tuple[float, str, datetime | None, datetime | None], ...]:
        """The station's own limits for GetCompositeSchedule (K08: the composite is that of
        the active profiles *and* the local limits): the EVSE's cable rating (A), the rated
        power, and every other station limit of the LimitBook (the energy manager's grid
        limit while it lasts, then its fallback) — what the station will actually enforce.
        Not included: what the vehicle asks for (it is not the station's limit)."""
        out: list[tuple[float, str, datetime | None, datetime | None]] = [
            (self.max_w, "W", None, None)]
        if evse > 0:
            out.append((float(self.gun_cfg[evse - 1].cable_rating_a), "A", None, None))
        st = self.station
        if st is None:
            return tuple(out)
        now, wall = float(st.clock()), self.wall()

        def others(t: float) -> list[Any]:
            return [lim for lim in st.limits.in_force(STATION, t) if lim.source != SOURCE]

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

    # ------------------------------------------------------------------ hooks (per version)
    def on_session_event(self, ev: Any) -> None:
        raise NotImplementedError

    def sample_interval(self) -> float:
        """Seconds between periodic samples of a transaction (0: off)."""
        raise NotImplementedError

    def periodic_sample(self, g: int, rec: GunRecord) -> None:
        raise NotImplementedError

    def aligned_interval(self) -> float:
        """Seconds of the clock-aligned interval (0: off)."""
        raise NotImplementedError

    def aligned_sample(self) -> None:
        raise NotImplementedError

    def end_orphan(self, g: int, rec: GunRecord | None) -> None:
        """End gun ``g``'s transaction left open by a crash (PowerLoss) with ``rec``'s
        register, or the last persisted one when None."""
        raise NotImplementedError

    def after_cycle(self) -> None:
        """Anything else a cycle brings (2.0.1: the grid limit report)."""
