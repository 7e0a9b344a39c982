"""The ``[ocpp]`` configuration section (the lead embeds :class:`OcppConfig` in StationConfig).

The values seed the device model on first start; afterwards the device model (persisted in
SQLite, changed by the backend with SetVariables) is what the client reads. The password is
a ``SecretStr`` (like MQTT's): it never prints; the device model, the 1.6 configuration keys
and the doctor read it with ``get_secret_value()``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from controller.config_base import ConfigModel

Measurand = Literal["Energy.Active.Import.Register", "Power.Active.Import", "Current.Import",
                    "Voltage", "SoC"]
TxPoint = Literal["EVConnected", "Authorized", "PowerPathClosed", "EnergyTransfer"]


def _points() -> list[TxPoint]:
    return ["PowerPathClosed"]


def _sampled() -> list[Measurand]:
    return ["Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Voltage",
            "SoC"]


def _aligned() -> list[Measurand]:
    return ["Energy.Active.Import.Register"]


class OcppConfig(ConfigModel):
    """How the station talks to its backend (CSMS); unknown keys, NaN and inf are errors."""

    #: "2.0.1" (subprotocol ocpp2.0.1, controller/ocpp/) or "1.6" (ocpp1.6, OCPP 1.6J with
    #: the security extension, controller/ocpp/v16/); both are built from the same parts.
    version: Literal["2.0.1", "1.6"] = "2.0.1"
    url: str = Field(pattern=r"^wss?://[^/]+(/.*)?$")  # the station id is appended
    station_id: str | None = None  # default: [station].id
    security_profile: Literal[0, 1, 2, 3] = 1  # 0: no authentication (lab only)
    #: Profiles 1 and 2 (BasicAuthPassword). A secret: it prints as ``**********``; the
    #: readers that must send or seed it call ``get_secret_value()``.
    password: SecretStr | None = None
    ca_file: str | None = None  # profiles 2 and 3: CA of the CSMS certificate
    cert_file: str | None = None  # profile 3: client certificate (PEM)
    key_file: str | None = None  # profile 3: client key (PEM)
    database: str = "ocpp.sqlite3"  # device model, offline queue, profiles, open transactions
    queue_max: int = Field(default=10_000, ge=10, le=10_000_000)
    vendor: str = "mwcharge"
    model: str = "MCS-2400"
    serial_number: str | None = None
    firmware_version: str = "0.1.0"
    response_timeout_s: float = Field(default=30.0, gt=0)
    heartbeat_interval_s: float = Field(default=60.0, gt=0)  # until the boot says otherwise
    ping_interval_s: float = Field(default=30.0, ge=0)  # WebSocketPingInterval, 0: off
    retry_backoff_wait_minimum_s: float = Field(default=3.0, ge=0)
    retry_backoff_random_range_s: float = Field(default=10.0, ge=0)
    retry_backoff_repeat_times: int = Field(default=5, ge=0)
    message_attempts: int = Field(default=3, ge=1)
    message_attempt_interval_s: float = Field(default=30.0, ge=0)
    offline_threshold_s: float = Field(default=60.0, ge=0)
    local_pre_authorize: bool = True
    offline_tx_for_unknown_id: bool = False
    auth_cache_enabled: bool = True
    auth_cache_lifetime_s: float = Field(default=86_400.0, gt=0)
    tx_start_point: list[TxPoint] = Field(default_factory=_points)
    tx_stop_point: list[TxPoint] = Field(default_factory=_points)
    sampled_measurands: list[Measurand] = Field(default_factory=_sampled)
    sampled_interval_s: float = Field(default=60.0, ge=0)  # SampledDataTxUpdatedInterval
    aligned_measurands: list[Measurand] = Field(default_factory=_aligned)
    aligned_interval_s: float = Field(default=900.0, ge=0)  # AlignedDataInterval, 0: off
    #: Adopt the backend's clock (boot/heartbeat currentTime) when it differs from ours by
    #: more than this (TimeAdjustmentReportingThreshold, reported as SettingSystemTime).
    #: None: the station keeps its own clock (NTP) and the variable is not offered.
    csms_time_tolerance_s: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _security(self) -> OcppConfig:
        tls = self.url.startswith("wss://")
        if self.security_profile in (1, 2) and (
                self.password is None or not self.password.get_secret_value()):
            raise ValueError(f"security_profile {self.security_profile} needs a password")
        if self.security_profile >= 2 and not tls:
            raise ValueError(f"security_profile {self.security_profile} needs a wss:// url")
        if self.security_profile == 1 and tls:
            raise ValueError("security_profile 1 is Basic auth without TLS: use ws:// or 2")
        if self.security_profile == 3 and not (self.cert_file and self.key_file):
            raise ValueError("security_profile 3 needs cert_file and key_file")
        return self
