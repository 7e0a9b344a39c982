"""The station-facing half of :class:`~controller.ocpp.service.OcppService`: station events
→ TransactionEvents and StatusNotifications, authorization (C01, offline rules, cache),
remote start/stop, triggers, reset, reports, limits for the control cycle."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ocpp.v201 import call

from controller.limits import STATION
from controller.ocpp.client import OcppClient
from controller.ocpp.common import AuthCache, decide_authorization
from controller.ocpp.device_model import DeviceModel
from controller.ocpp.ports import StationPort
from controller.ocpp.queue import MessageQueue
from controller.ocpp.remote_start import RemoteStarts
from controller.ocpp.smart_charging import Profiles
from controller.ocpp.station_common import StationEvents
from controller.ocpp.transactions import Transactions, meter_value
from controller.ocpp.wire import iso
from controller.records import GunRecord
from controller.session import ENERGY_STATES, GunState

_STATE = {GunState.CHARGING: "Charging", GunState.SUSPENDED_EV: "SuspendedEV",
          GunState.SUSPENDED_EVSE: "SuspendedEVSE"}
_TIMING = ("PowerPathClosed", "EnergyTransfer")


class StationSide(StationEvents):
    db: sqlite3.Connection
    dm: DeviceModel
    queue: MessageQueue
    tx: Transactions
    profiles: Profiles
    auth_cache: AuthCache
    station: StationPort | None
    cp: OcppClient | None
    online: bool
    guns: int
    max_w: float
    gun_cfg: Any
    last: list[GunRecord | None]
    remote: RemoteStarts[tuple[dict[str, Any], int]]
    reset_pending: bool
    boot_status: str | None
    boot_reason: str
    log: Any
    wall: Callable[[], datetime]
    _last_grid: float | None
    _aligned_slot: float | None
    _ws: Any

    on_reset: Callable[[], None] | None
    async def drain(self, timeout: float = 5.0) -> bool:
        raise NotImplementedError
    async def end_connection(self) -> None: ...

    def set_boot_reason(self, reason: str | None) -> None: ...
    def _m(self, name: str) -> list[str]:
        raise NotImplementedError
    async def boot_once(self, cp: OcppClient) -> int:
        raise NotImplementedError
    async def _status(self, cp: OcppClient, g: int) -> None: ...

    # ------------------------------------------------------------------ station events
    def on_session_event(self, ev: Any) -> None:
        """Session events → TransactionEvents (per TxStartPoint / TxStopPoint) and
        StatusNotifications."""
        kind = ev.kind
        g = ev.gun
        start = self.dm.members("TxCtrlr", "TxStartPoint")
        stop = self.dm.members("TxCtrlr", "TxStopPoint")
        rec = self.last[g]
        begin = self._m("TxStartedMeasurands")
        if kind == "state_changed":
            if ev.previous is None or ev.state.ocpp201 != ev.previous.ocpp201:
                self._send_status(g)
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
                self._end(g, ev.reason, getattr(ev, "energy_wh", None))
            else:
                self.tx.update(g, "ChargingStateChanged", state="EVConnected", rec=rec,
                               measurands=begin, context="Sample.Periodic")

    def _kick_sender(self) -> None:
        self.notify()

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
        tx = self.tx.start(g, trigger if rid is None else "RemoteStart", state, self.last[g],
                           self._m("TxStartedMeasurands"), id_token=token, remote_start_id=rid,
                           token_type=kind)
        tx.last_sample_t = self.attached.clock()  # sampling interval counts from the start
        self.profiles.tx[g + 1] = (tx.tx_id, self.wall().replace(microsecond=0))
        pending = self.remote.take_profile(g)
        if pending is not None:
            pending = {**pending, "transaction_id": tx.tx_id}
            if self.profiles.validate(g + 1, pending) is None:
                self.profiles.install(g + 1, pending)
                self.apply_limits()

    def _end(self, g: int, reason: str | None, session_wh: float | None = None) -> None:
        self.tx.end(g, reason, self.last[g], self._m("TxEndedMeasurands"),
                    session_wh=session_wh)
        self._pulse()  # a Reset may be waiting for the station to end its transactions
        self.profiles.tx_ended(g + 1)
        self.apply_limits()
        self.apply_availability(g)  # a Scheduled Inoperative takes effect now
        if self.reset_pending and not self.tx.open:
            self.reset_pending = False
            self.spawn(self.reset(immediate=False))

    def end_orphan(self, g: int, rec: GunRecord | None) -> None:
        self.tx.end(g, "PowerLoss", rec, self._m("TxEndedMeasurands"))
        self.profiles.tx_ended(g + 1)
        self.apply_limits()

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
                self.tx.update(g, "MeterValueClock", rec=self.last[g], measurands=measurands,
                               context="Sample.Clock")
            elif self.last[g] is not None:
                mv = meter_value(self.last[g], measurands, "Sample.Clock", iso(self.wall()))
                if mv:
                    self.put("MeterValues", {"evseId": g + 1, "meterValue": mv})
        self._kick_sender()

    def after_cycle(self) -> None:
        self._grid_limit()

    def _grid_limit(self) -> None:
        """K12: a grid limit from the energy manager that changes the station's capability."""
        if self.station is None:
            return
        lim = self.station.limits.get(STATION, "grid")
        active = lim is not None and lim.active(self.station.clock())
        value = min(lim.value, self.max_w) if lim is not None and active else None
        old = self._last_grid
        sig = self.dm.num("SmartChargingCtrlr", "LimitChangeSignificance")
        changed = (old is None) != (value is None) or (
            value is not None and old is not None and abs(value - old) > sig * self.max_w)
        if not changed:
            return
        self._last_grid = value
        if value is None and old is None:
            return
        self.put("NotifyChargingLimit", {"chargingLimit": {"chargingLimitSource": "EMS",
                                                           "isGridCritical": True}})

    # ------------------------------------------------------------------ authorization (C01)
    async def authorize(self, g: int, token: str | None) -> bool:
        """The station's authorizer: remote start, local pre-authorization, Authorize,
        then the offline rules (cache, OfflineTxForUnknownIdEnabled)."""
        waiting = self.remote.take_waiting(g, self.wall().timestamp())
        if waiting is not None:
            id_token = waiting.token[0]
            if (self.dm.flag("AuthCtrlr", "AuthorizeRemoteStart")
                    and not await self.check_token(id_token)):
                self.log.warning("remote start refused: idToken not authorized", gun=g)
                return False
            self.remote.accept(g, waiting.token, waiting.profile)
            return True
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
        await self.wait_connected()
        cp = self.cp
        ask = None
        if cp is not None and self.online:
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
        guns = [evse_id - 1] if evse_id is not None else sorted(
            range(self.guns), key=lambda x: self.attached.sessions[x].state is not
            GunState.PREPARING)
        for g in guns:
            if not 0 <= g < self.guns:
                return "Rejected", f"unknown EVSE {evse_id}", None
            state = self.attached.sessions[g].state
            if g in self.tx.open and self.tx.open[g].id_token:
                continue
            if state is GunState.PREPARING:
                if self.dm.flag("AuthCtrlr", "AuthorizeRemoteStart"):  # F01.FR.01
                    self.spawn(self._authorize_remote(g, id_token, remote_id, profile))
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
        self.attached.set_authorization(g, True)

    async def _authorize_remote(self, g: int, id_token: dict[str, Any], remote_id: int,
                                profile: dict[str, Any] | None) -> None:
        """AuthorizeRemoteStart: the backend's idToken is authorized like a local one first
        (cache, Authorize); refused, the gun is not started."""
        if await self.check_token(id_token):
            self._remote_accepted(g, id_token, remote_id, profile)
        else:
            self.log.warning("remote start refused: idToken not authorized", gun=g)

    async def triggered(self, what: str, g: int | None) -> None:
        cp = self.cp
        if cp is None:
            return
        guns = [g] if g is not None else list(range(self.guns))
        if what == "Heartbeat":
            await cp.call(call.Heartbeat(), suppress=False)
        elif what == "StatusNotification":
            for x in guns:
                await self._status(cp, x)
        elif what == "BootNotification":
            self.boot_reason = "Triggered"
            await self.boot_once(cp)
        elif what == "TransactionEvent":
            for x in guns:
                self.tx.update(x, "Trigger", rec=self.last[x],
                               measurands=self._m("TxUpdatedMeasurands"))
            self._kick_sender()
        elif what == "MeterValues":
            for x in guns:
                if self.last[x] is None:
                    continue
                mv = meter_value(self.last[x], self._m("TxUpdatedMeasurands"), "Trigger",
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
        await self.reset_transactions("ImmediateReset", True, self._end)
        self.security_event("ResetOrReboot", "Reset " + ("Immediate" if immediate else "OnIdle"))
        self.boot_reason = "RemoteReset"
        self.set_boot_reason("RemoteReset")
        await self.restart_after_reset()

    async def send_report(self, request_id: int, base: str) -> None:
        """B07: NotifyReport in parts of ItemsPerMessage (tbc on all but the last)."""
        cp = self.cp
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
        cp = self.cp
        found = self.find_profiles(crit, evse)
        if cp is None or not found:
            return
        evses = sorted({e for e, _ in found})
        for i, e in enumerate(evses):
            await cp.call(call.ReportChargingProfiles(
                request_id=request_id, charging_limit_source="CSO", evse_id=e,
                charging_profile=[p for x, p in found if x == e], tbc=i < len(evses) - 1),
                suppress=False)

