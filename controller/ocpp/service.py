"""Wires the OCPP client to a :class:`~controller.station.Station` (issue 6).

``OcppService(cfg, station_config)``; ``attach(station)`` subscribes to the station's events
and installs :meth:`authorize` as its authorizer; ``await run()`` keeps the connection (with
the Part 4 back-off) until ``stop()``. The control cycle never waits on it: observers only
update state and put messages into the SQLite queue; a sender task drains the queue while
online.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import OCPPError
from ocpp.v201 import call

from controller.config import StationConfig
from controller.ocpp.client import OcppClient
from controller.ocpp.common import AuthCache, Link, standard_retry
from controller.ocpp.config import OcppConfig
from controller.ocpp.device_model import DeviceModel, Var, default_vars
from controller.ocpp.ports import ChangeHook
from controller.ocpp.queue import MessageQueue, Queued
from controller.ocpp.remote_start import RemoteStarts
from controller.ocpp.smart_charging import Profiles
from controller.ocpp.station_side import StationSide
from controller.ocpp.transactions import Transactions
from controller.ocpp.wire import iso, utc_now
from controller.records import GunRecord

#: A backend clock outside these is a broken backend, not a time to adopt.
MIN_SANE_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_SANE_TIME = datetime(9000, 1, 1, tzinfo=UTC)


class OcppService(Link, StationSide):
    """The station's OCPP 2.0.1 side: connection, queue, transactions, profiles, model."""

    def __init__(self, cfg: OcppConfig, station_config: StationConfig, *,
                 wall: Callable[[], datetime] = utc_now) -> None:
        self._local_wall = wall
        #: The backend's time minus ours (SettingSystemTime); OCPP timestamps use ``wall``.
        self.clock_offset = timedelta(0)
        self._open(cfg, station_config, "controller.ocpp")
        self.dm = DeviceModel(self.db, default_vars(cfg, station_config),
                              {("ClockCtrlr", "DateTime"): lambda: iso(self.wall())})
        self.dm.on_change.append(self._changed)
        self.queue = MessageQueue(self.db, cfg.queue_max)
        self._link_init()
        self.auth_cache = AuthCache(self.db, self.wall, lambda: self.dm.flag(
            "AuthCacheCtrlr", "Enabled"), lambda: self.dm.num("AuthCacheCtrlr", "LifeTime"))
        self.tx = Transactions(self.db, self.queue, self.wall, lambda: self.online)
        self.profiles = Profiles(self.db, self.guns, [g.max_voltage_v for g in self.gun_cfg],
                                 int(self.dm.num("SmartChargingCtrlr", "ProfileStackLevel")),
                                 int(self.dm.num("SmartChargingCtrlr", "PeriodsPerSchedule")))
        row = self.db.execute("SELECT reason FROM boot_reason").fetchone()
        self.boot_reason = str(row[0]) if row else "PowerUp"  # a Reset before this start
        self.reset_pending = False
        #: Called when a Reset has ended the transactions: the owner (``run_services``)
        #: restarts the station and its services. None: only the OCPP connection restarts.
        self.on_reset: Callable[[], None] | None = None
        self.last: list[GunRecord | None] = [None] * self.guns
        #: (idToken, remoteStartId) of RequestStartTransaction per gun (F01/F02).
        self.remote: RemoteStarts[tuple[dict[str, Any], int]] = RemoteStarts(self.log)
        self._last_grid: float | None = None
        self._aligned_slot: float | None = None
        self.orphans = set(self.tx.open)  # left open by a crash: ended at the first reading
        self.security_event("StartupOfTheDevice", "controller started")

    # ------------------------------------------------------------------ wiring
    def wall(self) -> datetime:
        """The time base of every OCPP timestamp: the local clock plus the adopted offset."""
        return self._local_wall() + self.clock_offset

    def sync_clock(self, current_time: str) -> None:
        """Adopt the backend's ``currentTime`` when it is off by more than the tolerance
        (the OS clock is not touched) and report it: SettingSystemTime is critical."""
        tol = self.dm.values.get(("ClockCtrlr", None, None, "TimeAdjustmentReportingThreshold",
                                  None))
        if not tol:
            return
        try:
            theirs = datetime.fromisoformat(current_time.replace("Z", "+00:00"))
            if theirs.tzinfo is None:
                theirs = theirs.replace(tzinfo=UTC)
            theirs = theirs.astimezone(UTC)  # year 1 at +14:00 is not a UTC time
            if not MIN_SANE_TIME <= theirs <= MAX_SANE_TIME:
                raise ValueError("outside 1970..9000")
        except (ValueError, OverflowError) as exc:
            self.log.warning("unusable currentTime from the backend: clock kept",
                             value=str(current_time)[:64], error=str(exc)[:100])
            return
        diff = theirs - self.wall()
        if abs(diff.total_seconds()) <= float(tol):
            return
        self.clock_offset += diff
        self.log.warning("clock set from the backend", adjusted_s=diff.total_seconds())
        self.security_event("SettingSystemTime",
                            f"time base adjusted by {diff.total_seconds():+.1f} s to the CSMS")

    async def close(self) -> None:
        """Stop, end the transactions still open (Reboot, queued) and close the database."""
        self._detach()
        for gun in sorted(self.orphans):
            self.end_orphan(gun, None)
        for gun in list(self.tx.open):
            self.tx.end(gun, "Reboot", self.last[gun], self._m("TxEndedMeasurands"))
        await self._close_link()
        self.db.close()

    def set_boot_reason(self, reason: str | None) -> None:
        """Persist the reason of the next boot (a Reset survives the restart it causes)."""
        with self.db:
            self.db.execute("DELETE FROM boot_reason")
            if reason is not None:
                self.db.execute("INSERT INTO boot_reason VALUES (?)", (reason,))

    def _m(self, name: str) -> list[str]:
        ctrl = "AlignedDataCtrlr" if name == "Measurands" else "SampledDataCtrlr"
        return self.dm.members(ctrl, name)

    def on_setting_change(self, hook: ChangeHook, *, first: bool = False) -> None:
        """``hook(variable name, value)`` after every device-model write."""
        def call(var: Var, value: str) -> None:
            hook(var.name, value)
        self.dm.on_change.insert(0 if first else len(self.dm.on_change), call)

    def _changed(self, var: Var, value: str) -> None:
        if var.name == "HeartbeatInterval":
            self._kick.set()

    async def boot_once(self, cp: OcppClient) -> int:
        """One BootNotification; returns the interval (0 when it failed)."""
        try:
            r = await asyncio.wait_for(cp.call(call.BootNotification(
                charging_station={"model": self.cfg.model, "vendor_name": self.cfg.vendor,
                                  "firmware_version": self.cfg.firmware_version,
                                  "serial_number": self.cfg.serial_number},
                reason=self.boot_reason), suppress=False), self.boot_timeout())
        except (OCPPError, TimeoutError) as exc:
            self.log.warning("BootNotification failed", error=repr(exc)[:200])
            return 0
        self.boot_status = r.status
        self.sync_clock(r.current_time)
        self.log.info("boot", status=r.status, interval=r.interval)
        if r.interval > 0:
            self.dm.values[("OCPPCommCtrlr", None, None, "HeartbeatInterval", None)] = str(
                r.interval)
        if r.status == "Accepted":
            self.boot_reason = "PowerUp"
            self.set_boot_reason(None)
            self._booted.set()
        return int(r.interval)

    def _deauthorized(self, payload: dict[str, Any]) -> None:
        tx_id = payload["transactionInfo"]["transactionId"]
        for g, tx in self.tx.open.items():
            if tx.tx_id == tx_id and self.dm.flag("TxCtrlr", "StopTxOnInvalidId"):
                self.attached.stop_charging(g, "DeAuthorized")

    async def _status(self, cp: OcppClient, g: int) -> None:
        state = self.station.sessions[g].state if self.station is not None else None
        status = state.ocpp201 if state is not None else "Available"
        if not self.operative(g) and g not in self.tx.open and status != "Faulted":
            status = "Unavailable"
        await cp.call(call.StatusNotification(timestamp=iso(self.wall()), connector_status=status,
                                              evse_id=g + 1, connector_id=1), suppress=False)

    # ------------------------------------------------------------------ Link hooks
    def link_password(self) -> str | None:
        return self.dm.get("SecurityCtrlr", "BasicAuthPassword") or None

    def link_ping(self) -> float:
        return self.dm.num("OCPPCommCtrlr", "WebSocketPingInterval")

    def link_backoff(self) -> tuple[float, float, int]:
        return (self.dm.num("OCPPCommCtrlr", "RetryBackOffWaitMinimum"),
                self.dm.num("OCPPCommCtrlr", "RetryBackOffRandomRange"),
                int(self.dm.num("OCPPCommCtrlr", "RetryBackOffRepeatTimes")))

    def heartbeat_interval(self) -> float:
        return self.dm.num("OCPPCommCtrlr", "HeartbeatInterval")

    def make_client(self, ws: Any) -> OcppClient:
        return OcppClient(self.station_id, ws, self, self.cfg.response_timeout_s)

    async def heartbeat_once(self, cp: OcppClient) -> None:
        r = await cp.call(call.Heartbeat(), suppress=False)
        self.sync_clock(r.current_time)

    async def send_statuses(self, cp: OcppClient) -> None:
        for g in range(self.guns):
            await self.tolerant("StatusNotification", self._status(cp, g))

    def build_call(self, msg: Queued) -> Any:
        return getattr(call, msg.action)(**camel_to_snake_case(msg.payload))

    def retry_wait(self, msg: Queued, tries: int, exc: Exception) -> float | None:
        """E13: TransactionEvents get MessageAttempts (see :func:`standard_retry`)."""
        return standard_retry(
            msg, tries, exc, ("TransactionEvent",),
            int(self.dm.num("OCPPCommCtrlr", "MessageAttempts", "TransactionEvent")),
            self.dm.num("OCPPCommCtrlr", "MessageAttemptInterval", "TransactionEvent"))

    def delivered(self, msg: Queued, result: Any) -> None:
        self.queue.done(msg.id)
        info = getattr(result, "id_token_info", None)
        if msg.action == "TransactionEvent" and info and info.get("status") != "Accepted":
            self._deauthorized(msg.payload)
