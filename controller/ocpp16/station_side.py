"""The station-facing half of :class:`~controller.ocpp16.service.Ocpp16Service`: station
events → StartTransaction / MeterValues / StopTransaction / StatusNotification, authorization
(offline rules, cache), remote start, triggers, reset and the limits of the control cycle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from ocpp.v16 import call

from controller.ocpp.common import AuthCache, decide_authorization
from controller.ocpp.ports import StationPort
from controller.ocpp.remote_start import RemoteStarts
from controller.ocpp.smart_charging import Profiles
from controller.ocpp.station_common import StationEvents
from controller.ocpp.wire import iso
from controller.ocpp16 import smart16
from controller.ocpp16.config_keys import ConfigKeys
from controller.ocpp16.transactions import Transactions16, meter16
from controller.records import GunRecord
from controller.session import GunState

#: idTag of a transaction nobody authorized (free charging): 1.6 requires one.
FREE_ID_TAG = "FreeCharging"
#: Words of a fault reason → ChargePointErrorCode (first match wins).
_ERRORS = (("current", "OverCurrentFailure"), ("under", "UnderVoltage"),
           ("voltage", "OverVoltage"), ("temperature", "HighTemperature"),
           ("meter", "PowerMeterFailure"), ("contactor", "PowerSwitchFailure"),
           ("module", "PowerSwitchFailure"), ("isolation", "GroundFailure"),
           ("vehicle", "EVCommunicationError"), ("safety", "InternalError"))


def error_code(state: GunState, reason: str | None) -> str:
    if state is not GunState.FAULTED:
        return "NoError"
    text = (reason or "").lower()
    return next((code for word, code in _ERRORS if word in text), "OtherError")


class StationSide16(StationEvents):
    keys: ConfigKeys
    tx: Transactions16
    profiles: Profiles
    auth_cache: AuthCache
    station: StationPort | None
    cp: Any
    online: bool
    guns: int
    max_w: float
    gun_cfg: Any
    log: Any
    wall: Callable[[], datetime]
    last: list[GunRecord | None]
    tags: dict[int, str]
    reasons: dict[int, str | None]
    #: Remote starts; an accepted one's idTag is the transaction's, whatever the station's
    #: own authorization of the truck answers later.
    remote: RemoteStarts[str]
    _aligned_slot: float | None
    _ws: Any
    on_reset: Callable[[], None] | None
    boot_status: str | None

    async def boot_once(self, cp: Any) -> int:
        raise NotImplementedError
    async def drain(self, timeout: float = 5.0) -> bool:
        raise NotImplementedError
    async def end_connection(self) -> None: ...
    async def _status(self, cp: Any, g: int) -> None: ...

    # ------------------------------------------------------------------ station events
    def on_session_event(self, ev: Any) -> None:
        """Session events → StartTransaction / StopTransaction and StatusNotifications."""
        kind = ev.kind
        g = ev.gun
        if kind == "state_changed":
            self.reasons[g] = ev.reason
            if ev.previous is None or ev.state.ocpp16 != ev.previous.ocpp16:
                self._send_status(g)
            if ev.state in (GunState.AVAILABLE, GunState.FAULTED) and g in self.tx.open:
                self.stop_tx(g, ev.reason if ev.state is GunState.AVAILABLE else "Other")
            if ev.state is GunState.AVAILABLE:
                self.tags.pop(g, None)
                self.remote.take_token(g)
        elif kind == "authorized" and ev.id_token:
            self.tags.setdefault(g, ev.id_token)
        elif kind == "charging_started" and g not in self.tx.open:
            self.remote.take_token(g)
            tag = self.tags.get(g) or ev.id_token or FREE_ID_TAG
            tx = self.tx.start(g, tag[:20], self.last[g], self.keys.members("StopTxnSampledData"))
            tx.last_sample_t = self.attached.clock()  # the sample interval counts from here
            self.profiles.tx[g + 1] = (str(tx.tx_id), self.wall().replace(microsecond=0))
            pending = self.remote.take_profile(g)
            if pending is not None and smart16.set_profile(self.profiles, g + 1, {
                    **pending, "transaction_id": None}) is None:
                self.apply_limits()
        elif kind == "charging_stopped" and g in self.tx.open:
            self.stop_tx(g, ev.reason, getattr(ev, "energy_wh", None))

    def stop_tx(self, g: int, reason: str | None, session_wh: float | None = None) -> None:
        tx = self.tx.stop(g, reason, self.last[g], self.keys.members("StopTxnSampledData"),
                          self.tags.get(g), session_wh)
        if tx is None:
            return
        self._pulse()  # a Reset may be waiting for the station to end its transactions
        self.profiles.tx_ended(g + 1)
        self.apply_limits()
        self.apply_availability(g)  # a Scheduled Inoperative takes effect now
        self.notify()

    def end_orphan(self, g: int, rec: GunRecord | None) -> None:
        self.tx.stop(g, "PowerLoss", rec, self.keys.members("StopTxnSampledData"),
                     self.tx.open[g].id_tag)
        self.profiles.tx_ended(g + 1)
        self.apply_limits()

    def sample_interval(self) -> float:
        return self.keys.num("MeterValueSampleInterval")

    def periodic_sample(self, g: int, rec: GunRecord) -> None:
        self.tx.sample(g, rec, self.keys.members("MeterValuesSampledData"), "Sample.Periodic",
                       self.keys.members("StopTxnSampledData"))

    def aligned_interval(self) -> float:
        return self.keys.num("ClockAlignedDataInterval")

    def aligned_sample(self) -> None:
        """ClockAlignedDataInterval: a transaction's values are queued (never lost), an
        idle connector's sent when online."""
        measurands = self.keys.members("MeterValuesAlignedData")
        for g in range(self.guns):
            if g in self.tx.open:  # transaction data: queued, never lost
                self.tx.sample(g, self.last[g], measurands, "Sample.Clock",
                               self.keys.members("StopTxnAlignedData"))
            elif self.online and self.cp is not None and self.last[g] is not None:
                mv = meter16(self.last[g], measurands, "Sample.Clock", iso(self.wall()))
                if mv:
                    self.spawn(self._send_meter(g, mv), connection=True)

    async def _send_meter(self, g: int, mv: list[dict[str, Any]]) -> None:
        cp = self.cp
        if cp is not None:
            try:
                await cp.call(call.MeterValues(connector_id=g + 1, meter_value=mv),
                              suppress=False)
            except Exception as exc:  # not transaction data: best effort
                self.log.warning("MeterValues not delivered", gun=g, error=repr(exc)[:200])

    # ------------------------------------------------------------------ authorization
    async def authorize(self, g: int, token: str | None) -> bool:
        """The station's authorizer: a remote start within ConnectionTimeOut, then the
        cache / Authorize / offline rules (LocalPreAuthorize, LocalAuthorizeOffline,
        AllowOfflineTxForUnknownId)."""
        waiting = self.remote.take_waiting(g, self.wall().timestamp())
        if waiting is not None:
            if self.keys.flag("AuthorizeRemoteTxRequests") and not await self.check_tag(
                    waiting.token):
                self.log.warning("remote start refused: idTag not authorized", gun=g)
                return False
            self.tags[g] = waiting.token
            if waiting.profile is not None:
                self.remote.profiles[g] = waiting.profile
            return True
        if self.remote.won(g):
            return True
        if not token:
            return False
        ok = await self.check_tag(token)
        if self.remote.won(g):  # a remote start came while we asked: its idTag wins
            return True
        if ok:
            self.tags[g] = token[:20]
        return ok

    async def check_tag(self, token: str) -> bool:
        """Cache / Authorize / offline rules for one idTag."""
        await self.wait_connected()
        return await decide_authorization(
            self.auth_cache.get(token), self.keys.flag("LocalPreAuthorize"), self._asker(token),
            self.keys.flag("LocalAuthorizeOffline"),
            self.keys.flag("AllowOfflineTxForUnknownId"), self.log)

    def _asker(self, token: str) -> Callable[[], Awaitable[str]] | None:
        """Authorize at the backend (None while offline); the answer goes to the cache."""
        cp = self.cp
        if cp is None or not self.online:
            return None

        async def ask() -> str:
            r = await cp.call(call.Authorize(id_tag=token[:20]), suppress=False)
            return self.remember(token, r.id_tag_info)
        return ask

    def remember(self, token: str, info: dict[str, Any] | None) -> str:
        """Cache an idTagInfo (until its expiryDate at the latest); returns the status."""
        status = str((info or {}).get("status", "Invalid"))
        until = None
        exp = (info or {}).get("expiry_date")
        if exp:
            try:
                until = datetime.fromisoformat(str(exp).replace("Z", "+00:00"))
            except ValueError:
                self.log.warning("unreadable expiryDate from the backend", value=exp)
        self.auth_cache.put(token, status, until)
        return status

    # ------------------------------------------------------------------ backend requests
    def remote_start(self, id_tag: str, connector: int | None,
                     profile: dict[str, Any] | None) -> str:
        """RemoteStartTransaction: Accepted when a free connector takes it."""
        if profile is not None and profile.get("charging_profile_purpose") != "TxProfile":
            return "Rejected"
        if connector is not None and not 1 <= connector <= self.guns:
            return "Rejected"
        guns = [connector - 1] if connector is not None else sorted(
            range(self.guns), key=lambda x: self.attached.sessions[x].state is not
            GunState.PREPARING)
        for g in guns:
            state = self.attached.sessions[g].state
            if g in self.tx.open:
                continue
            if state is GunState.PREPARING:
                if self.keys.flag("AuthorizeRemoteTxRequests"):
                    self.spawn(self._authorize_remote(g, id_tag, profile))
                else:
                    self._remote_accepted(g, id_tag, profile)
                return "Accepted"
            if state is GunState.AVAILABLE:
                until = self.wall().timestamp() + self.keys.num("ConnectionTimeOut")
                self.remote.wait(g, id_tag, until, profile)
                return "Accepted"
        return "Rejected"

    def _remote_accepted(self, g: int, id_tag: str, profile: dict[str, Any] | None) -> None:
        self.tags[g] = id_tag
        self.remote.accept(g, id_tag, profile)
        self.attached.set_authorization(g, True)

    async def _authorize_remote(self, g: int, id_tag: str, profile: dict[str, Any] | None
                                ) -> None:
        """AuthorizeRemoteTxRequests: the idTag is authorized like a local one first."""
        if await self.check_tag(id_tag):
            self._remote_accepted(g, id_tag, profile)
        else:
            self.log.warning("remote start refused: idTag not authorized", gun=g)

    async def triggered(self, what: str, connector: int | None) -> None:
        cp = self.cp
        if cp is None:
            return
        guns = [connector - 1] if connector else list(range(self.guns))
        if what == "Heartbeat":
            await cp.call(call.Heartbeat(), suppress=False)
        elif what == "StatusNotification":  # -1: connector 0, the station
            for g in [-1] if connector == 0 else guns if connector else [-1, *guns]:
                await self._status(cp, g)
        elif what == "BootNotification":
            await self.boot_once(cp)
        elif what == "MeterValues":
            measurands = self.keys.members("MeterValuesSampledData")
            for g in guns:
                if g in self.tx.open:
                    self.tx.sample(g, self.last[g], measurands, "Trigger",
                                   self.keys.members("StopTxnSampledData"))
                    self.notify()
                elif self.last[g] is not None:
                    mv = meter16(self.last[g], measurands, "Trigger", iso(self.wall()))
                    if mv:
                        await self._send_meter(g, mv)
        elif what == "DiagnosticsStatusNotification":
            await cp.call(call.DiagnosticsStatusNotification(status="Idle"), suppress=False)
        elif what == "FirmwareStatusNotification":
            await cp.call(call.FirmwareStatusNotification(status="Idle"), suppress=False)

    async def reset(self, hard: bool) -> None:
        """Reset: stop the transactions (HardReset / SoftReset), queue ResetOrReboot, deliver
        the queue and wait for the answers (bounded: no StopTransaction sent twice), then
        hand the restart to ``on_reset`` (station and services restart); without an owner
        only the OCPP connection restarts (close frame, reconnect at once)."""
        # a soft reset lets the station end them (with their readings)
        await self.reset_transactions("HardReset" if hard else "SoftReset", not hard,
                                      self.stop_tx)
        self.security_event("ResetOrReboot", f"Reset {'Hard' if hard else 'Soft'}")
        await self.restart_after_reset()
