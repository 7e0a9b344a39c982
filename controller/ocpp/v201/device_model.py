"""The typed OCPP 2.0.1 device model (B05–B07): components, variables, persisted overrides.

Every variable has a data type, a mutability and a default (seeded from :class:`OcppConfig`
and the station configuration). Values written by the backend (SetVariables) are validated
against the type, stored in the ``device_model`` table of the OCPP database and survive a
restart. Read-only variables reject writes, write-only variables are never reported.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller import logs
from controller.config import StationConfig
from controller.ocpp import storage
from controller.ocpp.config import OcppConfig

RO, RW, WO = "ReadOnly", "ReadWrite", "WriteOnly"
INT32_MAX = 2 ** 31 - 1
#: passwordString of OCPP 2.0.1 (Part 2, BasicAuthPassword: 16 to 40 of these characters)
PASSWORD_CHARS = r"[A-Za-z0-9*\-_=:+|@.]*"
MEASURANDS = ("Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,SoC")
TX_POINTS = "EVConnected,Authorized,PowerPathClosed,EnergyTransfer"


@dataclass(frozen=True, slots=True)
class Var:
    component: str
    name: str
    type: str  # integer, decimal, boolean, string, OptionList, MemberList, SequenceList
    mutability: str
    default: str
    evse: int | None = None
    connector: int | None = None
    instance: str | None = None
    unit: str | None = None
    values: str | None = None  # valuesList (OptionList / MemberList)
    max_limit: float | None = None
    lo: float = 0  # integer / decimal: the range a written value must be in
    hi: float = INT32_MAX
    min_len: int = 0  # string: the length a written value must have
    max_len: int = 1000
    charset: str | None = None  # string: a regular expression every value must match

    @property
    def key(self) -> tuple[str, int | None, int | None, str, str | None]:
        return (self.component, self.evse, self.connector, self.name, self.instance)


def _b(x: bool) -> str:
    return "true" if x else "false"


def default_vars(cfg: OcppConfig, station: StationConfig) -> list[Var]:
    """The variables this station supports, with their defaults."""
    c = cfg
    v = [
        Var("OCPPCommCtrlr", "HeartbeatInterval", "integer", RW, str(int(c.heartbeat_interval_s)),
            unit="s", lo=1),
        Var("OCPPCommCtrlr", "MessageAttempts", "integer", RW, str(c.message_attempts),
            instance="TransactionEvent"),
        Var("OCPPCommCtrlr", "MessageAttemptInterval", "integer", RW,
            str(int(c.message_attempt_interval_s)), instance="TransactionEvent", unit="s"),
        Var("OCPPCommCtrlr", "MessageTimeout", "integer", RO, str(int(c.response_timeout_s)),
            instance="Default", unit="s"),
        Var("OCPPCommCtrlr", "RetryBackOffWaitMinimum", "integer", RW,
            str(int(c.retry_backoff_wait_minimum_s)), unit="s"),
        Var("OCPPCommCtrlr", "RetryBackOffRandomRange", "integer", RW,
            str(int(c.retry_backoff_random_range_s)), unit="s"),
        Var("OCPPCommCtrlr", "RetryBackOffRepeatTimes", "integer", RW,
            str(c.retry_backoff_repeat_times)),
        Var("OCPPCommCtrlr", "WebSocketPingInterval", "integer", RW, str(int(c.ping_interval_s)),
            unit="s"),
        Var("OCPPCommCtrlr", "OfflineThreshold", "integer", RW, str(int(c.offline_threshold_s)),
            unit="s"),
        Var("SampledDataCtrlr", "Enabled", "boolean", RW, "true"),
        Var("SampledDataCtrlr", "TxUpdatedMeasurands", "MemberList", RW,
            ",".join(c.sampled_measurands), values=MEASURANDS),
        Var("SampledDataCtrlr", "TxStartedMeasurands", "MemberList", RW,
            "Energy.Active.Import.Register", values=MEASURANDS),
        Var("SampledDataCtrlr", "TxEndedMeasurands", "MemberList", RW,
            "Energy.Active.Import.Register", values=MEASURANDS),
        Var("SampledDataCtrlr", "TxUpdatedInterval", "integer", RW, str(int(c.sampled_interval_s)),
            unit="s"),
        Var("SampledDataCtrlr", "TxEndedInterval", "integer", RW, "0", unit="s"),
        Var("AlignedDataCtrlr", "Enabled", "boolean", RW, "true"),
        Var("AlignedDataCtrlr", "Measurands", "MemberList", RW, ",".join(c.aligned_measurands),
            values=MEASURANDS),
        Var("AlignedDataCtrlr", "Interval", "integer", RW, str(int(c.aligned_interval_s)),
            unit="s"),
        Var("AlignedDataCtrlr", "TxEndedMeasurands", "MemberList", RW,
            "Energy.Active.Import.Register", values=MEASURANDS),
        Var("AlignedDataCtrlr", "TxEndedInterval", "integer", RW, "0", unit="s"),
        Var("AlignedDataCtrlr", "SendDuringIdle", "boolean", RW, "false"),
        Var("TxCtrlr", "TxStartPoint", "MemberList", RW, ",".join(c.tx_start_point),
            values=TX_POINTS),
        Var("TxCtrlr", "TxStopPoint", "MemberList", RW, ",".join(c.tx_stop_point),
            values=TX_POINTS),
        Var("TxCtrlr", "EVConnectionTimeOut", "integer", RW, "60", unit="s"),
        Var("TxCtrlr", "StopTxOnEVSideDisconnect", "boolean", RO, "true"),
        Var("TxCtrlr", "StopTxOnInvalidId", "boolean", RW, "true"),
        Var("AuthCtrlr", "Enabled", "boolean", RO, _b(not station.station.free_charging)),
        Var("AuthCtrlr", "AuthorizeRemoteStart", "boolean", RW, "false"),
        Var("AuthCtrlr", "LocalAuthorizeOffline", "boolean", RW, "true"),
        Var("AuthCtrlr", "LocalPreAuthorize", "boolean", RW, _b(c.local_pre_authorize)),
        Var("AuthCtrlr", "OfflineTxForUnknownIdEnabled", "boolean", RW,
            _b(c.offline_tx_for_unknown_id)),
        Var("AuthCacheCtrlr", "Enabled", "boolean", RW, _b(c.auth_cache_enabled)),
        Var("AuthCacheCtrlr", "LifeTime", "integer", RW, str(int(c.auth_cache_lifetime_s)),
            unit="s"),
        Var("SecurityCtrlr", "BasicAuthPassword", "string", WO,
            c.password.get_secret_value() if c.password is not None else "", min_len=16,
            max_len=40, charset=PASSWORD_CHARS),
        Var("SecurityCtrlr", "SecurityProfile", "integer", RO, str(c.security_profile)),
        Var("SecurityCtrlr", "Identity", "string", RO, c.station_id or station.station.id),
        Var("ClockCtrlr", "DateTime", "dateTime", RO, ""),
        Var("ClockCtrlr", "TimeSource", "SequenceList", RO, "Heartbeat"),
        *([Var("ClockCtrlr", "TimeAdjustmentReportingThreshold", "integer", RW,
               str(c.csms_time_tolerance_s), unit="s")] if c.csms_time_tolerance_s else []),
        Var("DeviceDataCtrlr", "ItemsPerMessage", "integer", RO, "50", instance="GetReport"),
        Var("DeviceDataCtrlr", "ItemsPerMessage", "integer", RO, "50", instance="GetVariables"),
        Var("DeviceDataCtrlr", "ItemsPerMessage", "integer", RO, "50", instance="SetVariables"),
        Var("SmartChargingCtrlr", "Enabled", "boolean", RO, "true"),
        Var("SmartChargingCtrlr", "RateUnit", "MemberList", RO, "A,W"),
        Var("SmartChargingCtrlr", "PeriodsPerSchedule", "integer", RO, "24"),
        Var("SmartChargingCtrlr", "ProfileStackLevel", "integer", RO, "9"),
        Var("SmartChargingCtrlr", "LimitChangeSignificance", "decimal", RW, "0.05", hi=1.0),
        Var("ChargingStation", "Power", "decimal", RO, str(station.station.max_kw * 1000.0),
            unit="W", max_limit=station.station.max_kw * 1000.0),
    ]
    for i, g in enumerate(station.guns):
        e = i + 1
        watts = g.cable_rating_a * g.max_voltage_v
        v += [
            Var("EVSE", "Power", "decimal", RO, str(watts), evse=e, unit="W", max_limit=watts),
            Var("EVSE", "SupplyPhases", "integer", RO, "0", evse=e),
            Var("Connector", "ConnectorType", "string", RO,
                "cCCS2" if g.connector == "CCS" else "Unknown", evse=e, connector=1),
            Var("Connector", "MaxCurrent", "decimal", RO, str(g.cable_rating_a), evse=e,
                connector=1, unit="A"),
            Var("Connector", "MaxVoltage", "decimal", RO, str(g.max_voltage_v), evse=e,
                connector=1, unit="V"),
        ]
    return v


def problem(var: Var, value: object) -> str | None:
    """Why ``value`` cannot be the value of ``var`` (None: it can): the data type, a finite
    number in the variable's range, the length (and characters) of a string."""
    if not isinstance(value, str):
        return "value must be a string"
    if var.type in ("integer", "decimal"):
        if len(value) > 40:
            return f"{value[:20]}...: not a number of at most 40 characters"
        try:
            num = int(value) if var.type == "integer" else float(value)
        except ValueError:
            return f"{value!r} is not an {var.type}" if var.type == "integer" else (
                f"{value!r} is not a decimal")
        if not math.isfinite(num) or not var.lo <= num <= var.hi:
            return f"{value} is outside {var.lo:g}..{var.hi:g}"
        return None
    if var.type == "boolean":
        return None if value in ("true", "false") else f"{value[:40]!r} is not true or false"
    if var.type in ("MemberList", "OptionList") and var.values:
        allowed = set(var.values.split(","))
        parts = value.split(",") if var.type == "MemberList" else [value]
        ok = bool(value) and all(p in allowed for p in parts)
        return None if ok else f"{value[:60]!r}: allowed are {var.values}"
    if not var.min_len <= len(value) <= var.max_len:
        return f"{len(value)} characters, must be {var.min_len}..{var.max_len}"
    if var.charset is not None and not re.fullmatch(var.charset, value):
        return "contains characters that are not allowed"
    return None


def _valid(var: Var, value: str) -> bool:
    return problem(var, value) is None


class DeviceModel:
    """Variables by key; overrides persisted in SQLite; ``on_change`` after every write."""

    def __init__(self, db: sqlite3.Connection, variables: list[Var],
                 dynamic: dict[tuple[str, str], Callable[[], str]] | None = None) -> None:
        self.db = db
        self.vars = {v.key: v for v in variables}
        self.dynamic = dynamic or {}
        self.on_change: list[Callable[[Var, str], None]] = []
        storage.migrate(db)
        self.values: dict[tuple[str, int | None, int | None, str, str | None], str] = {
            k: v.default for k, v in self.vars.items()}
        self._load()

    def _load(self) -> None:
        """The persisted overrides, each validated again: a value the variable cannot have
        (a corrupt row, or one stored before a range was enforced) is deleted with an error
        event and the default stays."""
        log = logs.get_logger("mwc.ocpp.device_model")
        bad = []
        rows = self.db.execute("SELECT component, evse, connector, name, instance, value "
                               "FROM device_model").fetchall()
        for comp, evse, conn, name, inst, value in rows:
            key = (comp, evse, conn, name, inst or None)
            var = self.vars.get(key)
            if var is None:
                continue
            why = problem(var, value)
            if why is not None:
                bad.append((comp, evse, conn, name, inst))
                log.error("persisted_variable_dropped", component=comp, variable=name,
                          instance=inst or None, reason=why)
                continue
            self.values[key] = value
        if bad:
            with self.db:
                for row in bad:
                    self.db.execute("DELETE FROM device_model WHERE component IS ? AND evse IS ?"
                                    " AND connector IS ? AND name IS ? AND instance IS ?", row)

    # --------------------------------------------------------------- typed reads (for us)
    def get(self, component: str, name: str, instance: str | None = None,
            evse: int | None = None) -> str:
        dyn = self.dynamic.get((component, name))
        if dyn is not None:
            return dyn()
        return self.values[(component, evse, None, name, instance)]

    def num(self, component: str, name: str, instance: str | None = None) -> float:
        return float(self.get(component, name, instance))

    def flag(self, component: str, name: str) -> bool:
        return self.get(component, name) == "true"

    def members(self, component: str, name: str) -> list[str]:
        return [m for m in self.get(component, name).split(",") if m]

    # --------------------------------------------------------------- the backend's view
    def _find(self, component: dict[str, Any], variable: dict[str, Any]
              ) -> tuple[str, Var | None]:
        evse = component.get("evse") or {}
        ev, conn = evse.get("id"), evse.get("connector_id")
        name = component.get("name")
        comps = [v for v in self.vars.values() if v.component == name and v.evse == ev
                 and (conn is None or v.connector == conn)]
        if not comps:
            return "UnknownComponent", None
        for v in comps:
            if v.name == variable.get("name") and v.instance == variable.get("instance"):
                return "Accepted", v
        return "UnknownVariable", None

    def read(self, component: dict[str, Any], variable: dict[str, Any],
             attribute_type: str | None) -> tuple[str, str | None]:
        """GetVariables: (attributeStatus, value)."""
        status, var = self._find(component, variable)
        if var is None:
            return status, None
        if (attribute_type or "Actual") != "Actual":
            return "NotSupportedAttributeType", None
        if var.mutability == WO:
            return "Rejected", None
        dyn = self.dynamic.get((var.component, var.name))
        return "Accepted", dyn() if dyn is not None else self.values[var.key]

    def write(self, component: dict[str, Any], variable: dict[str, Any], value: str,
              attribute_type: str | None) -> str:
        """SetVariables: the attributeStatus; persisted before it is answered."""
        status, var = self._find(component, variable)
        if var is None:
            return status
        if (attribute_type or "Actual") != "Actual":
            return "NotSupportedAttributeType"
        if var.mutability == RO or not _valid(var, value):
            return "Rejected"
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO device_model VALUES (?, ?, ?, ?, ?, ?)",
                            (var.component, var.evse, var.connector, var.name,
                             var.instance or "", value))
        self.values[var.key] = value
        for cb in self.on_change:
            cb(var, value)
        return "Accepted"

    def report(self, base: str) -> list[dict[str, Any]]:
        """reportData of GetBaseReport ConfigurationInventory or FullInventory."""
        out: list[dict[str, Any]] = []
        for v in self.vars.values():
            if base == "ConfigurationInventory" and v.mutability == RO:
                continue
            comp: dict[str, Any] = {"name": v.component}
            if v.evse is not None:
                comp["evse"] = {"id": v.evse}
                if v.connector is not None:
                    comp["evse"]["connectorId"] = v.connector
            var: dict[str, Any] = {"name": v.name}
            if v.instance:
                var["instance"] = v.instance
            attr: dict[str, Any] = {"type": "Actual", "mutability": v.mutability,
                                    "persistent": True, "constant": v.mutability == RO}
            if v.mutability != WO:
                dyn = self.dynamic.get((v.component, v.name))
                attr["value"] = dyn() if dyn is not None else self.values[v.key]
            chars: dict[str, Any] = {"dataType": v.type, "supportsMonitoring": False}
            if v.unit:
                chars["unit"] = v.unit
            if v.values:
                chars["valuesList"] = v.values
            if v.max_limit is not None:
                chars["maxLimit"] = v.max_limit
            out.append({"component": comp, "variable": var, "variableAttribute": [attr],
                        "variableCharacteristics": chars})
        return out
