"""The OCPP 1.6J client of the station (``ocpp.version = "1.6"``, subprotocol ``ocpp1.6``).

``Ocpp16Service(cfg, station_config, wall=...)`` has the interface of
:class:`~controller.ocpp.service.OcppService`: ``attach(station)``, ``await run()``,
``stop()``, ``await close()``, ``on_reset``, ``online``, ``queue``. Each gun is a connector
(1, 2, ...), connector 0 the station. Connection loop, boot loop, heartbeat, queue sender,
security events and availability are the shared :class:`~controller.ocpp.common.Link`;
limits go through the shared :class:`~controller.ocpp.smart_charging.Profiles`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import OCPPError
from ocpp.v16 import call

from controller import logs
from controller.config import StationConfig
from controller.ocpp.common import AuthCache, Link, standard_retry
from controller.ocpp.config import OcppConfig
from controller.ocpp.ports import ChangeHook
from controller.ocpp.queue import MessageQueue, Queued
from controller.ocpp.remote_start import RemoteStarts
from controller.ocpp.smart_charging import Profiles
from controller.ocpp.wire import iso, utc_now
from controller.ocpp16.client import Ocpp16Client
from controller.ocpp16.config_keys import ConfigKeys, Key, standard_keys
from controller.ocpp16.station_side import FREE_ID_TAG, StationSide16, error_code
from controller.ocpp16.transactions import TX_ACTIONS, Transactions16, periodic16
from controller.records import GunRecord


class Ocpp16Service(Link, StationSide16):
    """The station's OCPP 1.6J side: connection, queue, transactions, profiles, keys."""

    def __init__(self, cfg: OcppConfig, station_config: StationConfig, *,
                 wall: Callable[[], datetime] = utc_now) -> None:
        self.wall = wall
        self._open(cfg, station_config, "controller.ocpp16")
        self.keys = ConfigKeys(self.db, standard_keys(cfg, station_config))
        self.keys.on_change.append(self._changed)
        logs.add_secret(self.keys.get("AuthorizationKey") or None, user=self.station_id)
        self.queue = MessageQueue(self.db, cfg.queue_max,
                                  kept=(*TX_ACTIONS, "SecurityEventNotification"),
                                  periodic=periodic16)
        self._link_init()
        self.auth_cache = AuthCache(self.db, self.wall,
                                    lambda: self.keys.flag("AuthorizationCacheEnabled"),
                                    lambda: cfg.auth_cache_lifetime_s)
        self.tx = Transactions16(self.db, self.queue, self.wall)
        self.profiles = Profiles(self.db, self.guns, [g.max_voltage_v for g in self.gun_cfg],
                                 int(self.keys.num("ChargeProfileMaxStackLevel")),
                                 int(self.keys.num("ChargingScheduleMaxPeriods")))
        self.on_reset: Callable[[], None] | None = None
        self.last: list[GunRecord | None] = [None] * self.guns
        self.tags: dict[int, str] = {}
        self.reasons: dict[int, str | None] = {}  # of the last state change, per gun
        #: The idTag of RemoteStartTransaction per gun.
        self.remote: RemoteStarts[str] = RemoteStarts(self.log)
        self._aligned_slot: float | None = None
        self.orphans = set(self.tx.open)  # left open by a crash: ended at the first reading
        self.security_event("StartupOfTheDevice", "controller started")

    # ------------------------------------------------------------------ wiring
    async def close(self) -> None:
        """Stop, end the transactions still open (Reboot, queued), close the database."""
        self._detach()
        for gun in sorted(self.orphans):
            self.end_orphan(gun, None)
        for gun in list(self.tx.open):
            self.stop_tx(gun, "Reboot")
        await self._close_link()
        self.db.close()

    def on_setting_change(self, hook: ChangeHook, *, first: bool = False) -> None:
        """``hook(key name, value)`` after every configuration key write."""
        def call(key: Key, value: str) -> None:
            hook(key.name, value)
        self.keys.on_change.insert(0 if first else len(self.keys.on_change), call)

    def _changed(self, key: Key, value: str) -> None:
        if key.name == "AuthorizationKey":  # a password the backend set never reaches a log
            logs.add_secret(value, user=self.station_id)
        if key.name == "HeartbeatInterval":
            self._kick.set()

    def change_availability(self, evse: int, operative: bool) -> str:
        status = super().change_availability(evse, operative)
        if evse == 0:
            self._send_status(-1)
        return status

    # ------------------------------------------------------------------ Link hooks
    def link_password(self) -> str | None:
        return self.keys.get("AuthorizationKey") or None

    def link_ping(self) -> float:
        return self.keys.num("WebSocketPingInterval")

    def link_backoff(self) -> tuple[float, float, int]:
        c = self.cfg
        return (c.retry_backoff_wait_minimum_s, c.retry_backoff_random_range_s,
                c.retry_backoff_repeat_times)

    def heartbeat_interval(self) -> float:
        return max(1.0, self.keys.num("HeartbeatInterval"))

    def make_client(self, ws: Any) -> Ocpp16Client:
        return Ocpp16Client(self.station_id, ws, self, self.cfg.response_timeout_s)

    async def boot_once(self, cp: Any) -> int:
        try:
            r = await asyncio.wait_for(cp.call(call.BootNotification(
                charge_point_model=self.cfg.model, charge_point_vendor=self.cfg.vendor,
                charge_point_serial_number=self.cfg.serial_number,
                firmware_version=self.cfg.firmware_version), suppress=False),
                self.boot_timeout())
        except (OCPPError, TimeoutError) as exc:
            self.log.warning("BootNotification failed", error=repr(exc)[:200])
            return 0
        self.boot_status = r.status
        self.log.info("boot", status=r.status, interval=r.interval)
        if r.interval > 0:  # the backend's heartbeat interval (not persisted: it says it again)
            self.keys.values["HeartbeatInterval"] = str(int(r.interval))
        if r.status == "Accepted":
            self._booted.set()
        return int(r.interval)

    async def heartbeat_once(self, cp: Any) -> None:
        await cp.call(call.Heartbeat(), suppress=False)

    async def send_statuses(self, cp: Any) -> None:
        for g in range(-1, self.guns):
            await self.tolerant("StatusNotification", self._status(cp, g))

    async def _status(self, cp: Any, g: int) -> None:
        """StatusNotification of connector ``g + 1`` (g = -1: connector 0, the station)."""
        if g < 0:
            status, code, info = ("Available" if self.availability.get(0, True)
                                  else "Unavailable"), "NoError", None
        else:
            session = self.station.sessions[g] if self.station is not None else None
            state = session.state if session is not None else None
            status = state.ocpp16 if state is not None else "Available"
            why = self.reasons.get(g) or (session.reason if session is not None else None)
            code = error_code(state, why) if state is not None else "NoError"
            info = (why or "")[:50] if code != "NoError" else None
            if not self.operative(g) and g not in self.tx.open and status != "Faulted":
                status = "Unavailable"
        await cp.call(call.StatusNotification(connector_id=g + 1, error_code=code,
                                              status=status, timestamp=iso(self.wall()),
                                              info=info or None), suppress=False)

    def build_call(self, msg: Queued) -> Any:
        payload = {k: v for k, v in msg.payload.items() if not k.startswith("_")}
        tid = payload.get("transactionId")
        if msg.action in TX_ACTIONS and isinstance(tid, int) and tid < 0:
            real = self.tx.real_id(tid)
            if real is None:  # its StartTransaction was dropped: no id will ever come
                self.log.error("transaction message dropped: its StartTransaction was never "
                               "confirmed", action=msg.action, placeholder=tid)
                return None
            payload["transactionId"] = real
        return getattr(call, msg.action)(**camel_to_snake_case(payload))

    def retry_wait(self, msg: Queued, tries: int, exc: Exception) -> float | None:
        """Transaction messages: TransactionMessageAttempts, TransactionMessageRetryInterval
        × attempts apart (see :func:`standard_retry`)."""
        return standard_retry(msg, tries, exc, TX_ACTIONS,
                              int(self.keys.num("TransactionMessageAttempts")),
                              self.keys.num("TransactionMessageRetryInterval"))

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
            self.attached.stop_charging(g, "DeAuthorized")
