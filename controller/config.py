"""Station configuration: one typed model, loaded from TOML with environment overrides.

Every key is documented in ``deploy/mwc.example.toml``. A wrong or missing key stops start-up
with a :class:`ConfigError` whose message names the key, the value and what is expected — the
CLI prints it and exits, never a traceback.

Environment overrides: ``MWC__<SECTION>__<KEY>=value`` (double underscores separate the path;
list items by index, e.g. ``MWC__GUNS__1__CABLE_RATING_A=1000``). The value is read as a TOML
value when it parses as one (numbers, booleans, arrays), else as a string.

The model is assembled here from sections; the base class and ``ConfigError`` live in
``controller/config_base.py``, the ``[mqtt]`` section in ``controller/config_mqtt.py``, the
environment overlay and the wording of errors in ``controller/config_load.py``. Every name is
re-exported here: ``from controller.config import X`` is the way in.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from controller.config_base import ConfigError as ConfigError
from controller.config_base import ConfigModel as ConfigModel
from controller.config_base import reveal as reveal
from controller.config_load import ENV_PREFIX as ENV_PREFIX
from controller.config_load import apply_env as apply_env
from controller.config_load import format_errors
from controller.config_mqtt import MqttConfig as MqttConfig
from controller.config_mqtt import TlsConfig as TlsConfig
from controller.config_mqtt import TopicsConfig as TopicsConfig
from controller.ocpp.config import OcppConfig
from power.modbus_base import DeviceEndpoint, LinkSettings
from power.modbus_driver import HardwareConfig
from power.modbus_map import meter_unit
from power.power_unit import PowerUnitConfig
from power.secc_map import secc_port, secc_unit


class Address(ConfigModel):
    """Where one Modbus device answers."""

    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)

    def endpoint(self) -> DeviceEndpoint:
        return DeviceEndpoint(self.host, self.port, self.unit)


class GunConfig(ConfigModel):
    """One gun: its cable, its voltage range, its connector and its meter."""

    cable_rating_a: float = Field(gt=0, le=4000)
    max_voltage_v: float = Field(gt=0, le=1500)
    connector: Literal["MCS", "CCS"] = "MCS"
    meter: Address | None = None  # default: from [hardware]
    #: The gun's SECC bridge over Modbus TCP (controller/vehicle_modbus.py); None: no vehicle
    #: integration (the gun never sees a vehicle plugged).
    vehicle: Address | None = None


class ModulesConfig(ConfigModel):
    """The pool of DC power modules."""

    count: int = Field(ge=1, le=512)
    rated_power_w: float = Field(default=40_000.0, gt=0)
    rated_current_a: float = Field(default=100.0, gt=0)
    #: How long a module's output needs to follow a lower setpoint (settled within 1 %): the
    #: safety monitor's grace after a lowered limit and the delay of the confirmation cycle
    #: after a woken one (docs/performance.md, "Peak shaving"). 60 ms: 5 time constants of
    #: the simulator's 10 ms module plus its 5 ms physics tick; take a real module's datasheet.
    response_ms: float = Field(default=60.0, gt=0, le=2000)
    addresses: list[Address] | None = None  # default: from [hardware]

    @model_validator(mode="after")
    def _count_matches(self) -> ModulesConfig:
        if self.addresses is not None and len(self.addresses) != self.count:
            raise ValueError(f"addresses lists {len(self.addresses)} modules but count is "
                             f"{self.count}: expected one address per module")
        return self


class MatrixConfig(ConfigModel):
    """The contactor matrix; ``reach[m]`` lists the guns module m can be switched to."""

    address: Address | None = None  # default: from [hardware]
    reach: list[list[int]] | None = None  # default: every module reaches every gun


class HardwareLayout(ConfigModel):
    """How device addresses are derived when not listed one by one."""

    #: power_unit: one power-unit controller in front of every module (docs/modbus-map.md,
    #: "Power unit"): the unit on ``port``, the meters on port+1 (unit g+1).
    layout: Literal["port_per_device", "gateway", "power_unit"] = "port_per_device"
    host: str = "127.0.0.1"
    port: int = Field(default=15020, ge=1, le=65535)
    timeout_ms: float = Field(default=60.0, gt=0)
    poll_budget_ms: float = Field(default=80.0, gt=0)
    max_missed: int = Field(default=2, ge=1)
    heartbeat_stale_polls: int = Field(default=0, ge=0)
    #: SECC bridges at the layout's address (port_per_device: port+M+3, unit g+1, as the
    #: simulator serves them) for guns without their own ``vehicle``; false: only those.
    vehicles: bool = False
    #: power_unit layout: parallel connections to the unit (requests in flight together);
    #: 0: one per request of a poll (5 at 48 modules, 9 at 96), at most 8.
    power_unit_connections: int = Field(default=0, ge=0, le=16)
    #: One-device-per-module layouts: poll each module with one read/write-multiple-registers
    #: request (function 23) that echoes its setpoint; "auto" falls back to function 4 for a
    #: module that refuses it (docs/modbus-map.md, "Function 23").
    module_read_write: Literal["auto", "fc23", "fc4"] = "auto"


class StationSection(ConfigModel):
    """Station-wide settings and control-cycle tuning."""

    id: str = Field(min_length=1)
    max_kw: float = Field(gt=0)
    fallback_grid_kw: float = Field(ge=0)
    cycle_ms: float = Field(default=100.0, ge=10, le=1000)
    ramp_a_per_s: float = Field(default=1000.0, gt=0)
    switch_threshold_a: float = Field(default=5.0, gt=0, le=20)
    watchdog_ms: int = Field(default=500, ge=0, le=65535)
    free_charging: bool = True
    cable_check_s: float = Field(default=0.5, ge=0)
    precharge_tolerance_v: float = Field(default=20.0, gt=0)
    precharge_current_a: float = Field(default=2.0, gt=0, le=2)
    precharge_timeout_s: float = Field(default=10.0, gt=0)
    finishing_timeout_s: float = Field(default=5.0, gt=0)
    vehicle_timeout_s: float = Field(default=1.0, gt=0)
    #: A vehicle link silent this long ends the session (EVDisconnected); shorter silences
    #: only pause the gun at 0 A (after vehicle_timeout_s) and resume (docs/control-cycle.md).
    vehicle_silence_s: float = Field(default=30.0, ge=1.0, le=600.0)
    suspend_after_s: float = Field(default=1.0, ge=0)
    violation_fault_cycles: int = Field(default=3, ge=1)
    #: Stop sequence: how long to wait for every module to measure ≤ the switch threshold
    #: before its contactors open; one not drained by then is disabled and reported.
    drain_timeout_s: float = Field(default=3.0, gt=0, le=60)
    #: Latched module faults: fault resets that clear the latch before a module that keeps
    #: faulting is left out of the pool; the first reset waits fault_reset_backoff_s, each
    #: re-fault doubles it (docs/control-cycle.md, "Latched module faults").
    fault_reset_tries: int = Field(default=3, ge=0, le=20)
    fault_reset_backoff_s: float = Field(default=1.0, gt=0, le=600)
    #: Repeated device errors fold into one log line per device per this interval.
    log_fold_s: float = Field(default=10.0, gt=0, le=3600)


    @model_validator(mode="after")
    def _silence_after_timeout(self) -> StationSection:
        if self.vehicle_silence_s < self.vehicle_timeout_s:
            raise ValueError(f"vehicle_silence_s = {self.vehicle_silence_s} is shorter than "
                             f"vehicle_timeout_s = {self.vehicle_timeout_s}: a silent vehicle "
                             "link must first pause the gun at 0 A, then end the session")
        return self


class ControlConfig(ConfigModel):
    """The local control socket of `mwc run` (``controller/control_socket.py``): how
    `mwc clear-fault` on the cabinet PC reaches the running controller. File permissions
    (0660, the service's user and group) are its access control."""

    enabled: bool = True
    socket: str = Field(default="/run/mwcharge/control.sock", min_length=1)


class MetricsConfig(ConfigModel):
    """The Prometheus endpoint (``controller/metrics.py``): off by default, loopback only
    unless an integrator binds it elsewhere on purpose."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)  # 0: a free port (tests; logged)


class WebviewConfig(ConfigModel):
    """The live view (``controller/webview.py``): off by default; loopback unless an
    integrator opens it to the LAN, and then only with TLS and a bearer token."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8088, ge=0, le=65535)  # 0: a free port (tests, the demo)
    rate_hz: float = Field(default=4.0, ge=2.0, le=5.0)
    history_s: float = Field(default=300.0, ge=10.0, le=3600.0)
    token: str | None = Field(default=None, min_length=16)
    certfile: str | None = None
    keyfile: str | None = None

    @model_validator(mode="after")
    def _lan_needs_tls_and_token(self) -> WebviewConfig:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("webview.certfile and webview.keyfile go together")
        loopback = self.host in ("127.0.0.1", "::1", "localhost")
        if not loopback and (self.token is None or self.certfile is None):
            raise ValueError(f"webview.host = {self.host!r} is not loopback: set "
                             "webview.token and webview.certfile/keyfile (TLS)")
        return self


class StationConfig(ConfigModel):
    """The whole configuration file."""

    station: StationSection
    guns: list[GunConfig] = Field(min_length=1, max_length=6)
    modules: ModulesConfig
    matrix: MatrixConfig = MatrixConfig()
    hardware: HardwareLayout = HardwareLayout()
    mqtt: MqttConfig | None = None  # grid limits in, telemetry out (docs/mqtt.md); off if absent
    ocpp: OcppConfig | None = None  # the operator's backend (docs/ocpp.md); off if absent
    metrics: MetricsConfig = MetricsConfig()  # Prometheus endpoint; off by default
    control: ControlConfig = ControlConfig()  # local control socket (mwc clear-fault)
    webview: WebviewConfig = WebviewConfig()  # live view page; off by default, loopback

    @model_validator(mode="after")
    def _vehicles_layout(self) -> StationConfig:
        if self.hardware.vehicles and self.hardware.layout == "gateway":
            raise ValueError("hardware.vehicles derives SECC addresses for the "
                             "port_per_device layout only: give each [[guns]] its vehicle")
        return self

    @model_validator(mode="after")
    def _power_unit_layout(self) -> StationConfig:
        if self.hardware.layout == "power_unit" and (
                self.modules.addresses is not None or self.matrix.address is not None):
            raise ValueError("hardware.layout = \"power_unit\": every module and the matrix "
                             "answer at the unit (hardware.host/port); remove "
                             "modules.addresses and matrix.address")
        return self

    @model_validator(mode="after")
    def _reach_fits(self) -> StationConfig:
        reach = self.matrix.reach
        if reach is None:
            return self
        if len(reach) != self.modules.count:
            raise ValueError(f"matrix.reach has {len(reach)} rows for {self.modules.count} "
                             "modules: expected one list of guns per module")
        for m, guns in enumerate(reach):
            bad = [g for g in guns if not 0 <= g < len(self.guns)]
            if bad:
                raise ValueError(f"matrix.reach[{m}] = {guns}: gun indices must be in "
                                 f"0..{len(self.guns) - 1}")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def cycle_s(self) -> float:
        return self.station.cycle_ms / 1000.0

    def reach_matrix(self) -> list[list[bool]]:
        """(M, G) booleans: where the matrix can connect module m to gun g."""
        g_n = len(self.guns)
        if self.matrix.reach is None:
            return [[True] * g_n for _ in range(self.modules.count)]
        return [[g in row for g in range(g_n)] for row in self.matrix.reach]

    def vehicle_endpoint(self, g: int) -> DeviceEndpoint | None:
        """Gun ``g``'s SECC bridge: its own ``vehicle``, else the layout's when
        ``hardware.vehicles``; None: the gun has no vehicle integration."""
        gun = self.guns[g]
        if gun.vehicle is not None:
            return gun.vehicle.endpoint()
        h = self.hardware
        if not h.vehicles:
            return None
        return DeviceEndpoint(h.host, secc_port(h.port, self.modules.count), secc_unit(g))

    def link_settings(self) -> LinkSettings:
        h = self.hardware
        return LinkSettings(timeout_s=h.timeout_ms / 1000.0,
                            poll_budget_s=h.poll_budget_ms / 1000.0, max_missed=h.max_missed,
                            heartbeat_stale_polls=h.heartbeat_stale_polls,
                            module_read_write=h.module_read_write)

    def hardware_config(self) -> HardwareConfig | PowerUnitConfig:
        """Driver configuration: explicit addresses where given, else the [hardware] layout."""
        h, m_n, g_n = self.hardware, self.modules.count, len(self.guns)
        link = self.link_settings()
        if h.layout == "power_unit":
            return PowerUnitConfig(
                DeviceEndpoint(h.host, h.port, 1), m_n,
                tuple(g.meter.endpoint() if g.meter else
                      DeviceEndpoint(h.host, h.port + 1, meter_unit(i))
                      for i, g in enumerate(self.guns)),
                link, h.power_unit_connections)
        if h.layout == "gateway":
            base = HardwareConfig.gateway(h.host, h.port, m_n, g_n, link)
        else:
            base = HardwareConfig.port_per_device(h.host, h.port, m_n, g_n, link)
        modules = (tuple(a.endpoint() for a in self.modules.addresses)
                   if self.modules.addresses is not None else base.modules)
        matrix = self.matrix.address.endpoint() if self.matrix.address else base.matrix
        meters = tuple(g.meter.endpoint() if g.meter else base.meters[i]
                       for i, g in enumerate(self.guns))
        return HardwareConfig(modules, matrix, meters, link)


# ---------------------------------------------------------------------------- loading
def parse_config(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> StationConfig:
    """Validate parsed TOML (plus ``env`` overrides) into a :class:`StationConfig`."""
    merged = apply_env(dict(data), env or {})
    try:
        return StationConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> StationConfig:
    """Read ``path`` (TOML) with ``os.environ`` overrides (or ``env``); ConfigError on mistakes."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {str(p)!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, os.environ if env is None else env)
