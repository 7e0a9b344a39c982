"""The OCPP 1.6J client of the station (``ocpp.version = "1.6"``, subprotocol ``ocpp1.6``),
a composition of the version-neutral parts and the 1.6 ones.

``Ocpp16Service(cfg, station_config, wall=...)`` has the interface of
:class:`~controller.ocpp.v201.service.OcppService` (both are
:class:`~controller.ocpp.ports.OcppClientPort`): ``attach(station)``, ``await run()``,
``stop()``, ``await close()``, ``on_reset``, ``online``, ``queue``. Each gun is a connector
(1, 2, ...), connector 0 the station. No behaviour is inherited; the members the handlers use
(:class:`~controller.ocpp.v16.client.Host16`) delegate to the part that owns them, those both
versions delegate alike once in :class:`~controller.ocpp.shell.ServiceShell`.
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
from controller.ocpp.v16.adapter import Adapter16
from controller.ocpp.v16.config_keys import ConfigKeys, Key, standard_keys
from controller.ocpp.v16.reporter import Reporter16
from controller.ocpp.v16.transactions import TX_ACTIONS, Transactions16, periodic16
from controller.ocpp.wire import utc_now


class Ocpp16Service(ServiceShell):
    """The station's OCPP 1.6J side, built from its parts."""

    adapter: Adapter16

    def __init__(self, cfg: OcppConfig, station_config: StationConfig, *,
                 wall: Callable[[], datetime] = utc_now) -> None:
        self.cfg = cfg
        self.wall = wall
        self.station_id = cfg.station_id or station_config.station.id
        self.guns = len(station_config.guns)
        self.log = logs.get_logger("controller.ocpp16", station=self.station_id)
        self.db = storage.open_db(cfg.database)
        self.keys = ConfigKeys(self.db, standard_keys(cfg, station_config))
        logs.add_secret(self.keys.get("AuthorizationKey") or None, user=self.station_id)
        self.queue = MessageQueue(self.db, cfg.queue_max,
                                  kept=(*TX_ACTIONS, "SecurityEventNotification"),
                                  periodic=periodic16)
        self.outbox = Outbox(self.queue, wall)
        self.tasks = Tasks(self.log)
        self.progress = Progress()
        keys = self.keys
        self.auth_cache = AuthCache(self.db, wall,
                                    lambda: keys.flag("AuthorizationCacheEnabled"),
                                    lambda: cfg.auth_cache_lifetime_s)
        self.tx = Transactions16(self.db, self.queue, wall)
        self.profiles = Profiles(self.db, self.guns,
                                 [g.max_voltage_v for g in station_config.guns],
                                 int(keys.num("ChargeProfileMaxStackLevel")),
                                 int(keys.num("ChargingScheduleMaxPeriods")))
        self.view = StationView(station_config.guns, station_config.station.max_kw * 1000.0,
                                self.profiles, self.tx, wall)
        #: ChangeAvailability by connector id (0: the station), persisted.
        self.avail = Availability(self.db, self.guns, self.view)
        self.adapter = Adapter16(cfg, self.station_id, keys, self.queue, self.tx,
                                 self.profiles, self.view, self.avail, self.auth_cache, self,
                                 self.log)
        self.link = Link(cfg, self.station_id, self.log, self.queue, self.outbox, self.tasks,
                         self.progress, self.adapter, Connectivity())
        self.resets = Resets(self.view, self.tx, self.queue, self.link, self.progress,
                             self.log)
        self.reporter = Reporter16(self.view, keys, self.tx, self.profiles, self.auth_cache,
                                   self.avail, self.link, self.adapter, self.outbox,
                                   self.tasks, self.progress, self.resets, self.log)
        #: The station's authorizer (installed by ``attach``).
        self.authorize: Authorizer = self.reporter.authorize
        self.bridge = StationBridge(self.view, self.reporter, self.avail, self.authorize,
                                    self.outbox.notify)
        self.avail.on_apply.append(self.link.send_status)
        self.keys.on_change.append(self._changed)
        self.outbox.security_event("StartupOfTheDevice", "controller started")

    def _changed(self, key: Key, value: str) -> None:
        if key.name == "AuthorizationKey":  # a password the backend set never reaches a log
            logs.add_secret(value, user=self.station_id)
        if key.name == "HeartbeatInterval":
            self.link.kick()

    # ------------------------------------------------------------------ OcppClientPort
    async def close(self) -> None:
        """Stop, end the transactions still open (Reboot, queued), close the database."""
        self.link.stop()
        self.bridge.detach()
        self.bridge.end_orphans()
        for gun in list(self.tx.open):
            self.reporter.stop_tx(gun, "Reboot")
        await self.link.close()
        self.db.close()

    def on_setting_change(self, hook: ChangeHook, *, first: bool = False) -> None:
        """``hook(key name, value)`` after every configuration key write."""
        def call(key: Key, value: str) -> None:
            hook(key.name, value)
        self.keys.on_change.insert(0 if first else len(self.keys.on_change), call)

    # ------------------------------------------------------------------ Host16 (handlers)
    def nameplate_w(self, evse: int) -> float:
        return self.view.nameplate_w(evse)

    def change_availability(self, evse: int, operative: bool) -> str:
        """ChangeAvailability; connector 0's own status is reported too."""
        status = self.avail.change(evse, operative)
        if evse == 0:
            self.link.send_status(-1)
        return status

    def remote_start(self, id_tag: str, connector: int | None,
                     profile: dict[str, Any] | None) -> str:
        return self.reporter.remote_start(id_tag, connector, profile)

    async def reset(self, hard: bool) -> None:
        await self.reporter.reset(hard)

    async def triggered(self, what: str, connector: int | None) -> None:
        await self.reporter.triggered(what, connector)
