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
from collections.abc import Coroutine
from typing import Any

from controller import logs
from controller.config import StationConfig
from controller.station import Station


def mqtt_services(
    station: Station, cfg: StationConfig
) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """Grid limit source and telemetry publisher for ``station``; none when MQTT is off."""
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
    station.subscribe(telemetry.observe)
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
    sent on the next start) and closes its database.
    """
    ocpp = ocpp_service(station, cfg)
    extra = mqtt_services(station, cfg)
    if ocpp is not None:
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
        if ocpp is not None:
            await ocpp.close()
