"""The OCPP 1.6J transaction reporter and the station-facing answers to the backend.

:class:`Reporter16` is the :class:`~controller.ocpp.bridge.Reporter` of 1.6: session events
→ StartTransaction / MeterValues / StopTransaction and StatusNotifications, periodic and
clock-aligned samples; and the work behind the handlers: authorization (offline rules,
cache), remote start, triggers, Reset. Every collaborator comes through the constructor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ocpp.v16 import call

from controller.ocpp.auth import AuthCache, claim_remote_start, decide_authorization
from controller.ocpp.availability import Availability
from controller.ocpp.bridge import StationView
from controller.ocpp.link import Uplink
from controller.ocpp.outbox import Outbox
from controller.ocpp.ports import Log
from controller.ocpp.remote_start import RemoteStarts, Waiting, candidates
from controller.ocpp.reset import Resets
from controller.ocpp.smart_charging import Profiles
from controller.ocpp.tasks import Progress, Tasks
from controller.ocpp.v16 import smart16
from controller.ocpp.v16.adapter import FREE_ID_TAG, Adapter16
from controller.ocpp.v16.config_keys import ConfigKeys
from controller.ocpp.v16.transactions import Transactions16, meter16
from controller.ocpp.wire import iso
from controller.records import GunRecord
from controller.session import GunState, SessionEvent


class Reporter16:
    """The 1.6 side of the station's events and of the backend's requests."""

    def __init__(self, view: StationView, keys: ConfigKeys, tx: Transactions16,
                 profiles: Profiles, auth_cache: AuthCache, availability: Availability,
                 link: Uplink, adapter: Adapter16, outbox: Outbox, tasks: Tasks,
                 progress: Progress, resets: Resets, log: Log) -> None:
        self.view, self.keys, self.tx, self.profiles = view, keys, tx, profiles
        self.auth_cache, self.availability, self.link, self.adapter = (
            auth_cache, availability, link, adapter)
        self.outbox, self.tasks, self.progress, self.resets = outbox, tasks, progress, resets
        self.wall, self.log = view.wall, log
        self.guns = view.guns
        #: The idTag of each gun's session (the truck's, or a remote start's).
        self.tags: dict[int, str] = {}
        #: Remote starts; an accepted one's idTag is the transaction's, whatever the
        #: station's own authorization of the truck answers later.
        self.remote: RemoteStarts[str] = RemoteStarts(log)

    # ------------------------------------------------------------------ station events
    def on_session_event(self, ev: SessionEvent) -> None:
        """Session events → StartTransaction / StopTransaction and StatusNotifications."""
        kind = ev.kind
        g = ev.gun
        if kind == "state_changed":
            self.adapter.reasons[g] = ev.reason
            if ev.previous is None or ev.state.ocpp16 != ev.previous.ocpp16:
                self.link.send_status(g)
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
            tx = self.tx.start(g, tag[:20], self.view.last[g],
                               self.keys.members("StopTxnSampledData"))
            tx.last_sample_t = self.view.attached.clock()  # the sample interval counts from here
            self.profiles.tx[g + 1] = (str(tx.tx_id), self.wall().replace(microsecond=0))
            pending = self.remote.take_profile(g)
            if pending is not None and smart16.set_profile(self.profiles, g + 1, {
                    **pending, "transaction_id": None}) is None:
                self.view.apply_limits()
        elif kind == "charging_stopped" and g in self.tx.open:
            self.stop_tx(g, ev.reason, ev.energy_wh)

    def stop_tx(self, g: int, reason: str | None, session_wh: float | None = None) -> None:
        tx = self.tx.stop(g, reason, self.view.last[g], self.keys.members("StopTxnSampledData"),
                          self.tags.get(g), session_wh)
        if tx is None:
            return
        self.progress.pulse()  # a Reset may be waiting for the station to end its transactions
        self.profiles.tx_ended(g + 1)
        self.view.apply_limits()
        self.availability.apply(g)  # a Scheduled Inoperative takes effect now
        self.outbox.notify()

    def end_orphan(self, g: int, rec: GunRecord | None) -> None:
        self.tx.stop(g, "PowerLoss", rec, self.keys.members("StopTxnSampledData"),
                     self.tx.open[g].id_tag)
        self.profiles.tx_ended(g + 1)
        self.view.apply_limits()

    def after_cycle(self) -> None:
        """1.6 reports nothing more per cycle (no grid-limit notification)."""

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
                self.tx.sample(g, self.view.last[g], measurands, "Sample.Clock",
                               self.keys.members("StopTxnAlignedData"))
            elif self.link.online and self.link.cp is not None and self.view.last[g] is not None:
                mv = meter16(self.view.last[g], measurands, "Sample.Clock", iso(self.wall()))
                if mv:
                    self.tasks.spawn(self._send_meter(g, mv), connection=True)

    async def _send_meter(self, g: int, mv: list[dict[str, Any]]) -> None:
        cp = self.link.cp
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
        check = self.check_tag if self.keys.flag("AuthorizeRemoteTxRequests") else None
        claimed = await claim_remote_start(self.remote, g, self.wall().timestamp(), check,
                                           lambda w: self._take_remote(g, w), self.log)
        if claimed is not None:
            return claimed
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

    def _take_remote(self, g: int, waiting: Waiting[str]) -> None:
        """A waiting remote start taken up by the truck plugged into gun ``g``: its idTag
        becomes the session's, its profile is held for the transaction."""
        self.tags[g] = waiting.token
        if waiting.profile is not None:
            self.remote.profiles[g] = waiting.profile

    async def check_tag(self, token: str) -> bool:
        """Cache / Authorize / offline rules for one idTag."""
        await self.link.wait_connected()
        return await decide_authorization(
            self.auth_cache.get(token), self.keys.flag("LocalPreAuthorize"), self._asker(token),
            self.keys.flag("LocalAuthorizeOffline"),
            self.keys.flag("AllowOfflineTxForUnknownId"), self.log)

    def _asker(self, token: str) -> Callable[[], Awaitable[str]] | None:
        """Authorize at the backend (None while offline); the answer goes to the cache."""
        cp = self.link.cp
        if cp is None or not self.link.online:
            return None

        async def ask() -> str:
            r = await cp.call(call.Authorize(id_tag=token[:20]), suppress=False)
            return self.adapter.remember(token, r.id_tag_info)
        return ask

    # ------------------------------------------------------------------ backend requests
    def remote_start(self, id_tag: str, connector: int | None,
                     profile: dict[str, Any] | None) -> str:
        """RemoteStartTransaction: Accepted when a free connector takes it."""
        if profile is not None and profile.get("charging_profile_purpose") != "TxProfile":
            return "Rejected"
        if connector is not None and not 1 <= connector <= self.guns:
            return "Rejected"
        guns = candidates(self.view.attached, self.guns,
                          None if connector is None else connector - 1)
        for g in guns:
            state = self.view.attached.sessions[g].state
            if g in self.tx.open:
                continue
            if state is GunState.PREPARING:
                if self.keys.flag("AuthorizeRemoteTxRequests"):
                    self.tasks.spawn(self._authorize_remote(g, id_tag, profile))
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
        self.view.attached.set_authorization(g, True)

    async def _authorize_remote(self, g: int, id_tag: str, profile: dict[str, Any] | None
                                ) -> None:
        """AuthorizeRemoteTxRequests: the idTag is authorized like a local one first."""
        if await self.check_tag(id_tag):
            self._remote_accepted(g, id_tag, profile)
        else:
            self.log.warning("remote start refused: idTag not authorized", gun=g)

    async def triggered(self, what: str, connector: int | None) -> None:
        cp = self.link.cp
        if cp is None:
            return
        guns = [connector - 1] if connector else list(range(self.guns))
        if what == "Heartbeat":
            await cp.call(call.Heartbeat(), suppress=False)
        elif what == "StatusNotification":  # -1: connector 0, the station
            for g in [-1] if connector == 0 else guns if connector else [-1, *guns]:
                await self.adapter.status(cp, g)
        elif what == "BootNotification":
            await self.link.boot_once(cp)
        elif what == "MeterValues":
            measurands = self.keys.members("MeterValuesSampledData")
            for g in guns:
                if g in self.tx.open:
                    self.tx.sample(g, self.view.last[g], measurands, "Trigger",
                                   self.keys.members("StopTxnSampledData"))
                    self.outbox.notify()
                elif self.view.last[g] is not None:
                    mv = meter16(self.view.last[g], measurands, "Trigger", iso(self.wall()))
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
        await self.resets.end_transactions("HardReset" if hard else "SoftReset", not hard,
                                           self.stop_tx)
        self.outbox.security_event("ResetOrReboot", f"Reset {'Hard' if hard else 'Soft'}")
        await self.resets.restart()
