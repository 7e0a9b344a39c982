"""One MQTT connection per station, shared by the grid limits (in) and telemetry (out).

Why one connection: the broker knows the station by one client id, and the last will that
marks the station offline belongs to that connection. :class:`MqttConnection` owns the
aiomqtt client, keeps it connected (reconnect with exponential backoff, re-entering
``async with client`` and resubscribing every time), publishes the retained status, and hands
incoming messages to the handlers registered with :meth:`MqttConnection.subscribe`.

Handlers run synchronously on the event loop (no awaits), so a limit is in the book before
the next message is read; publishers call :meth:`MqttConnection.publish`, which fails fast
with :class:`NotConnected` while the broker is away.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

import aiomqtt

from controller import logs
from controller.clock import WallSeconds

# The [mqtt] models live with the configuration; re-exported for existing imports.
from controller.config import MqttConfig as MqttConfig
from controller.config import TlsConfig as TlsConfig
from controller.config import TopicsConfig as TopicsConfig

MessageHandler = Callable[[str, bytes], object]  # the return value is ignored
ConnectHook = Callable[[], Awaitable[None]]


class EventSink(Protocol):
    """Where limit sources report what they did (``TelemetryPublisher`` is one)."""

    def event(self, kind: str, /, **fields: Any) -> None: ...


class NotConnected(Exception):
    """Raised by :meth:`MqttConnection.publish` while no broker connection is up."""


def rfc3339(t: float) -> str:
    """Wall-clock seconds as an RFC 3339 UTC string with milliseconds."""
    return (dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


def software_version() -> str:
    try:
        return metadata.version("mwcharge")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that Python 3.11's ``asyncio.wait_for`` swallowed.

    aiomqtt awaits every acknowledged call through ``wait_for``; on 3.11 a cancel that races
    with the acknowledgement is lost, and a task told to stop would carry on. Called after
    each such await so that shutdown always ends our tasks.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _tls_params(tls: TlsConfig) -> aiomqtt.TLSParameters:
    return aiomqtt.TLSParameters(
        ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
        cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )


@dataclass
class _Subscription:
    topic: str
    qos: int
    handler: MessageHandler


class MqttConnection:
    """The station's broker connection; run :meth:`run` as a task for the process lifetime.

    ``subscribe`` and ``on_connect`` register before :meth:`run` starts (later ones take
    effect at the next reconnection). Every (re)connection subscribes all topics again,
    publishes the retained status ``{"state": "online", ...}`` and calls the hooks. The
    SUBACK and PUBACK awaited there also prove the session is up: aiomqtt 2.5, when
    re-entered after a lost connection, returns from ``__aenter__`` without waiting for the
    CONNACK. The last will publishes ``{"state": "offline", ...}``
    retained when the connection dies without a clean disconnect; a clean stop (the task
    cancelled) publishes the offline status itself first.
    """

    def __init__(self, config: MqttConfig, station_id: str, *, version: str | None = None,
                 wall: WallSeconds = time.time, rng: random.Random | None = None) -> None:
        self.config = config
        self.station_id = station_id
        self.version = version or software_version()
        self._wall = wall
        self._rng = rng or random.Random()
        self._subs: list[_Subscription] = []
        self._hooks: list[ConnectHook] = []
        self._connected = asyncio.Event()
        self._client: Any = None
        self._failures = 0
        self.connects = 0  # successful connections so far (tests, telemetry)
        self.handler_failures = 0  # messages a handler raised on (a bug: tests, fuzzing)
        self.since: str | None = None  # when the current connection came up
        self.status_topic = config.topic("status", station_id)
        self._log = logs.get_logger("mwc.mqtt", station_id=station_id)

    # ------------------------------------------------------------------ registration
    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1) -> None:
        """Deliver messages on ``topic`` (no wildcards) to ``handler(topic, payload)``."""
        self._subs.append(_Subscription(topic, qos, handler))

    def on_connect(self, hook: ConnectHook) -> None:
        """Await ``hook()`` after each (re)connection, once the subscriptions are in place."""
        self._hooks.append(hook)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def failures(self) -> int:
        """Failed attempts since the last successful connection (0 while connected)."""
        return self._failures

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # ------------------------------------------------------------------ client
    def _status(self, state: str, **extra: Any) -> bytes:
        body = {"state": state, "station_id": self.station_id, "version": self.version, **extra}
        return json.dumps(body).encode()

    def make_client(self) -> aiomqtt.Client:
        """The aiomqtt client with everything from the configuration, including the will."""
        c = self.config
        will = aiomqtt.Will(self.status_topic, self._status("offline", since=None,
                                                             reason="connection lost"),
                            qos=1, retain=True)
        return aiomqtt.Client(
            c.host, c.port,
            username=c.username,
            password=c.password.get_secret_value() if c.password is not None else None,
            identifier=c.client_id or f"mwc-{self.station_id}",
            will=will, keepalive=c.keepalive_s, timeout=c.timeout_s,
            tls_params=_tls_params(c.tls) if c.tls is not None else None,
            tls_insecure=c.tls.insecure if c.tls is not None else None,
            clean_session=True,
        )

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0,
                      retain: bool = False) -> None:
        """Publish now; :class:`NotConnected` while down, ``aiomqtt.MqttError`` if it fails."""
        client = self._client
        if client is None or not self._connected.is_set():
            raise NotConnected(topic)
        await client.publish(topic, payload, qos=qos, retain=retain)
        raise_if_cancelling()

    # ------------------------------------------------------------------ loop
    def backoff_s(self, failures: int) -> float:
        """Delay before attempt ``failures + 1``: doubling from the minimum, jittered ±20 %."""
        c = self.config
        base = min(c.reconnect_max_s, c.reconnect_min_s * 2 ** min(failures - 1, 30))
        return float(base * self._rng.uniform(0.8, 1.2))

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; returns only when cancelled."""
        if self._client is None:
            self._client = self.make_client()
        client = self._client
        self._log.info("mqtt_starting", config=self.config.safe_dump())
        self._failures = 0
        while True:
            raise_if_cancelling()
            try:
                async with client:
                    await self._session(client)
                error = "session ended"
            except aiomqtt.MqttError as exc:
                error = str(exc) or type(exc).__name__
            except Exception as exc:  # never let a surprise end the station's MQTT for good
                self._log.exception("mqtt_session_failed")
                error = repr(exc)
            finally:
                self._connected.clear()
            self._failures += 1
            delay = self.backoff_s(self._failures)
            self._log.warning("mqtt_disconnected", error=error, retry_in_s=round(delay, 3),
                              failures=self._failures)
            await asyncio.sleep(delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection: subscribe, announce, dispatch until the broker goes away."""
        try:
            for sub in self._subs:
                await client.subscribe(sub.topic, qos=sub.qos)
                raise_if_cancelling()
            self.since = rfc3339(self._wall())
            await client.publish(self.status_topic, self._status("online", since=self.since),
                                 qos=1, retain=True)
            raise_if_cancelling()
            self.connects += 1
            self._failures = 0
            self._connected.set()
            self._log.info("mqtt_connected", host=self.config.host, port=self.config.port,
                           topics=[s.topic for s in self._subs], connects=self.connects)
            for hook in self._hooks:
                await hook()
                raise_if_cancelling()
            async for message in client.messages:
                self._dispatch(str(message.topic), message.payload)
                raise_if_cancelling()
        except asyncio.CancelledError:
            self._connected.clear()
            try:
                await asyncio.wait_for(client.publish(
                    self.status_topic, self._status("offline", since=rfc3339(self._wall()),
                                                    reason="stopped"),
                    qos=1, retain=True), timeout=1.0)
            except Exception as exc:  # the broker's last will says offline instead
                self._log.warning("mqtt_offline_status_not_published", error=repr(exc)[:200])
            self._log.info("mqtt_stopped")
            raise

    def _dispatch(self, topic: str, payload: Any) -> None:
        raw = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
        for sub in self._subs:
            if sub.topic == topic:
                try:
                    sub.handler(topic, bytes(raw))
                except Exception:  # a handler bug must not drop the connection
                    self.handler_failures += 1
                    self._log.exception("mqtt_handler_failed", topic=topic)
