"""The OCPP 2.0.1 ChargePoint: the handlers of the backend's CALLs.

The ``ocpp`` package validates and routes; every handler here answers at once from the
service's state (never awaiting a CALL of its own: follow-up messages go in ``@after``
handlers or the queue). The ``@after`` handlers are plain functions that start the follow-up
as a task owned by the service (``svc.spawn``), tied to the connection: the library would
otherwise run it as an unowned task whose exception nobody retrieves. Malformed frames are
answered with a CallError naming the problem (:class:`~controller.ocpp.frame_guard.FrameGuard`),
unsupported actions with NotImplemented / NotSupported by the library; no input crashes the
receive loop.
"""

from __future__ import annotations

from typing import Any, Protocol

from ocpp.v201 import ChargePoint as _ChargePoint
from ocpp.v201 import call_result
from websockets.asyncio.client import ClientConnection

from controller.ocpp.frame_guard import FrameGuard
from controller.ocpp.host import HostBase
from controller.ocpp.queue import MessageQueue
from controller.ocpp.v201.device_model import DeviceModel
from controller.ocpp.v201.transactions import Transactions
from controller.ocpp.wire import after, iso, on


class Host201(HostBase, Protocol):
    """What the 2.0.1 handlers use of the client that outlives a websocket
    (``OcppService``): declared here, so this module never imports the service."""

    dm: DeviceModel
    tx: Transactions
    queue: MessageQueue
    reset_pending: bool

    @property
    def boot_status(self) -> str | None: ...

    def find_profiles(self, crit: dict[str, Any], evse: int | None
                      ) -> list[tuple[int, dict[str, Any]]]: ...

    def remote_start(self, id_token: dict[str, Any], remote_id: int, evse_id: int | None,
                     profile: dict[str, Any] | None) -> tuple[str, str, str | None]: ...

    async def reset(self, immediate: bool) -> None: ...

    async def send_report(self, request_id: int, base: str) -> None: ...

    async def report_profiles(self, request_id: int, crit: dict[str, Any],
                              evse: int | None) -> None: ...

    async def triggered(self, what: str, g: int | None) -> None: ...


def _info(reason: str, text: str = "") -> dict[str, str]:
    return {"reasonCode": reason, "additionalInfo": text[:512]} if text else {
        "reasonCode": reason}


class OcppClient(_ChargePoint):  # type: ignore[misc]
    """One websocket session's ChargePoint; ``svc`` holds all state that outlives it."""

    svc: Host201

    def __init__(self, station_id: str, ws: ClientConnection, svc: Host201, timeout: float) -> None:
        super().__init__(station_id, ws, response_timeout=timeout)
        self.svc = svc
        self.guard = FrameGuard(svc.log, self._send, "FormatViolation")

    async def route_message(self, raw_msg: str) -> None:
        await self.guard.route(raw_msg, super().route_message)

    async def _handle_call(self, msg: Any) -> None:
        await self.guard.handle_call(msg, super()._handle_call)

    # ------------------------------------------------------------------ device model (B05–B07)
    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any
                         ) -> call_result.GetVariables:
        out = []
        for d in get_variable_data:
            status, value = self.svc.dm.read(d["component"], d["variable"],
                                             d.get("attribute_type"))
            r = {"attributeStatus": status, "component": d["component"],
                 "variable": d["variable"]}
            if d.get("attribute_type"):
                r["attributeType"] = d["attribute_type"]
            if value is not None:
                r["attributeValue"] = value
            out.append(r)
        return call_result.GetVariables(get_variable_result=out)

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any
                         ) -> call_result.SetVariables:
        out = []
        for d in set_variable_data:
            status = self.svc.dm.write(d["component"], d["variable"], d["attribute_value"],
                                       d.get("attribute_type"))
            out.append({"attributeStatus": status, "component": d["component"],
                        "variable": d["variable"]})
        return call_result.SetVariables(set_variable_result=out)

    @on("GetBaseReport")
    def on_get_base_report(self, request_id: int, report_base: str, **_: Any
                           ) -> call_result.GetBaseReport:
        ok = report_base in ("ConfigurationInventory", "FullInventory")
        return call_result.GetBaseReport(status="Accepted" if ok else "NotSupported")

    @after("GetBaseReport")
    def after_get_base_report(self, request_id: int, report_base: str, **_: Any) -> None:
        if report_base in ("ConfigurationInventory", "FullInventory"):
            self.svc.spawn(self.svc.send_report(request_id, report_base), connection=True)

    @on("Reset")
    def on_reset(self, type: str, evse_id: int | None = None, **_: Any) -> call_result.Reset:
        if evse_id is not None:
            return call_result.Reset(status="Rejected", status_info=_info(
                "UnsupportedRequest", "reset of a single EVSE is not supported"))
        busy = bool(self.svc.tx.open)
        if type == "OnIdle" and busy:
            self.svc.reset_pending = True
            return call_result.Reset(status="Scheduled")
        return call_result.Reset(status="Accepted")

    @after("Reset")
    def after_reset(self, type: str, evse_id: int | None = None, **_: Any) -> None:
        if evse_id is None and (type == "Immediate" or not self.svc.reset_pending):
            self.svc.spawn(self.svc.reset(immediate=type == "Immediate"))  # outlives us

    @on("ChangeAvailability")
    def on_change_availability(self, operational_status: str, evse: dict[str, Any] | None = None,
                               **_: Any) -> call_result.ChangeAvailability:
        eid = 0 if evse is None else int(evse["id"])
        if not 0 <= eid <= self.svc.guns or (evse or {}).get("connector_id", 1) != 1:
            return call_result.ChangeAvailability(status="Rejected",
                                                  status_info=_info("UnknownEvse"))
        status = self.svc.change_availability(eid, operational_status == "Operative")
        return call_result.ChangeAvailability(status=status)

    # ------------------------------------------------------------------ transactions (F01–F06)
    @on("RequestStartTransaction")
    def on_request_start(self, id_token: dict[str, Any], remote_start_id: int,
                         evse_id: int | None = None,
                         charging_profile: dict[str, Any] | None = None, **_: Any
                         ) -> call_result.RequestStartTransaction:
        status, why, tx_id = self.svc.remote_start(id_token, remote_start_id, evse_id,
                                                   charging_profile)
        return call_result.RequestStartTransaction(
            status=status, transaction_id=tx_id,
            status_info=_info("InvalidValue", why) if why else None)

    @on("RequestStopTransaction")
    def on_request_stop(self, transaction_id: str, **_: Any
                        ) -> call_result.RequestStopTransaction:
        for g, tx in self.svc.tx.open.items():
            if tx.tx_id == transaction_id:
                self.svc.attached.stop_charging(g, "Remote")
                return call_result.RequestStopTransaction(status="Accepted")
        return call_result.RequestStopTransaction(
            status="Rejected", status_info=_info("TxNotFound", transaction_id))

    @on("GetTransactionStatus")
    def on_get_transaction_status(self, transaction_id: str | None = None, **_: Any
                                  ) -> call_result.GetTransactionStatus:
        queued = [m for m in self.svc.queue.all() if m.action == "TransactionEvent" and (
            transaction_id is None
            or m.payload["transactionInfo"]["transactionId"] == transaction_id)]
        if transaction_id is None:
            return call_result.GetTransactionStatus(messages_in_queue=bool(queued))
        ongoing = any(t.tx_id == transaction_id for t in self.svc.tx.open.values())
        return call_result.GetTransactionStatus(messages_in_queue=bool(queued),
                                                ongoing_indicator=ongoing)

    def _trigger_answer(self, requested_message: str, evse: dict[str, Any] | None
                        ) -> tuple[str, dict[str, str] | None]:
        """TriggerMessage status (and statusInfo); only ``Accepted`` has a follow-up."""
        supported = ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues",
                     "TransactionEvent")
        if requested_message not in supported:
            return "NotImplemented", None
        if requested_message == "BootNotification" and self.svc.boot_status == "Accepted":
            return "Rejected", _info("UnsupportedRequest", "boot already accepted")
        if evse is not None and not (isinstance(evse.get("id"), int)
                                     and 1 <= evse["id"] <= self.svc.guns):
            return "Rejected", _info("UnknownEvse", f"evse {evse.get('id')!r}")
        return "Accepted", None

    @on("TriggerMessage")
    def on_trigger(self, requested_message: str, evse: dict[str, Any] | None = None, **_: Any
                   ) -> call_result.TriggerMessage:
        status, info = self._trigger_answer(requested_message, evse)
        return call_result.TriggerMessage(status=status, status_info=info)

    @after("TriggerMessage")
    def after_trigger(self, requested_message: str, evse: dict[str, Any] | None = None,
                      **_: Any) -> None:
        if self._trigger_answer(requested_message, evse)[0] != "Accepted":
            return  # a refused trigger starts nothing
        g = None if evse is None else int(evse["id"]) - 1
        self.svc.spawn(self.svc.triggered(requested_message, g), connection=True)

    @on("UnlockConnector")
    def on_unlock(self, evse_id: int, connector_id: int, **_: Any
                  ) -> call_result.UnlockConnector:
        if not 1 <= evse_id <= self.svc.guns or connector_id != 1:
            return call_result.UnlockConnector(status="UnknownConnector")
        if evse_id - 1 in self.svc.tx.open:
            return call_result.UnlockConnector(status="OngoingAuthorizedTransaction")
        return call_result.UnlockConnector(status="Unlocked")

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status="UnknownVendorId")

    @on("ClearCache")
    def on_clear_cache(self, **_: Any) -> call_result.ClearCache:
        self.svc.auth_cache.clear()
        return call_result.ClearCache(status="Accepted")

    # ------------------------------------------------------------------ smart charging (K01–K08)
    @on("SetChargingProfile")
    def on_set_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any
                       ) -> call_result.SetChargingProfile:
        why = self.svc.profiles.validate(evse_id, charging_profile)
        if why is not None:
            return call_result.SetChargingProfile(status="Rejected",
                                                  status_info=_info("InvalidProfile", why))
        self.svc.profiles.install(evse_id, charging_profile)
        self.svc.apply_limits()  # in force from the next control cycle
        return call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def on_clear_profile(self, charging_profile_id: int | None = None,
                         charging_profile_criteria: dict[str, Any] | None = None, **_: Any
                         ) -> call_result.ClearChargingProfile:
        c = charging_profile_criteria or {}
        if c.get("charging_profile_purpose") == "ChargingStationExternalConstraints":
            return call_result.ClearChargingProfile(status="Unknown")
        n = self.svc.profiles.clear(charging_profile_id, c.get("evse_id"),
                                    c.get("charging_profile_purpose"), c.get("stack_level"))
        self.svc.apply_limits()
        return call_result.ClearChargingProfile(status="Accepted" if n else "Unknown")

    @on("GetChargingProfiles")
    def on_get_profiles(self, request_id: int, charging_profile: dict[str, Any],
                        evse_id: int | None = None, **_: Any) -> call_result.GetChargingProfiles:
        found = self.svc.find_profiles(charging_profile, evse_id)
        return call_result.GetChargingProfiles(status="Accepted" if found else "NoProfiles")

    @after("GetChargingProfiles")
    def after_get_profiles(self, request_id: int, charging_profile: dict[str, Any],
                           evse_id: int | None = None, **_: Any) -> None:
        self.svc.spawn(self.svc.report_profiles(request_id, charging_profile, evse_id),
                       connection=True)

    @on("GetCompositeSchedule")
    def on_get_composite(self, duration: int, evse_id: int,
                         charging_rate_unit: str | None = None, **_: Any
                         ) -> call_result.GetCompositeSchedule:
        if not 0 <= evse_id <= self.svc.guns:
            return call_result.GetCompositeSchedule(status="Rejected",
                                                    status_info=_info("UnknownEVSE"))
        unit = charging_rate_unit or ("W" if evse_id == 0 else "A")
        now = self.svc.wall().replace(microsecond=0)
        periods = self.svc.profiles.composite(evse_id, now, duration, unit,
                                              self.svc.local_limits(evse_id))
        sched = {"evseId": evse_id, "duration": duration, "scheduleStart": iso(now),
                 "chargingRateUnit": unit, "chargingSchedulePeriod": periods}
        return call_result.GetCompositeSchedule(status="Accepted", schedule=sched)
