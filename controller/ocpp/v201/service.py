"""The station's OCPP 2.0.1 client: a composition of parts (issue 6, issue 20).

``OcppService(cfg, station_config)``; ``attach(station)`` subscribes to the station's events
and installs the authorizer; ``await run()`` keeps the connection (with the Part 4 back-off)
until ``stop()``. The control cycle never waits on it: observers only update state and put
messages into the SQLite queue; a sender task drains the queue while online.

No behaviour is inherited: the service builds its parts, each with its collaborators, and
wires the few listeners (a written HeartbeatInterval restarts the heartbeat wait, an
applied availability reports the gun's status). The members the handlers use
(:class:`~controller.ocpp.v201.client.Host201`) delegate to the part that owns them; those both
versions delegate alike are declared once in :class:`~controller.ocpp.shell.ServiceShell`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from controller import logs
from controller.config import StationConfig
from controller.ocpp import storage
from controller.ocpp.auth import AuthCache
from controller.ocpp.availability import Availability
from controller.ocpp.bridge import StationBridge, StationView
from controller.ocpp.config import OcppConfig
from controller.ocpp.link import Connectivity, Link
from controller.ocpp.outbox import Outbox
from controller.ocpp.ports import Authorizer, ChangeHook
from controller.ocpp.queue import MessageQueue
from controller.ocpp.reset import Resets
from controller.ocpp.shell import ServiceShell
from controller.ocpp.smart_charging import Profiles
from controller.ocpp.tasks import Progress, Tasks
from controller.ocpp.v201.adapter import Adapter201, BackendClock
from controller.ocpp.v201.device_model import DeviceModel, Var, default_vars
from controller.ocpp.v201.reporter import Reporter201
from controller.ocpp.v201.transactions import Transactions
from controller.ocpp.wire import iso, utc_now


class OcppService(ServiceShell):
    """The station's OCPP 2.0.1 side, built from its parts."""

    adapter: Adapter201

    def __init__(self, cfg: OcppConfig, station_config: StationConfig, *,
                 wall: Callable[[], datetime] = utc_now) -> None:
        self.cfg = cfg
        self.station_id = cfg.station_id or station_config.station.id
        self.guns = len(station_config.guns)
        self.log = logs.get_logger("controller.ocpp", station=self.station_id)
        self.db = storage.open_db(cfg.database)
        self.queue = MessageQueue(self.db, cfg.queue_max)
        self.clock = BackendClock(wall, self.log)
        self.dm = DeviceModel(self.db, default_vars(cfg, station_config),
                              {("ClockCtrlr", "DateTime"): lambda: iso(self.clock())})
        self.outbox = Outbox(self.queue, self.clock)
        self.tasks = Tasks(self.log)
        self.progress = Progress()
        dm = self.dm
        self.auth_cache = AuthCache(self.db, self.clock, lambda: dm.flag(
            "AuthCacheCtrlr", "Enabled"), lambda: dm.num("AuthCacheCtrlr", "LifeTime"))
        self.connectivity = Connectivity()
        self.tx = Transactions(self.db, self.queue, self.clock, self.connectivity.is_online)
        self.profiles = Profiles(self.db, self.guns,
                                 [g.max_voltage_v for g in station_config.guns],
                                 int(dm.num("SmartChargingCtrlr", "ProfileStackLevel")),
                                 int(dm.num("SmartChargingCtrlr", "PeriodsPerSchedule")))
        self.view = StationView(station_config.guns, station_config.station.max_kw * 1000.0,
                                self.profiles, self.tx, self.clock)
        #: ChangeAvailability by EVSE id (0: the station), persisted.
        self.avail = Availability(self.db, self.guns, self.view)
        self.adapter = Adapter201(cfg, self.station_id, self.db, dm, self.queue, self.tx,
                                  self.view, self.avail, self.clock, self.outbox, self,
                                  self.log)
        self.link = Link(cfg, self.station_id, self.log, self.queue, self.outbox, self.tasks,
                         self.progress, self.adapter, self.connectivity)
        self.resets = Resets(self.view, self.tx, self.queue, self.link, self.progress,
                             self.log)
        self.reporter = Reporter201(self.view, dm, self.tx, self.profiles, self.auth_cache,
                                    self.avail, self.link, self.adapter, self.outbox,
                                    self.tasks, self.progress, self.resets, self.clock,
                                    self.log)
        #: The station's authorizer (installed by ``attach``).
        self.authorize: Authorizer = self.reporter.authorize
        self.bridge = StationBridge(self.view, self.reporter, self.avail, self.authorize,
                                    self.outbox.notify)
        self.avail.on_apply.append(self.link.send_status)
        self.dm.on_change.append(self._changed)
        self.outbox.security_event("StartupOfTheDevice", "controller started")

    def _changed(self, var: Var, value: str) -> None:
        if var.name == "HeartbeatInterval":
            self.link.kick()

    # ------------------------------------------------------------------ OcppClientPort
    async def close(self) -> None:
        """Stop, end the transactions still open (Reboot, queued) and close the database."""
        self.link.stop()
        self.bridge.detach()
        self.bridge.end_orphans()
        for gun in list(self.tx.open):
            self.tx.end(gun, "Reboot", self.view.last[gun],
                        self.dm.members("SampledDataCtrlr", "TxEndedMeasurands"))
        await self.link.close()
        self.db.close()

    def on_setting_change(self, hook: ChangeHook, *, first: bool = False) -> None:
        """``hook(variable name, value)`` after every device-model write."""
        def call(var: Var, value: str) -> None:
            hook(var.name, value)
        self.dm.on_change.insert(0 if first else len(self.dm.on_change), call)

    # ------------------------------------------------------------------ Host201 (handlers)
    @property
    def boot_reason(self) -> str:
        return self.adapter.boot_reason

    @property
    def reset_pending(self) -> bool:
        return self.resets.pending

    @reset_pending.setter
    def reset_pending(self, pending: bool) -> None:
        self.resets.pending = pending

    def wall(self) -> datetime:
        """The time base of every OCPP timestamp: the local clock plus the adopted offset."""
        return self.clock()

    def sync_clock(self, current_time: str) -> None:
        self.adapter.sync_clock(current_time)

    def change_availability(self, evse: int, operative: bool) -> str:
        return self.avail.change(evse, operative)

    def remote_start(self, id_token: dict[str, Any], remote_id: int, evse_id: int | None,
                     profile: dict[str, Any] | None) -> tuple[str, str, str | None]:
        return self.reporter.remote_start(id_token, remote_id, evse_id, profile)

    async def reset(self, immediate: bool) -> None:
        await self.reporter.reset(immediate)

    async def triggered(self, what: str, g: int | None) -> None:
        await self.reporter.triggered(what, g)

    async def send_report(self, request_id: int, base: str) -> None:
        await self.reporter.send_report(request_id, base)

    def find_profiles(self, crit: dict[str, Any], evse: int | None
                      ) -> list[tuple[int, dict[str, Any]]]:
        return self.reporter.find_profiles(crit, evse)

    async def report_profiles(self, request_id: int, crit: dict[str, Any],
                              evse: int | None) -> None:
        await self.reporter.report_profiles(request_id, crit, evse)
