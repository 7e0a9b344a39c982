"""The ``[mqtt]`` section of the station configuration (docs/mqtt.md): broker, TLS, topics,
queues and the bounds an incoming limit message is checked against.

Re-exported by ``controller.config`` (and ``controller.mqtt``), where code imports it from.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, model_validator

from controller.config_base import ConfigModel


class TlsConfig(ConfigModel):
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


class TopicsConfig(ConfigModel):
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


class MqttConfig(ConfigModel):
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
