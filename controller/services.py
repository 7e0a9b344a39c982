"""The station's services around the control cycle, run together until asked to stop.

``mwc run`` (and the demo) start the station and, when configured, the OCPP 2.0.1 client
(transactions, remote commands, charging profiles into the LimitBook) and the MQTT side
(grid limits into the LimitBook, telemetry and events out). Each service is a task; the
control cycle never waits on any of them (they exchange data through the LimitBook and the
station's observer list only), and a failing service is logged without stopping the cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from controller import logs
from controller.config import StationConfig
from controller.station import Station


def mqtt_services(
    station: Station, cfg: StationConfig,
    unsubscribe: list[Callable[[], None]] | None = None,
) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """Grid limit source and telemetry publisher for ``station``; none when MQTT is off.
    The telemetry observer's remover goes into ``unsubscribe`` (for a restart)."""
    if cfg.mqtt is None:
        return []
    from controller.grid import GridLimitSource
    from controller.mqtt import MqttConnection
    from controller.telemetry import TelemetryPublisher

    conn = MqttConnection(cfg.mqtt, cfg.station.id)
    telemetry = TelemetryPublisher(conn)
    grid = GridLimitSource(
        station.limits, conn, fallback_w=cfg.station.fallback_grid_kw * 1000.0,
        events=telemetry, mono=station.clock,  # expiries on the clock the cycle reads
    )
    off = station.subscribe(telemetry.observe)
    if unsubscribe is not None:
        unsubscribe.append(off)
    return [("mqtt", conn.run()), ("telemetry", telemetry.run()), ("grid", grid.run())]


async def _guard(name: str, coro: Coroutine[Any, Any, None]) -> None:
    """Run one service; an unexpected error is logged and the service is not restarted."""
    log = logs.get_logger("controller.services", service=name)
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("service_failed")


def ocpp_service(station: Station, cfg: StationConfig) -> Any:
    """The OCPP 2.0.1 client attached to ``station`` (observer + authorizer); None when off.

    Must be attached before the station runs, so no session starts unobserved.
    """
    if cfg.ocpp is None:
        return None
    from controller.ocpp.service import OcppService

    svc = OcppService(cfg.ocpp, cfg)
    svc.attach(station)
    return svc


async def run_services(station: Station, cfg: StationConfig, stop: asyncio.Event) -> None:
    """Run the station's cycle loop and its services until ``stop`` is set.

    On the way out the OCPP client ends the transactions still open (queued for the backend,
    sent on the next start) and closes its database. An OCPP Reset (B11/B12) restarts them:
    the client ends the transactions and calls its ``on_reset``; the cycle loop stops, the
    services are closed, the station is restarted in place (``Station.restart``: setpoints
    0, contactors opened at low current, fresh state) and everything starts again (the
    client boots with reason RemoteReset). The caller still owns ``station`` and closes it.
    """
    log = logs.get_logger("controller.services", station=cfg.station.id)
    while True:
        reset = asyncio.Event()
        await _run_once(station, cfg, stop, reset)
        if stop.is_set() or not reset.is_set():
            return
        log.warning("OCPP Reset: restarting the station and its services")
        await station.restart()


async def _run_once(station: Station, cfg: StationConfig, stop: asyncio.Event,
                    reset: asyncio.Event) -> None:
    """One life of the services: until ``stop``, or until a Reset sets ``reset``."""
    ocpp = ocpp_service(station, cfg)
    unsubscribe: list[Callable[[], None]] = []
    extra = mqtt_services(station, cfg, unsubscribe)
    if ocpp is not None:
        def on_reset() -> None:
            reset.set()
            station.stop()  # the cycle loop ends after the current cycle

        ocpp.on_reset = on_reset
        extra.append(("ocpp", ocpp.run()))
    tasks = [asyncio.create_task(_guard(name, coro)) for name, coro in extra]
    try:
        await station.run(stop)
    finally:
        if ocpp is not None:
            ocpp.stop()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for off in unsubscribe:
            off()
        if ocpp is not None:
            await ocpp.close()
