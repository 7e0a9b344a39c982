"""The OCPP 1.6J ChargePoint: the handlers of the backend's CALLs.

The ``ocpp`` package (v16) validates and routes; every handler answers at once from the
service's state, follow-up CALLs go in ``@after`` handlers (never awaited inside ``@on``).
Malformed frames get a CallError (:class:`~controller.ocpp.frame_guard.FrameGuard`, built with
the 1.6 spelling FormationViolation), unsupported actions NotImplemented from the library.
"""

from __future__ import annotations

from typing import Any, Protocol

from ocpp.v16 import ChargePoint as _ChargePoint
from ocpp.v16 import call_result
from websockets.asyncio.client import ClientConnection

from controller.ocpp.frame_guard import FrameGuard
from controller.ocpp.host import HostBase
from controller.ocpp.v16 import smart16
from controller.ocpp.v16.config_keys import ConfigKeys
from controller.ocpp.v16.transactions import Transactions16
from controller.ocpp.wire import after, iso, on


class Host16(HostBase, Protocol):
    """What the 1.6 handlers use of the client that outlives a websocket
    (``Ocpp16Service``): declared here, so this module never imports the service."""

    keys: ConfigKeys
    tx: Transactions16

    def nameplate_w(self, evse: int) -> float: ...

    def remote_start(self, id_tag: str, connector: int | None,
                     profile: dict[str, Any] | None) -> str: ...

    async def reset(self, hard: bool) -> None: ...

    async def triggered(self, what: str, connector: int | None) -> None: ...

TRIGGERS = ("BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
            "Heartbeat", "MeterValues", "StatusNotification")


class Ocpp16Client(_ChargePoint):  # type: ignore[misc]
    """One websocket session's ChargePoint; ``svc`` holds all state that outlives it."""

    svc: Host16

    def __init__(self, station_id: str, ws: ClientConnection, svc: Host16, timeout: float) -> None:
        super().__init__(station_id, ws, response_timeout=timeout)
        self.svc = svc
        self.guard = FrameGuard(svc.log, self._send, "FormationViolation")

    async def route_message(self, raw_msg: str) -> None:
        await self.guard.route(raw_msg, super().route_message)

    async def _handle_call(self, msg: Any) -> None:
        await self.guard.handle_call(msg, super()._handle_call)

    # ------------------------------------------------------------------ configuration
    @on("GetConfiguration")
    def on_get_configuration(self, key: list[str] | None = None, **_: Any
                             ) -> call_result.GetConfiguration:
        known, unknown = self.svc.keys.report(key)
        return call_result.GetConfiguration(configuration_key=known,
                                            unknown_key=unknown or None)

    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str, **_: Any
                                ) -> call_result.ChangeConfiguration:
        return call_result.ChangeConfiguration(status=self.svc.keys.change(key, value))

    @on("Reset")
    def on_reset(self, type: str, **_: Any) -> call_result.Reset:
        return call_result.Reset(status="Accepted")

    @after("Reset")
    def after_reset(self, type: str, **_: Any) -> None:
        self.svc.spawn(self.svc.reset(hard=type == "Hard"))  # owned; outlives the connection

    @on("ChangeAvailability")
    def on_change_availability(self, connector_id: int, type: str, **_: Any
                               ) -> call_result.ChangeAvailability:
        if not 0 <= connector_id <= self.svc.guns:
            return call_result.ChangeAvailability(status="Rejected")
        status = self.svc.change_availability(connector_id, type == "Operative")
        return call_result.ChangeAvailability(status=status)

    @on("ClearCache")
    def on_clear_cache(self, **_: Any) -> call_result.ClearCache:
        self.svc.auth_cache.clear()
        return call_result.ClearCache(status="Accepted")

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status="UnknownVendorId")

    # ------------------------------------------------------------------ transactions
    @on("RemoteStartTransaction")
    def on_remote_start(self, id_tag: str, connector_id: int | None = None,
                        charging_profile: dict[str, Any] | None = None, **_: Any
                        ) -> call_result.RemoteStartTransaction:
        status = self.svc.remote_start(id_tag, connector_id, charging_profile)
        return call_result.RemoteStartTransaction(status=status)

    @on("RemoteStopTransaction")
    def on_remote_stop(self, transaction_id: int, **_: Any
                       ) -> call_result.RemoteStopTransaction:
        g = self.svc.tx.find(transaction_id)
        if g is None:
            return call_result.RemoteStopTransaction(status="Rejected")
        self.svc.attached.stop_charging(g, "Remote")
        return call_result.RemoteStopTransaction(status="Accepted")

    @on("UnlockConnector")
    def on_unlock(self, connector_id: int, **_: Any) -> call_result.UnlockConnector:
        if not 1 <= connector_id <= self.svc.guns:
            return call_result.UnlockConnector(status="NotSupported")
        if connector_id - 1 in self.svc.tx.open:  # the transaction ends first
            self.svc.attached.stop_charging(connector_id - 1, "UnlockCommand")
        return call_result.UnlockConnector(status="Unlocked")

    @on("TriggerMessage")
    def on_trigger(self, requested_message: str, connector_id: int | None = None, **_: Any
                   ) -> call_result.TriggerMessage:
        if requested_message not in TRIGGERS:
            return call_result.TriggerMessage(status="NotImplemented")
        if connector_id is not None and not 0 <= connector_id <= self.svc.guns:
            return call_result.TriggerMessage(status="Rejected")
        return call_result.TriggerMessage(status="Accepted")

    @after("TriggerMessage")
    def after_trigger(self, requested_message: str, connector_id: int | None = None,
                      **_: Any) -> None:
        if requested_message in TRIGGERS and (connector_id is None
                                              or 0 <= connector_id <= self.svc.guns):
            self.svc.spawn(self._triggered(requested_message, connector_id), connection=True)

    async def _triggered(self, requested_message: str, connector_id: int | None) -> None:
        """The follow-up of an accepted trigger: an owned task of this connection."""
        try:
            await self.svc.triggered(requested_message, connector_id)
        except Exception as exc:  # the backend refused what it asked for: log, go on
            self.svc.log.warning("triggered message failed", message=requested_message,
                                 error=repr(exc)[:200])

    # ------------------------------------------------------------------ smart charging
    @on("SetChargingProfile")
    def on_set_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any],
                       **_: Any) -> call_result.SetChargingProfile:
        why = smart16.set_profile(self.svc.profiles, connector_id, cs_charging_profiles)
        if why is not None:
            self.svc.log.warning("charging profile rejected", reason=why)
            return call_result.SetChargingProfile(status="Rejected")
        self.svc.apply_limits()  # in force from the next control cycle
        return call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def on_clear_profile(self, id: int | None = None, connector_id: int | None = None,
                         charging_profile_purpose: str | None = None,
                         stack_level: int | None = None, **_: Any
                         ) -> call_result.ClearChargingProfile:
        n = smart16.clear_profiles(self.svc.profiles, id, connector_id,
                                   charging_profile_purpose, stack_level)
        self.svc.apply_limits()
        return call_result.ClearChargingProfile(status="Accepted" if n else "Unknown")

    @on("GetCompositeSchedule")
    def on_get_composite(self, connector_id: int, duration: int,
                         charging_rate_unit: str | None = None, **_: Any
                         ) -> call_result.GetCompositeSchedule:
        if not 0 <= connector_id <= self.svc.guns or duration < 0:
            return call_result.GetCompositeSchedule(status="Rejected")
        unit = charging_rate_unit or ("W" if connector_id == 0 else "A")
        now = self.svc.wall().replace(microsecond=0)
        sched = smart16.composite16(self.svc.profiles, connector_id, now, duration, unit,
                                    self.svc.nameplate_w(connector_id),
                                    self.svc.local_limits(connector_id))
        return call_result.GetCompositeSchedule(status="Accepted", connector_id=connector_id,
                                                schedule_start=iso(now),
                                                charging_schedule=sched)
