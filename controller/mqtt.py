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
import contextlib
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
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from controller import logs

WallClock = Callable[[], float]
MessageHandler = Callable[[str, bytes], object]  # the return value is ignored
ConnectHook = Callable[[], Awaitable[None]]


class EventSink(Protocol):
    """Where limit sources report what they did (``TelemetryPublisher`` is one)."""

    def event(self, kind: str, /, **fields: Any) -> None: ...


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # NaN, inf: never


class TlsConfig(_Model):
    """TLS towards the broker; client certificate optional (``cert_file`` + ``key_file``)."""

    ca_file: str | None = None  # None: the system trust store
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False  # skip host name verification (test rigs only)

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be given together")
        return self


class TopicsConfig(_Model):
    """Topic names; ``{station_id}`` is replaced by the station's id."""

    grid_limit: str = "mwc/{station_id}/grid/limit"
    site_limit: str | None = None  # a site-wide limit topic shared by stations; off by default
    status: str = "mwc/{station_id}/status"
    telemetry: str = "mwc/{station_id}/telemetry"
    events: str = "mwc/{station_id}/events"

    @model_validator(mode="after")
    def _no_wildcards(self) -> TopicsConfig:
        for name, topic in self.model_dump().items():
            if topic is not None and (not topic or "+" in topic or "#" in topic):
                raise ValueError(f"topics.{name} = {topic!r}: expected a topic name without "
                                 "wildcards (+, #)")
        return self


class MqttConfig(_Model):
    """The ``[mqtt]`` section. The grid fallback lives in ``[station] fallback_grid_kw``."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    tls: TlsConfig | None = None
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None  # default "mwc-<station_id>"
    keepalive_s: int = Field(default=15, ge=1, le=65535)
    timeout_s: float = Field(default=5.0, gt=0)  # connect, subscribe, QoS 1 publish
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    topics: TopicsConfig = TopicsConfig()
    telemetry_period_s: float = Field(default=1.0, gt=0)
    telemetry_queue: int = Field(default=4, ge=1)
    event_queue: int = Field(default=10_000, ge=1, le=1_000_000)
    recent_ids: int = Field(default=256, ge=1, le=100_000)  # ids kept per topic (duplicates)
    max_valid_for_s: float = Field(default=86_400.0, gt=0)
    max_clock_skew_s: float = Field(default=5.0, ge=0)  # how far issued_at may be ahead
    max_payload_bytes: int = Field(default=4096, ge=64)

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self

    def topic(self, name: str, station_id: str) -> str:
        """A configured topic with ``{station_id}`` filled in."""
        template: str | None = getattr(self.topics, name)
        if template is None:
            raise KeyError(f"topic {name!r} is not configured")
        return template.replace("{station_id}", station_id)

    def safe_dump(self) -> dict[str, Any]:
        """The configuration for logs: the password masked by SecretStr."""
        return self.model_dump(mode="json")


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
                 wall: WallClock = time.time, rng: random.Random | None = None) -> None:
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
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.publish(
                    self.status_topic, self._status("offline", since=rfc3339(self._wall()),
                                                    reason="stopped"),
                    qos=1, retain=True), timeout=1.0)
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
