"""The OCPP 2.0.1 transaction reporter and the station-facing answers to the backend.

:class:`Reporter201` is the :class:`~controller.ocpp.bridge.Reporter` of 2.0.1: session
events → TransactionEvents (per TxStartPoint / TxStopPoint) and StatusNotifications,
periodic and clock-aligned samples, the K12 grid-limit report; and the work behind the
handlers: authorization (C01, offline rules, cache), remote start (F01/F02), triggers,
Reset (B11/B12), reports. Every collaborator comes through the constructor.
"""

from __future__ import annotations

from typing import Any

from ocpp.v201 import call

from controller.limits import STATION, LimitKey
from controller.ocpp.auth import AuthCache, claim_remote_start, decide_authorization
from controller.ocpp.availability import Availability
from controller.ocpp.bridge import StationView
from controller.ocpp.link import Uplink
from controller.ocpp.meter import meter_value
from controller.ocpp.outbox import Outbox
from controller.ocpp.ports import Log
from controller.ocpp.remote_start import RemoteStarts, candidates
from controller.ocpp.reset import Resets
from controller.ocpp.smart_charging import Profiles
from controller.ocpp.tasks import Progress, Tasks
from controller.ocpp.v201.adapter import Adapter201, BackendClock
from controller.ocpp.v201.device_model import DeviceModel
from controller.ocpp.v201.transactions import Transactions
from controller.ocpp.wire import iso
from controller.records import GunRecord
from controller.session import ENERGY_STATES, GunState, SessionEvent

_STATE = {GunState.CHARGING: "Charging", GunState.SUSPENDED_EV: "SuspendedEV",
          GunState.SUSPENDED_EVSE: "SuspendedEVSE"}
_TIMING = ("PowerPathClosed", "EnergyTransfer")
#: (idToken, remoteStartId) of a RequestStartTransaction (F01/F02).
RemoteToken = tuple[dict[str, Any], int]


class Reporter201:
    """The 2.0.1 side of the station's events and of the backend's requests."""

    def __init__(self, view: StationView, dm: DeviceModel, tx: Transactions,
                 profiles: Profiles, auth_cache: AuthCache, availability: Availability,
                 link: Uplink, adapter: Adapter201, outbox: Outbox, tasks: Tasks,
                 progress: Progress, resets: Resets, clock: BackendClock, log: Log) -> None:
        self.view, self.dm, self.tx, self.profiles = view, dm, tx, profiles
        self.auth_cache, self.availability, self.link, self.adapter = (
            auth_cache, availability, link, adapter)
        self.outbox, self.tasks, self.progress, self.resets = outbox, tasks, progress, resets
        self.wall, self.log = clock, log
        self.guns = view.guns
        #: (idToken, remoteStartId) of RequestStartTransaction per gun (F01/F02).
        self.remote: RemoteStarts[RemoteToken] = RemoteStarts(log)
        self._last_grid: float | None = None

    def _m(self, name: str) -> list[str]:
        ctrl = "AlignedDataCtrlr" if name == "Measurands" else "SampledDataCtrlr"
        return self.dm.members(ctrl, name)

    # ------------------------------------------------------------------ station events
    def on_session_event(self, ev: SessionEvent) -> None:
        """Session events → TransactionEvents (per TxStartPoint / TxStopPoint) and
        StatusNotifications."""
        kind = ev.kind
        g = ev.gun
        start = self.dm.members("TxCtrlr", "TxStartPoint")
        stop = self.dm.members("TxCtrlr", "TxStopPoint")
        rec = self.view.last[g]
        begin = self._m("TxStartedMeasurands")
        if kind == "state_changed":
            if ev.previous is None or ev.state.ocpp201 != ev.previous.ocpp201:
                self.link.send_status(g)
            if ev.state is GunState.PREPARING and "EVConnected" in start and g not in self.tx.open:
                self._start(g, "CablePluggedIn", "EVConnected", None)
            elif ev.state in _STATE and ev.previous in ENERGY_STATES:
                self.tx.update(g, "ChargingStateChanged", state=_STATE[ev.state])
            elif (ev.state is GunState.FINISHING and g in self.tx.open
                  and self.tx.open[g].charging_state != "EVConnected"):
                self.tx.update(g, "ChargingStateChanged", state="EVConnected")
            elif ev.state is GunState.AVAILABLE and g not in self.tx.open:
                self.remote.forget(g)  # a remote start for a session that never began
            elif ev.state in (GunState.AVAILABLE, GunState.FAULTED) and g in self.tx.open:
                reason = ev.reason if ev.state is GunState.AVAILABLE else "Other"
                self._end(g, reason if reason in ("EVDisconnected", "Local", "Remote",
                                                  "StoppedByEV", "Timeout", "DeAuthorized")
                          else ("EVDisconnected" if ev.state is GunState.AVAILABLE else reason))
        elif kind == "authorized":
            if g in self.tx.open:
                token, kind_, rid = self._token(g, ev.id_token)
                self.tx.update(g, "Authorized" if rid is None else "RemoteStart",
                               id_token=token, token_type=kind_, remote_start_id=rid)
            elif "Authorized" in start:
                self._start(g, "RemoteStart" if self.remote.won(g) else "Authorized",
                            "EVConnected", ev.id_token)
        elif kind == "charging_started":
            if g not in self.tx.open:
                self._start(g, "ChargingStateChanged", "Charging", ev.id_token)
            else:
                self.tx.update(g, "ChargingStateChanged", state="Charging")
        elif kind == "charging_stopped":
            if any(p in stop for p in _TIMING) or "Authorized" in stop:
                self._end(g, ev.reason, ev.energy_wh)
            else:
                self.tx.update(g, "ChargingStateChanged", state="EVConnected", rec=rec,
                               measurands=begin, context="Sample.Periodic")

    def _token(self, g: int, token: str | None) -> tuple[str | None, str, int | None]:
        """The idToken, its type and the remoteStartId a transaction of gun ``g`` carries:
        the remote start's when there is one (used once), else the station's (the truck's,
        type Central, no remoteStartId)."""
        remote = self.remote.take_token(g)
        if remote is not None:
            id_token, rid = remote
            return str(id_token["id_token"]), str(id_token.get("type", "Central")), rid
        return token, "Central", None

    def _start(self, g: int, trigger: str, state: str, token: str | None) -> None:
        token, kind, rid = self._token(g, token)
        tx = self.tx.start(g, trigger if rid is None else "RemoteStart", state, self.view.last[g],
                           self._m("TxStartedMeasurands"), id_token=token, remote_start_id=rid,
                           token_type=kind)
        tx.last_sample_t = self.view.attached.clock()  # sampling interval counts from the start
        self.profiles.tx[g + 1] = (tx.tx_id, self.wall().replace(microsecond=0))
        pending = self.remote.take_profile(g)
        if pending is not None:
            pending = {**pending, "transaction_id": tx.tx_id}
            if self.profiles.validate(g + 1, pending) is None:
                self.profiles.install(g + 1, pending)
                self.view.apply_limits()

    def _end(self, g: int, reason: str | None, session_wh: float | None = None) -> None:
        self.tx.end(g, reason, self.view.last[g], self._m("TxEndedMeasurands"),
                    session_wh=session_wh)
        self.progress.pulse()  # a Reset may be waiting for the station to end its transactions
        self.profiles.tx_ended(g + 1)
        self.view.apply_limits()
        self.availability.apply(g)  # a Scheduled Inoperative takes effect now
        if self.resets.pending and not self.tx.open:
            self.resets.pending = False
            self.tasks.spawn(self.reset(immediate=False))

    def end_orphan(self, g: int, rec: GunRecord | None) -> None:
        self.tx.end(g, "PowerLoss", rec, self._m("TxEndedMeasurands"))
        self.profiles.tx_ended(g + 1)
        self.view.apply_limits()

    def sample_interval(self) -> float:
        if not self.dm.flag("SampledDataCtrlr", "Enabled"):
            return 0.0
        return self.dm.num("SampledDataCtrlr", "TxUpdatedInterval")

    def periodic_sample(self, g: int, rec: GunRecord) -> None:
        self.tx.update(g, "MeterValuePeriodic", rec=rec,
                       measurands=self._m("TxUpdatedMeasurands"))

    def aligned_interval(self) -> float:
        if not self.dm.flag("AlignedDataCtrlr", "Enabled"):
            return 0.0
        return self.dm.num("AlignedDataCtrlr", "Interval")

    def aligned_sample(self) -> None:
        self._aligned()

    def _aligned(self) -> None:
        """J01: the clock-aligned reading of every EVSE — in a TransactionEvent for a gun
        with a transaction, in MeterValues for an idle one (queued: the readings of an
        offline period are delivered later, the first to go when the queue is full).
        SendDuringIdle: no clock-aligned values at all while a transaction is ongoing."""
        measurands = self._m("Measurands")
        if self.tx.open and self.dm.flag("AlignedDataCtrlr", "SendDuringIdle"):
            return
        for g in range(self.guns):
            if g in self.tx.open:
                self.tx.update(g, "MeterValueClock", rec=self.view.last[g], measurands=measurands,
                               context="Sample.Clock")
            elif self.view.last[g] is not None:
                mv = meter_value(self.view.last[g], measurands, "Sample.Clock", iso(self.wall()))
                if mv:
                    self.outbox.put("MeterValues", {"evseId": g + 1, "meterValue": mv})
        self.outbox.notify()

    def after_cycle(self) -> None:
        self._grid_limit()

    def _grid_limit(self) -> None:
        """K12: a grid limit from the energy manager that changes the station's capability."""
        if self.view.station is None:
            return
        lim = self.view.station.limits.get(STATION, LimitKey.GRID)
        active = lim is not None and lim.active(self.view.station.clock())
        value = min(lim.value, self.view.max_w) if lim is not None and active else None
        old = self._last_grid
        sig = self.dm.num("SmartChargingCtrlr", "LimitChangeSignificance")
        changed = (old is None) != (value is None) or (
            value is not None and old is not None and abs(value - old) > sig * self.view.max_w)
        if not changed:
            return
        self._last_grid = value
        if value is None and old is None:
            return
        self.outbox.put("NotifyChargingLimit", {"chargingLimit": {"chargingLimitSource": "EMS",
                                                           "isGridCritical": True}})

    # ------------------------------------------------------------------ authorization (C01)
    async def authorize(self, g: int, token: str | None) -> bool:
        """The station's authorizer: remote start, local pre-authorization, Authorize,
        then the offline rules (cache, OfflineTxForUnknownIdEnabled)."""
        check = ((lambda t: self.check_token(t[0]))
                 if self.dm.flag("AuthCtrlr", "AuthorizeRemoteStart") else None)
        claimed = await claim_remote_start(
            self.remote, g, self.wall().timestamp(), check,
            lambda w: self.remote.accept(g, w.token, w.profile), self.log)
        if claimed is not None:
            return claimed
        if not token:
            return False
        ok = await self.check_token({"id_token": token, "type": "Central"})
        if not ok and self.remote.won(g):  # a remote start came while we asked: it wins
            return True
        return ok

    async def check_token(self, id_token: dict[str, Any]) -> bool:
        """C01 for one idToken: the cache with LocalPreAuthorize, Authorize at the backend,
        then the offline rules (cache, OfflineTxForUnknownIdEnabled)."""
        token = str(id_token["id_token"])
        await self.link.wait_connected()
        cp = self.link.cp
        ask = None
        if cp is not None and self.link.online:
            async def ask() -> str:
                r = await cp.call(call.Authorize(id_token={
                    "id_token": token, "type": str(id_token.get("type", "Central"))}),
                    suppress=False)
                status = str(r.id_token_info["status"])
                self.auth_cache.put(token, status)
                return status
        return await decide_authorization(
            self.auth_cache.get(token), self.dm.flag("AuthCtrlr", "LocalPreAuthorize"), ask,
            self.dm.flag("AuthCtrlr", "LocalAuthorizeOffline"),
            self.dm.flag("AuthCtrlr", "OfflineTxForUnknownIdEnabled"), self.log)

    # ------------------------------------------------------------------ backend requests
    def remote_start(self, id_token: dict[str, Any], remote_id: int, evse_id: int | None,
                     profile: dict[str, Any] | None) -> tuple[str, str, str | None]:
        """F01/F02 (and K05): (status, reason if rejected, running transactionId)."""
        if profile is not None and profile.get("charging_profile_purpose") != "TxProfile":
            return "Rejected", "chargingProfile must be a TxProfile", None
        guns = candidates(self.view.attached, self.guns,
                          None if evse_id is None else evse_id - 1)
        for g in guns:
            if not 0 <= g < self.guns:
                return "Rejected", f"unknown EVSE {evse_id}", None
            state = self.view.attached.sessions[g].state
            if g in self.tx.open and self.tx.open[g].id_token:
                continue
            if state is GunState.PREPARING:
                if self.dm.flag("AuthCtrlr", "AuthorizeRemoteStart"):  # F01.FR.01
                    self.tasks.spawn(self._authorize_remote(g, id_token, remote_id, profile))
                else:
                    self._remote_accepted(g, id_token, remote_id, profile)
            elif state is GunState.AVAILABLE:
                self.remote.wait(g, (dict(id_token), remote_id), self.wall().timestamp()
                                 + self.dm.num("TxCtrlr", "EVConnectionTimeOut"), profile)
            else:
                continue
            tx = self.tx.open.get(g)
            return "Accepted", "", tx.tx_id if tx else None
        return "Rejected", "no EVSE free for a remote start", None

    def _remote_accepted(self, g: int, id_token: dict[str, Any], remote_id: int,
                         profile: dict[str, Any] | None) -> None:
        """A remote start for the waiting gun ``g``: authorized with the backend's token."""
        self.remote.accept(g, (dict(id_token), remote_id), profile)
        self.view.attached.set_authorization(g, True)

    async def _authorize_remote(self, g: int, id_token: dict[str, Any], remote_id: int,
                                profile: dict[str, Any] | None) -> None:
        """AuthorizeRemoteStart: the backend's idToken is authorized like a local one first
        (cache, Authorize); refused, the gun is not started."""
        if await self.check_token(id_token):
            self._remote_accepted(g, id_token, remote_id, profile)
        else:
            self.log.warning("remote start refused: idToken not authorized", gun=g)

    async def triggered(self, what: str, g: int | None) -> None:
        cp = self.link.cp
        if cp is None:
            return
        guns = [g] if g is not None else list(range(self.guns))
        if what == "Heartbeat":
            await cp.call(call.Heartbeat(), suppress=False)
        elif what == "StatusNotification":
            for x in guns:
                await self.adapter.status(cp, x)
        elif what == "BootNotification":
            self.adapter.boot_reason = "Triggered"
            await self.link.boot_once(cp)
        elif what == "TransactionEvent":
            for x in guns:
                self.tx.update(x, "Trigger", rec=self.view.last[x],
                               measurands=self._m("TxUpdatedMeasurands"))
            self.outbox.notify()
        elif what == "MeterValues":
            for x in guns:
                if self.view.last[x] is None:
                    continue
                mv = meter_value(self.view.last[x], self._m("TxUpdatedMeasurands"), "Trigger",
                                 iso(self.wall()), energy_wh=0.0)
                if mv:
                    await cp.call(call.MeterValues(evse_id=x + 1, meter_value=mv),
                                  suppress=False)

    async def reset(self, immediate: bool) -> None:
        """B11/B12: end the transactions (ImmediateReset), queue ResetOrReboot, persist the
        boot reason RemoteReset, deliver the queue and wait for the answers (at most
        DRAIN_TIMEOUT_S: no Ended is sent twice), then hand the restart to ``on_reset`` (the
        station and its services restart); without an owner only the OCPP connection
        restarts (closed with a close frame, reconnected at once)."""
        await self.resets.end_transactions("ImmediateReset", True, self._end)
        self.outbox.security_event("ResetOrReboot",
                                   "Reset " + ("Immediate" if immediate else "OnIdle"))
        self.adapter.boot_reason = "RemoteReset"
        self.adapter.set_boot_reason("RemoteReset")
        await self.resets.restart()

    async def send_report(self, request_id: int, base: str) -> None:
        """B07: NotifyReport in parts of ItemsPerMessage (tbc on all but the last)."""
        cp = self.link.cp
        if cp is None:
            return
        data = self.dm.report(base)
        n = int(self.dm.num("DeviceDataCtrlr", "ItemsPerMessage", "GetReport"))
        parts = [data[i:i + n] for i in range(0, len(data), n)] or [[]]
        for seq, part in enumerate(parts):
            await cp.call(call.NotifyReport(
                request_id=request_id, generated_at=iso(self.wall()), seq_no=seq,
                report_data=part, tbc=seq < len(parts) - 1), suppress=False)

    def find_profiles(self, crit: dict[str, Any], evse: int | None) -> list[tuple[int, dict[
            str, Any]]]:
        ids = crit.get("charging_profile_id")
        out = []
        for pid, (e, p) in sorted(self.profiles.items.items()):
            if evse is not None and e != evse:
                continue
            if ids and pid not in ids:
                continue
            if crit.get("charging_profile_purpose") not in (None, p["charging_profile_purpose"]):
                continue
            if crit.get("stack_level") not in (None, p["stack_level"]):
                continue
            if crit.get("charging_limit_source") and "CSO" not in crit["charging_limit_source"]:
                continue
            out.append((e, p))
        return out

    async def report_profiles(self, request_id: int, crit: dict[str, Any],
                              evse: int | None) -> None:
        cp = self.link.cp
        found = self.find_profiles(crit, evse)
        if cp is None or not found:
            return
        evses = sorted({e for e, _ in found})
        for i, e in enumerate(evses):
            await cp.call(call.ReportChargingProfiles(
                request_id=request_id, charging_limit_source="CSO", evse_id=e,
                charging_profile=[p for x, p in found if x == e], tbc=i < len(evses) - 1),
                suppress=False)

