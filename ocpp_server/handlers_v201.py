"""OCPP 2.0.1 requests from a station. Each handler persists before it answers."""

from __future__ import annotations

from typing import Any

from ocpp.v201 import ChargePoint, call_result
from ocpp.v201.enums import Action

from ocpp_server.session import Session, authorize, handles
from ocpp_server.timeutil import now_iso

DATA_TRANSFER_VENDOR = "org.mwcharge"


class StationV201(Session, ChargePoint):  # type: ignore[misc]
    subprotocol = "ocpp2.0.1"

    @property
    def payload(self) -> dict[str, Any]:
        assert self.current is not None
        return dict(self.current.payload)

    async def _id_token_info(self, id_token: dict[str, Any]) -> dict[str, Any]:
        if id_token.get("type") == "NoAuthorization":
            return {"status": "Accepted"}
        status, token = await authorize(self.repo, id_token["idToken"])
        info: dict[str, Any] = {"status": status}
        if token is not None and token.expiry is not None:
            info["cache_expiry_date_time"] = token.expiry
        if token is not None and token.group_id:
            info["group_id_token"] = {"id_token": token.group_id, "type": "Central"}
        return info

    @handles(Action.boot_notification)
    async def on_boot(self, **_: Any) -> call_result.BootNotification:
        p = self.payload
        cs = p["chargingStation"]
        status, interval = await self.admit_boot("2.0.1", {
            "vendor": cs.get("vendorName"), "model": cs.get("model"),
            "serial_number": cs.get("serialNumber"),
            "firmware_version": cs.get("firmwareVersion")})
        self.log.info("boot", reason=p.get("reason"), accepted=self.approved)
        return call_result.BootNotification(now_iso(), interval, status)

    @handles(Action.heartbeat)
    async def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(now_iso())

    @handles(Action.status_notification)
    async def on_status(self, **_: Any) -> call_result.StatusNotification:
        p = self.payload
        await self.repo.record_status(self.id, p["evseId"], p["connectorId"],
                                      p["connectorStatus"], None, p["timestamp"])
        self.evse_status[f"{p['evseId']}/{p['connectorId']}"] = p["connectorStatus"]
        return call_result.StatusNotification()

    @handles(Action.authorize)
    async def on_authorize(self, **_: Any) -> call_result.Authorize:
        return call_result.Authorize(await self._id_token_info(self.payload["idToken"]))

    @handles(Action.transaction_event)
    async def on_transaction_event(self, **_: Any) -> call_result.TransactionEvent:
        p = self.payload
        new = await self.repo.record_transaction_event(self.id, p)
        if not new:
            self.log.info("duplicate_transaction_event",
                          transaction_id=p["transactionInfo"]["transactionId"], seq_no=p["seqNo"])
        remote_start_id = p["transactionInfo"].get("remoteStartId")
        if "idToken" not in p and remote_start_id is not None:
            # Started without a token (F01/F02): the transaction is the requested token's.
            # Also on a repeat: idempotent, and closes the gap of a crash between the two.
            await self.repo.adopt_remote_start_token(
                self.id, p["transactionInfo"]["transactionId"], remote_start_id)
        info = await self._id_token_info(p["idToken"]) if "idToken" in p else None
        return call_result.TransactionEvent(id_token_info=info)

    @handles(Action.meter_values)
    async def on_meter_values(self, **_: Any) -> call_result.MeterValues:
        p = self.payload
        await self.repo.record_meter_values(self.id, p["evseId"], None, p["meterValue"],
                                            "MeterValues")
        return call_result.MeterValues()

    @handles(Action.security_event_notification)
    async def on_security_event(self, **_: Any) -> call_result.SecurityEventNotification:
        p = self.payload
        await self.repo.record_security_event(self.id, p["type"], p["timestamp"],
                                              p.get("techInfo"))
        return call_result.SecurityEventNotification()

    async def _keep(self) -> None:
        assert self.current is not None
        await self.repo.record_message(self.id, self.current.action, self.payload)

    @handles(Action.notify_report)
    async def on_notify_report(self, **_: Any) -> call_result.NotifyReport:
        await self._keep()
        return call_result.NotifyReport()

    @handles(Action.notify_charging_limit)
    async def on_notify_charging_limit(self, **_: Any) -> call_result.NotifyChargingLimit:
        await self._keep()
        return call_result.NotifyChargingLimit()

    @handles(Action.report_charging_profiles)
    async def on_report_profiles(self, **_: Any) -> call_result.ReportChargingProfiles:
        await self._keep()
        return call_result.ReportChargingProfiles()

    @handles(Action.firmware_status_notification)
    async def on_firmware_status(self, **_: Any) -> call_result.FirmwareStatusNotification:
        await self._keep()
        return call_result.FirmwareStatusNotification()

    @handles(Action.log_status_notification)
    async def on_log_status(self, **_: Any) -> call_result.LogStatusNotification:
        await self._keep()
        return call_result.LogStatusNotification()

    @handles(Action.data_transfer)
    async def on_data_transfer(self, **_: Any) -> call_result.DataTransfer:
        await self._keep()
        known = self.payload["vendorId"] == DATA_TRANSFER_VENDOR
        return call_result.DataTransfer("Accepted" if known else "UnknownVendorId")
