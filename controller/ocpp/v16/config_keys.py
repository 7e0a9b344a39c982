"""The OCPP 1.6 configuration keys (GetConfiguration / ChangeConfiguration).

Each key has a kind, an access (RW, RO, or WO for the security extension's AuthorizationKey)
and a default seeded from :class:`~controller.ocpp.config.OcppConfig` and the station
configuration. Values the backend changes are validated, stored in the ``v16_config`` table of
the OCPP database before the answer goes out, and survive a restart. Read-only keys are
refused (Rejected), unknown keys are NotSupported (ChangeConfiguration) or listed in
``unknownKey`` (GetConfiguration); the write-only key is never reported with its value.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from controller import logs
from controller.config import StationConfig
from controller.ocpp import storage
from controller.ocpp.config import OcppConfig

RO, RW, WO = "RO", "RW", "WO"
MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Current.Import",
              "Voltage", "SoC")
MAX_MEASURANDS = 5  # MeterValuesSampledDataMaxLength / ...AlignedDataMaxLength
FEATURES = "Core,SmartCharging,RemoteTrigger"
INT32_MAX = 2 ** 31 - 1


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    kind: str  # int, bool, csl (of MEASURANDS), str
    access: str
    default: str
    min_len: int = 0  # str: shortest value accepted
    max_len: int = 500
    hi: int = INT32_MAX  # int: largest value accepted (the smallest is 0)


def _b(x: bool) -> str:
    return "true" if x else "false"


def standard_keys(cfg: OcppConfig, station: StationConfig) -> list[Key]:
    """The keys this station supports, with their defaults."""
    c = cfg
    return [
        Key("HeartbeatInterval", "int", RW, str(int(c.heartbeat_interval_s))),
        Key("ConnectionTimeOut", "int", RW, "60"),
        Key("MeterValueSampleInterval", "int", RW, str(int(c.sampled_interval_s))),
        Key("ClockAlignedDataInterval", "int", RW, str(int(c.aligned_interval_s))),
        Key("MeterValuesSampledData", "csl", RW, ",".join(c.sampled_measurands)),
        Key("MeterValuesAlignedData", "csl", RW, ",".join(c.aligned_measurands)),
        Key("StopTxnSampledData", "csl", RW, "Energy.Active.Import.Register"),
        Key("StopTxnAlignedData", "csl", RW, "Energy.Active.Import.Register"),
        Key("MeterValuesSampledDataMaxLength", "int", RO, str(MAX_MEASURANDS)),
        Key("MeterValuesAlignedDataMaxLength", "int", RO, str(MAX_MEASURANDS)),
        Key("LocalPreAuthorize", "bool", RW, _b(c.local_pre_authorize)),
        Key("LocalAuthorizeOffline", "bool", RW, "true"),
        Key("AllowOfflineTxForUnknownId", "bool", RW, _b(c.offline_tx_for_unknown_id)),
        Key("AuthorizationCacheEnabled", "bool", RW, _b(c.auth_cache_enabled)),
        Key("AuthorizeRemoteTxRequests", "bool", RW, "false"),
        Key("TransactionMessageAttempts", "int", RW, str(c.message_attempts)),
        Key("TransactionMessageRetryInterval", "int", RW,
            str(int(c.message_attempt_interval_s))),
        Key("StopTransactionOnInvalidId", "bool", RW, "true"),
        Key("StopTransactionOnEVSideDisconnect", "bool", RO, "true"),
        Key("UnlockConnectorOnEVSideDisconnect", "bool", RW, "true"),
        Key("NumberOfConnectors", "int", RO, str(len(station.guns))),
        Key("SupportedFeatureProfiles", "str", RO, FEATURES),
        Key("GetConfigurationMaxKeys", "int", RO, "100"),
        Key("ConnectorPhaseRotation", "str", RO, "NotApplicable"),
        Key("WebSocketPingInterval", "int", RW, str(int(c.ping_interval_s))),
        Key("ResetRetries", "int", RW, "1"),
        Key("ChargeProfileMaxStackLevel", "int", RO, "9"),
        Key("ChargingScheduleAllowedChargingRateUnit", "str", RO, "Current,Power"),
        Key("ChargingScheduleMaxPeriods", "int", RO, "24"),
        Key("MaxChargingProfilesInstalled", "int", RO, "20"),
        # security extension: the Basic auth password (write-only), the profile in use (a
        # different profile needs another URL / CA: the configuration file's business)
        Key("AuthorizationKey", "str", WO,
            c.password.get_secret_value() if c.password is not None else "",
            min_len=16, max_len=40),
        Key("SecurityProfile", "int", RO, str(c.security_profile)),
        Key("CpoName", "str", RW, ""),
    ]


def _normal(key: Key, value: object) -> str | None:
    """The value as stored (booleans lower-case), None when it is not valid for the key:
    an int is decimal digits within 0..``key.hi`` (never 1e400 or 20 digits)."""
    if not isinstance(value, str):
        return None
    if key.kind == "int":
        text = value.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 10:
            return None
        return str(int(text)) if int(text) <= key.hi else None
    if key.kind == "bool":
        return value.lower() if value.lower() in ("true", "false") else None
    if key.kind == "csl":
        parts = [p.strip() for p in value.split(",") if p.strip()]
        ok = len(parts) <= MAX_MEASURANDS and all(p in MEASURANDS for p in parts)
        return ",".join(parts) if ok else None
    return value if key.min_len <= len(value) <= key.max_len else None


class ConfigKeys:
    """Key values by name; overrides persisted; ``on_change`` after each accepted change."""

    def __init__(self, db: sqlite3.Connection, keys: list[Key]) -> None:
        self.db = db
        self.keys = {k.name: k for k in keys}
        #: Called with (key, new value) after each accepted change (``key.name``).
        self.on_change: list[Callable[[Key, str], None]] = []
        storage.migrate(db)
        self.values = {k.name: k.default for k in keys}
        self._load()

    def _load(self) -> None:
        """The persisted values, each validated again: one the key cannot have is deleted
        with an error event and the default stays."""
        bad = []
        for name, value in self.db.execute("SELECT key, value FROM v16_config").fetchall():
            key = self.keys.get(name)
            if key is None:
                continue
            norm = _normal(key, value)
            if norm is None:
                bad.append(name)
                logs.get_logger("mwc.ocpp16.config").error(
                    "persisted_key_dropped", key=str(name)[:60],
                    reason=f"{str(value)[:40]!r} is not a valid {key.kind} for the key")
                continue
            self.values[name] = norm
        if bad:
            with self.db:
                for name in bad:
                    self.db.execute("DELETE FROM v16_config WHERE key IS ?", (name,))

    def get(self, name: str) -> str:
        return self.values[name]

    def num(self, name: str) -> float:
        return float(self.values[name])

    def flag(self, name: str) -> bool:
        return self.values[name] == "true"

    def members(self, name: str) -> list[str]:
        return [m for m in self.values[name].split(",") if m]

    def report(self, names: list[str] | None) -> tuple[list[dict[str, object]], list[str]]:
        """GetConfiguration: (configurationKey, unknownKey); no names: every key."""
        known: list[dict[str, object]] = []
        unknown: list[str] = []
        for name in names if names else list(self.keys):
            key = self.keys.get(name)
            if key is None:
                unknown.append(name)
                continue
            entry: dict[str, object] = {"key": name, "readonly": key.access == RO}
            if key.access != WO:
                entry["value"] = self.values[name]
            known.append(entry)
        return known, unknown

    def change(self, name: str, value: str) -> str:
        """ChangeConfiguration: the status; an accepted value is persisted before it is
        answered."""
        key = self.keys.get(name)
        if key is None:
            return "NotSupported"
        norm = _normal(key, value)
        if key.access == RO or norm is None:
            return "Rejected"
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO v16_config VALUES (?, ?)", (name, norm))
        self.values[name] = norm
        for cb in self.on_change:
            cb(key, norm)
        return "Accepted"
