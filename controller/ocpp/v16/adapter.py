"""What OCPP 1.6J says on the wire for the link (:class:`~controller.ocpp.link.MessageAdapter`):
BootNotification, Heartbeat, StatusNotification (connector 0 is the station, fault reasons
as ChargePointErrorCode), the CALL of a queued row (a placeholder transactionId replaced by
the backend's), the retry rule, and what a confirmation means (StartTransaction's
transactionId settles the placeholders; an idTagInfo is cached, a refused one stops the
transaction when StopTransactionOnInvalidId)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import OCPPError
from ocpp.v16 import call
from websockets.asyncio.client import ClientConnection

from controller.ocpp.auth import AuthCache
from controller.ocpp.availability import Availability
from controller.ocpp.bridge import StationView
from controller.ocpp.config import OcppConfig
from controller.ocpp.link import BootAnswer, Session
from controller.ocpp.outbox import standard_retry
from controller.ocpp.ports import Log
from controller.ocpp.queue import MessageQueue, Queued
from controller.ocpp.smart_charging import Profiles
from controller.ocpp.v16.client import Host16, Ocpp16Client
from controller.ocpp.v16.config_keys import ConfigKeys
from controller.ocpp.v16.transactions import TX_ACTIONS, Transactions16
from controller.ocpp.wire import iso
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


class Adapter16:
    """The 1.6 messages of the link; the idTag cache answers (``remember``)."""

    def __init__(self, cfg: OcppConfig, station_id: str, keys: ConfigKeys,
                 queue: MessageQueue, tx: Transactions16, profiles: Profiles,
                 view: StationView, availability: Availability, auth_cache: AuthCache,
                 host: Host16, log: Log) -> None:
        self.cfg, self.station_id, self.keys, self.queue, self.tx = (
            cfg, station_id, keys, queue, tx)
        self.profiles, self.view, self.availability, self.auth_cache = (
            profiles, view, availability, auth_cache)
        self.host, self.log = host, log
        self.wall = view.wall
        self.reasons: dict[int, str | None] = {}  # of the last state change, per gun

    def make_client(self, ws: ClientConnection) -> Session:
        return Ocpp16Client(self.station_id, ws, self.host, self.cfg.response_timeout_s)

    def password(self) -> str | None:
        return self.keys.get("AuthorizationKey") or None

    def ping_interval(self) -> float:
        return self.keys.num("WebSocketPingInterval")

    def backoff(self) -> tuple[float, float, int]:
        c = self.cfg
        return (c.retry_backoff_wait_minimum_s, c.retry_backoff_random_range_s,
                c.retry_backoff_repeat_times)

    def heartbeat_interval(self) -> float:
        return max(1.0, self.keys.num("HeartbeatInterval"))

    async def boot(self, cp: Session, timeout: float) -> BootAnswer | None:
        try:
            r = await asyncio.wait_for(cp.call(call.BootNotification(
                charge_point_model=self.cfg.model, charge_point_vendor=self.cfg.vendor,
                charge_point_serial_number=self.cfg.serial_number,
                firmware_version=self.cfg.firmware_version), suppress=False), timeout)
        except (OCPPError, TimeoutError) as exc:
            self.log.warning("BootNotification failed", error=repr(exc)[:200])
            return None
        self.log.info("boot", status=r.status, interval=r.interval)
        if r.interval > 0:  # the backend's heartbeat interval (not persisted: it says it again)
            self.keys.values["HeartbeatInterval"] = str(int(r.interval))
        return BootAnswer(str(r.status), int(r.interval))

    async def heartbeat(self, cp: Session) -> None:
        await cp.call(call.Heartbeat(), suppress=False)

    def connectors(self) -> range:
        """-1 is connector 0, the station."""
        return range(-1, self.view.guns)

    async def status(self, cp: Session, g: int) -> None:
        """StatusNotification of connector ``g + 1`` (g = -1: connector 0, the station)."""
        if g < 0:
            status, code, info = ("Available" if self.availability.states.get(0, True)
                                  else "Unavailable"), "NoError", None
        else:
            station = self.view.station
            session = station.sessions[g] if station is not None else None
            state = session.state if session is not None else None
            status = state.ocpp16 if state is not None else "Available"
            why = self.reasons.get(g) or (session.reason if session is not None else None)
            code = error_code(state, why) if state is not None else "NoError"
            info = (why or "")[:50] if code != "NoError" else None
            if (not self.availability.operative(g) and g not in self.tx.open
                    and status != "Faulted"):
                status = "Unavailable"
        await cp.call(call.StatusNotification(connector_id=g + 1, error_code=code,
                                              status=status, timestamp=iso(self.wall()),
                                              info=info or None), suppress=False)

    def build_call(self, msg: Queued) -> object | None:
        payload = {k: v for k, v in msg.payload.items() if not k.startswith("_")}
        tid = payload.get("transactionId")
        if msg.action in TX_ACTIONS and isinstance(tid, int) and tid < 0:
            real = self.tx.real_id(tid)
            if real is None:  # its StartTransaction was dropped: no id will ever come
                self.log.error("transaction message dropped: its StartTransaction was never "
                               "confirmed", action=msg.action, placeholder=tid)
                return None
            payload["transactionId"] = real
        built: object = getattr(call, msg.action)(**camel_to_snake_case(payload))
        return built

    def retry_wait(self, msg: Queued, tries: int, exc: Exception) -> float | None:
        """Transaction messages: TransactionMessageAttempts, TransactionMessageRetryInterval
        × attempts apart (see :func:`standard_retry`)."""
        return standard_retry(msg, tries, exc, TX_ACTIONS,
                              int(self.keys.num("TransactionMessageAttempts")),
                              self.keys.num("TransactionMessageRetryInterval"))

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

    def delivered(self, msg: Queued, result: Any) -> None:
        info = getattr(result, "id_tag_info", None)
        if msg.action != "StartTransaction":
            self.queue.done(msg.id)
            if info and msg.payload.get("idTag"):
                self.remember(str(msg.payload["idTag"]), info)
            return
        real = int(result.transaction_id)
        local = int(msg.payload.get("_local", real))
        n = self.tx.resolve(msg, real)
        g = self.tx.find(real)
        if g is not None:
            self.profiles.tx[g + 1] = (str(real), self.profiles.tx.get(
                g + 1, ("", self.wall()))[1])
        self.log.info("transaction started at the backend", transaction_id=real,
                      placeholder=local, rewritten=n)
        tag = str(msg.payload["idTag"])
        status = self.remember(tag, info)
        if tag == FREE_ID_TAG:  # the station's own free-charging decision stands
            return
        if status != "Accepted" and g is not None and self.keys.flag(
                "StopTransactionOnInvalidId"):
            self.log.warning("idTag not accepted: stopping", gun=g, status=status)
            self.view.attached.stop_charging(g, "DeAuthorized")
