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
from typing import TYPE_CHECKING, Any

from controller import logs
from controller.config import StationConfig
from controller.ocpp.ports import OcppClientPort, StationPort
from controller.station import Station

if TYPE_CHECKING:  # optional at run time: imported where used
    from controller.metrics import MetricsExporter
    from controller.mqtt import MqttConnection

#: How long the OCPP client gets to close its connection cleanly (close frame, the running
#: call answered) when the services stop, before its task is cancelled.
OCPP_STOP_S = 5.0


def mqtt_services(
    station: Station, cfg: StationConfig,
    unsubscribe: list[Callable[[], None]] | None = None,
    connections: list[MqttConnection] | None = None,
) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """Grid limit source and telemetry publisher for ``station``; none when MQTT is off.
    The telemetry observer's remover goes into ``unsubscribe`` (for a restart), the broker
    connection into ``connections`` (its state for the metrics)."""
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
    if connections is not None:
        connections.append(conn)
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


def ocpp_service(station: StationPort, cfg: StationConfig) -> OcppClientPort | None:
    """The OCPP client (2.0.1 or 1.6J by ``ocpp.version``, built by
    :func:`controller.ocpp.factory.build_client`) attached to ``station`` (observer +
    authorizer); None when off.

    Must be attached before the station runs, so no session starts unobserved.
    """
    from controller.ocpp.factory import build_client

    svc = build_client(cfg)
    if svc is not None:
        svc.attach(station)
    return svc


def watch_backend_secrets(ocpp: OcppClientPort, station_id: str) -> None:
    """Keep a password the backend stores out of the logs: the one persisted from an earlier
    run now, and every new one (2.0.1 SetVariables BasicAuthPassword, 1.6
    ChangeConfiguration AuthorizationKey) the moment it is written."""
    user = ocpp.station_id or station_id
    try:
        logs.add_secret(ocpp.link_password(), user=user)
    except Exception as exc:  # the redaction of later writes below still applies
        logs.get_logger("controller.services", station=station_id).error(
            "stored OCPP password not read: it may appear in logs", error=repr(exc)[:200])

    def changed(name: str, value: str) -> None:
        if name in ("BasicAuthPassword", "AuthorizationKey"):
            logs.add_secret(value, user=user)

    ocpp.on_setting_change(changed, first=True)  # before any other hook could log the value


async def start_metrics(station: Station, cfg: StationConfig) -> MetricsExporter | None:
    """The Prometheus endpoint when ``[metrics] enabled`` (no socket at all otherwise); a
    port that cannot be bound is logged and the station runs on without metrics."""
    if not cfg.metrics.enabled:
        return None
    from controller.metrics import MetricsExporter

    exporter = MetricsExporter(station, cfg.metrics)
    try:
        await exporter.start()
    except OSError as exc:
        await exporter.close()
        logs.get_logger("controller.services", station=cfg.station.id).error(
            "metrics endpoint not started", host=cfg.metrics.host, port=cfg.metrics.port,
            error=str(exc))
        return None
    return exporter


async def run_services(station: Station, cfg: StationConfig, stop: asyncio.Event) -> None:
    """Run the station's cycle loop and its services until ``stop`` is set.

    On the way out the OCPP client ends the transactions still open (queued for the backend,
    sent on the next start) and closes its database. An OCPP Reset (B11/B12) restarts them:
    the client ends the transactions and calls its ``on_reset``; the cycle loop stops, the
    services are closed, the station is restarted in place (``Station.restart``: setpoints
    0, contactors opened at low current, fresh state) and everything starts again (the
    client boots with reason RemoteReset). The caller still owns ``station`` and closes it.
    The metrics endpoint (when enabled) lives across such restarts.
    """
    logs.register_config_secrets(cfg)  # before any service connects or logs
    logs.bind_context(station=cfg.station.id)
    log = logs.get_logger("controller.services", station=cfg.station.id)
    exporter = await start_metrics(station, cfg)
    from controller.webview import start_webview

    view = await start_webview(station, cfg.webview)  # lives across restarts, as metrics
    try:
        while True:
            reset = asyncio.Event()
            await _run_once(station, cfg, stop, reset, exporter)
            if stop.is_set() or not reset.is_set():
                return
            log.warning("OCPP Reset: restarting the station and its services")
            await station.restart()
    finally:
        if view is not None:
            await view.close()
        if exporter is not None:
            await exporter.close()


async def _run_once(station: Station, cfg: StationConfig, stop: asyncio.Event,
                    reset: asyncio.Event, exporter: MetricsExporter | None = None) -> None:
    """One life of the services: until ``stop``, or until a Reset sets ``reset``."""
    ocpp = ocpp_service(station, cfg)
    if ocpp is not None:
        watch_backend_secrets(ocpp, cfg.station.id)
    unsubscribe: list[Callable[[], None]] = []
    connections: list[MqttConnection] = []
    extra = mqtt_services(station, cfg, unsubscribe, connections)
    if exporter is not None:
        exporter.collector.ocpp = ocpp
        exporter.collector.mqtt = connections[0] if connections else None
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
        if exporter is not None:  # before the database closes under a scrape
            exporter.collector.ocpp = exporter.collector.mqtt = None
        if ocpp is not None:
            online = ocpp.online
            ocpp.stop()  # its loop ends the connection with a close frame: give it a moment
            ocpp_task = [t for (name, _), t in zip(extra, tasks, strict=True) if name == "ocpp"]
            if online:
                await asyncio.wait(ocpp_task, timeout=OCPP_STOP_S)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for off in unsubscribe:
            off()
        if ocpp is not None:
            await ocpp.close()
