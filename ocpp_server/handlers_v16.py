"""OCPP 1.6J requests from a station. Each handler persists before it answers."""

from __future__ import annotations

from typing import Any

from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.enums import Action

from ocpp_server.handlers_v201 import DATA_TRANSFER_VENDOR
from ocpp_server.session import Session, authorize, handles
from ocpp_server.timeutil import now_iso


class StationV16(Session, ChargePoint):  # type: ignore[misc]
    subprotocol = "ocpp1.6"

    @property
    def payload(self) -> dict[str, Any]:
        assert self.current is not None
        return dict(self.current.payload)

    async def _id_tag_info(self, id_tag: str) -> dict[str, Any]:
        status, token = await authorize(self.repo, id_tag)
        info: dict[str, Any] = {"status": "Invalid" if status == "Unknown" else status}
        if info["status"] not in ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"):
            info["status"] = "Invalid"
        if token is not None and token.expiry is not None:
            info["expiry_date"] = token.expiry
        if token is not None and token.group_id:
            info["parent_id_tag"] = token.group_id
        return info

    @handles(Action.boot_notification)
    async def on_boot(self, **_: Any) -> call_result.BootNotification:
        p = self.payload
        status, interval = await self.admit_boot("1.6", {
            "vendor": p.get("chargePointVendor"), "model": p.get("chargePointModel"),
            "serial_number": p.get("chargePointSerialNumber") or p.get("chargeBoxSerialNumber"),
            "firmware_version": p.get("firmwareVersion")})
        self.log.info("boot", accepted=self.approved)
        return call_result.BootNotification(now_iso(), interval, status)

    @handles(Action.heartbeat)
    async def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(now_iso())

    @handles(Action.status_notification)
    async def on_status(self, **_: Any) -> call_result.StatusNotification:
        p = self.payload
        await self.repo.record_status(self.id, p["connectorId"], p["connectorId"], p["status"],
                                      p.get("errorCode"), p.get("timestamp") or now_iso())
        self.evse_status[str(p["connectorId"])] = p["status"]
        return call_result.StatusNotification()

    @handles(Action.authorize)
    async def on_authorize(self, **_: Any) -> call_result.Authorize:
        return call_result.Authorize(await self._id_tag_info(self.payload["idTag"]))

    @handles(Action.start_transaction)
    async def on_start(self, **_: Any) -> call_result.StartTransaction:
        p = self.payload
        tx_id = await self.repo.start_transaction_v16(self.id, p)
        return call_result.StartTransaction(tx_id, await self._id_tag_info(p["idTag"]))

    @handles(Action.stop_transaction)
    async def on_stop(self, **_: Any) -> call_result.StopTransaction:
        p = self.payload
        if not await self.repo.stop_transaction_v16(self.id, p):
            # Unknown id: keep the request anyway, and confirm so the station moves on.
            self.log.warning("stop_unknown_transaction", transaction_id=p["transactionId"])
            await self.repo.record_message(self.id, "StopTransaction", p)
        info = await self._id_tag_info(p["idTag"]) if "idTag" in p else None
        return call_result.StopTransaction(id_tag_info=info)

    @handles(Action.meter_values)
    async def on_meter_values(self, **_: Any) -> call_result.MeterValues:
        p = self.payload
        tx = p.get("transactionId")
        await self.repo.record_meter_values(self.id, p["connectorId"],
                                            None if tx is None else str(tx), p["meterValue"],
                                            "MeterValues")
        return call_result.MeterValues()

    @handles(Action.security_event_notification)
    async def on_security_event(self, **_: Any) -> call_result.SecurityEventNotification:
        p = self.payload
        await self.repo.record_security_event(self.id, p["type"], p["timestamp"],
                                              p.get("techInfo"))
        return call_result.SecurityEventNotification()

    @handles(Action.data_transfer)
    async def on_data_transfer(self, **_: Any) -> call_result.DataTransfer:
        assert self.current is not None
        await self.repo.record_message(self.id, "DataTransfer", self.payload)
        known = self.payload["vendorId"] == DATA_TRANSFER_VENDOR
        return call_result.DataTransfer("Accepted" if known else "UnknownVendorId")

    @handles(Action.firmware_status_notification)
    async def on_firmware_status(self, **_: Any) -> call_result.FirmwareStatusNotification:
        await self.repo.record_message(self.id, "FirmwareStatusNotification", self.payload)
        return call_result.FirmwareStatusNotification()

    @handles(Action.diagnostics_status_notification)
    async def on_diag_status(self, **_: Any) -> call_result.DiagnosticsStatusNotification:
        await self.repo.record_message(self.id, "DiagnosticsStatusNotification", self.payload)
        return call_result.DiagnosticsStatusNotification()
