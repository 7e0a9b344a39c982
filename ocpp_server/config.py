"""Backend configuration: one TOML file, validated by pydantic so a typo fails at start-up.

Example (every key optional; defaults shown)::

    [storage]
    path = "csms.db"           # SQLite file; WAL journal
    synchronous = "FULL"       # FULL survives power loss; NORMAL survives a process crash

    [ocpp]
    host = "0.0.0.0"
    port = 9000                # plain ws:// (profiles 0 and 1); -1 disables, 0 = any free port
    tls_port = -1              # wss:// (profiles 1-3); needs certfile/keyfile
    certfile = ""
    keyfile = ""
    client_ca = ""             # CA that signs station client certificates (profile 3)
    auto_register = false      # labs: admit unknown stations (BootNotification Pending)
    auto_approve = false       # with auto_register: admit them as Accepted
    heartbeat_interval = 300
    pending_interval = 30
    call_timeout = 30.0        # seconds a station has to answer a command
    max_message_bytes = 65536
    rate_per_s = 20.0          # sustained CALLs per station and second
    rate_burst = 200
    rated_power_w = 3750000.0  # meter-value plausibility: rating of stations without one
    plausibility_margin = 1.1  # ... and how far above it a value is still plausible

    [api]
    host = "127.0.0.1"
    port = 8180                # -1 disables the REST API, 0 = any free port
    tokens = ["change-me"]     # bearer tokens accepted by the REST API
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageConfig(_Strict):
    path: str = "csms.db"
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    # Database URL; wins over ``path`` when set: ``sqlite:///relative.db``,
    # ``sqlite:////abs/path.db`` or ``postgresql://user:pw@host:port/db`` (docs/scaling.md).
    url: str = ""

    @model_validator(mode="after")
    def _known_scheme(self) -> StorageConfig:
        if self.url and not self.url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"url {self.url.split(':')[0]!r}: expected sqlite:///path or"
                             " postgresql://user@host:port/db")
        return self

    def database(self) -> tuple[str, str]:
        """(engine, target): ("sqlite", file path) or ("postgresql", libpq URL)."""
        if self.url.startswith(("postgresql://", "postgres://")):
            return "postgresql", self.url
        if self.url.startswith("sqlite:///"):
            return "sqlite", self.url[len("sqlite:///"):]
        return "sqlite", self.path


class ClusterConfig(_Strict):
    """Several instances on one PostgreSQL database (cluster.py); ignored on SQLite."""

    instance: str = ""             # name of this instance; "" = hostname-pid
    presence_ttl: float = Field(default=30.0, ge=3.0, le=3600.0)  # s a crashed one's entries live


class OcppConfig(_Strict):
    host: str = "0.0.0.0"
    port: int = Field(default=9000, ge=-1, le=65535)
    tls_port: int = Field(default=-1, ge=-1, le=65535)
    certfile: str = ""
    keyfile: str = ""
    client_ca: str = ""
    auto_register: bool = False
    auto_approve: bool = False
    heartbeat_interval: int = Field(default=300, ge=1)
    pending_interval: int = Field(default=30, ge=1)
    call_timeout: float = Field(default=30.0, gt=0)
    max_message_bytes: int = Field(default=65536, ge=1024)
    rate_per_s: float = Field(default=20.0, gt=0)
    rate_burst: int = Field(default=200, ge=1)
    # Meter-value plausibility (plausibility.py): rating of a station without its own
    # (default: the MCS envelope, 3,000 A x 1,250 V) and the margin over it still accepted.
    rated_power_w: float = Field(default=3_750_000.0, gt=0, le=1e8)
    plausibility_margin: float = Field(default=1.1, ge=1.0, le=10.0)
    # Connection storms (every station reconnecting at once): handshakes admitted per second
    # and burst; beyond, HTTP 503 + Retry-After and the station retries. 0 = no limit.
    admit_rate_per_s: float = Field(default=0.0, ge=0)
    admit_burst: int = Field(default=200, ge=1)

    @model_validator(mode="after")
    def _tls_needs_files(self) -> OcppConfig:
        if self.tls_port >= 0 and not (self.certfile and self.keyfile):
            raise ValueError("tls_port needs certfile and keyfile")
        return self


class ApiConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8180, ge=-1, le=65535)
    tokens: list[str] = Field(default_factory=list)


class CsmsConfig(_Strict):
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ocpp: OcppConfig = Field(default_factory=OcppConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)


class ConfigError(ValueError):
    """The configuration file is missing, not TOML, or names an unknown/invalid key."""


def load_config(path: str | Path | None) -> CsmsConfig:
    """Read and validate a TOML file; ``None`` gives the defaults."""
    if path is None:
        return CsmsConfig()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    try:
        return CsmsConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{p}: {problems}") from exc
