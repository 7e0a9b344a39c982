"""The checks behind `mwc doctor`: one coroutine per Modbus device or peer, all read-only.

Each check returns the detail of its PASS row or raises :class:`CheckFailed` with the reason
of its FAIL row. The Modbus checks poll through the controller's own drivers (``power/``), so
the doctor sees a device exactly as the control cycle would; they never write a register or
a coil. The MQTT and OCPP checks connect with the controller's own client construction
(``MqttConnection.make_client``, ``controller.ocpp.connection.connect``) and only connect,
subscribe and disconnect: no BootNotification, no retained message.

Numbering in names and details is from 1 (module 1 is Modbus index 0), like the cabinet's
labels and the OCPP EVSE ids.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sqlite3
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import numpy as np
import websockets
from paho.mqtt.reasoncodes import ReasonCode
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from controller.config import ModulesConfig
from controller.mqtt import MqttConfig, MqttConnection
from controller.ocpp import connection
from controller.ocpp.config import OcppConfig
from power.matrix import ModbusMatrix
from power.meters import ModbusMeter
from power.modbus_base import DeviceEndpoint, HardwareError, LinkSettings, ModbusLink
from power.modbus_map import ModuleFault, coil_index
from power.modules import ModbusModule
from power.secc_map import SECC_INPUT_COUNT, SECC_INPUT_START, SeccDecodeError, decode_status

#: Contactor feedback follows its coil within 15 ms; a second read this much later tells a
#: contactor caught switching from one that disagrees for good.
MATRIX_SETTLE_S = 0.05
#: At most this many contactors are named in one FAIL row (the rest are counted).
MAX_LISTED = 6
#: A module's rating may differ from [modules] by this fraction (float32 rounding, vendors).
RATING_TOLERANCE = 0.01

_PROFILES = {0: "no authentication", 1: "Basic auth over ws://", 2: "Basic auth over TLS",
             3: "TLS client certificate"}


class CheckFailed(Exception):
    """The reason of a FAIL row, fit for the operator (never a secret)."""


def endpoint_label(ep: DeviceEndpoint) -> str:
    return f"{ep.host}:{ep.port} unit {ep.unit}"


def _driver_reason(reason: str | None, name: str, ep: DeviceEndpoint) -> str:
    """A driver's reason without its 0-based "module 3 at host:port/unit 1: " prefix."""
    text = reason or "no answer"
    for prefix in (f"{name} at {ep}: ", f"{name}: "):
        text = text.replace(prefix, "")
    return re.sub(r" \(\d+ missed polls?\)$", "", text)  # one poll: the count is noise


# --------------------------------------------------------------------------- modules
def _client_factory(made: list[AsyncModbusTcpClient]) -> Any:
    """The driver's client (as ``power.modbus_base`` builds it), kept for fc 43 afterwards."""
    def factory(ep: DeviceEndpoint, timeout_s: float) -> AsyncModbusTcpClient:
        client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=timeout_s * 2 + 0.05,
                                      retries=0, reconnect_delay=0, name=str(ep))
        made.append(client)
        return client
    return factory


async def read_firmware(client: AsyncModbusTcpClient, unit: int, timeout_s: float) -> str:
    """Firmware from Read Device Identification (fc 43/14, basic objects); a module without
    it is not a failure: the register map does not require it."""
    try:
        async with asyncio.timeout(timeout_s):
            reply = await client.read_device_information(device_id=unit)
    except (TimeoutError, ModbusException, OSError):
        return "firmware not reported (no answer to Read Device Identification)"
    info: dict[int, Any] = getattr(reply, "information", None) or {}
    if reply.isError() or not info:
        return "firmware not reported (no Read Device Identification)"

    def text(obj: int) -> str:
        raw = info.get(obj, b"")
        return (raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)).strip()

    maker = " ".join(t for t in (text(0), text(1)) if t)
    return f"firmware {text(2) or '?'}" + (f" ({maker})" if maker else "")


def _fault_name(code: int) -> str:
    try:
        return ModuleFault(code).name.lower().replace("_", " ")
    except ValueError:
        return "vendor code"


async def check_module(index: int, ep: DeviceEndpoint, link: LinkSettings,
                       expected: ModulesConfig) -> str:
    """Reachable, a sane rating that matches ``[modules]``, no fault, output off."""
    made: list[AsyncModbusTcpClient] = []
    name = f"module {index}"
    driver = ModbusModule(index, ep, link, link=ModbusLink(ep, name, link,
                                                           client_factory=_client_factory(made)))
    try:
        state = await driver.poll()
        if not state.available or state.rating is None:
            raise CheckFailed(_driver_reason(state.reason, name, ep))
        r = state.rating
        firmware = await read_firmware(made[-1], ep.unit, link.timeout_s)
        rated = (f"rated {r.rated_power_w / 1000:.1f} kW / {r.rated_current_a:.0f} A, "
                 f"{r.min_voltage_v:.0f}-{r.max_voltage_v:.0f} V, {firmware}")
        problems = []
        if state.fault or state.fault_code:
            problems.append(f"fault code {state.fault_code} ({_fault_name(state.fault_code)}), "
                            f"status word 0x{state.status:04x}")
        elif not state.ready:
            problems.append(f"not ready (status word 0x{state.status:04x}, internal "
                            f"{state.internal_c:.1f} °C)")
        if state.output_on:
            problems.append("output on while the controller is stopped")
        for what, have, want in (("rated_power_w", r.rated_power_w, expected.rated_power_w),
                                 ("rated_current_a", r.rated_current_a,
                                  expected.rated_current_a)):
            if abs(have - want) > RATING_TOLERANCE * want:
                problems.append(f"reports {what.split('_')[1]} rating {have:g} but "
                                f"[modules] {what} = {want:g}")
        if problems:
            raise CheckFailed("; ".join(problems) + f" ({rated})")
        return rated
    finally:
        await driver.close()


# --------------------------------------------------------------------------- matrix, meters
def _contactor(m: int, g: int, guns: int) -> str:
    return f"module {m + 1} → gun {g + 1} (coil {coil_index(m, g, guns)})"


def _listed(items: list[str]) -> str:
    more = len(items) - MAX_LISTED
    return ", ".join(items[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


async def check_matrix(modules: int, guns: int, ep: DeviceEndpoint, link: LinkSettings) -> str:
    """Every coil equals its feedback and, the controller being stopped, all are open."""
    driver = ModbusMatrix(modules, guns, ep, link)
    try:
        state = await driver.poll()
        if state.available and (state.mismatch().any() or state.closed.any()):
            await asyncio.sleep(MATRIX_SETTLE_S)  # caught mid-switch? read once more
            state = await driver.poll()
        if not state.available:
            raise CheckFailed(_driver_reason(state.reason, "matrix", ep))
    finally:
        await driver.close()
    closed, coils = state.closed, state.commanded
    welded = [_contactor(int(m), int(g), guns) for m, g in np.argwhere(closed & ~coils)]
    stuck_open = [_contactor(int(m), int(g), guns) for m, g in np.argwhere(coils & ~closed)]
    stale = [_contactor(int(m), int(g), guns) for m, g in np.argwhere(coils & closed)]
    problems = []
    if welded:
        problems.append(f"welded (feedback closed, coil open): {_listed(welded)}")
    if stuck_open:
        problems.append("commanded closed but feedback open (contactor or auxiliary contact "
                        f"faulty): {_listed(stuck_open)}")
    if stale:
        problems.append("closed by a stale command while the controller is stopped (coil "
                        f"still on): {_listed(stale)}")
    if state.welded and not welded:
        problems.append("the matrix reports a welded contact (fault word "
                        f"0x{state.fault_word:04x})")
    if problems:
        raise CheckFailed("; ".join(problems))
    note = (", interlock-refused flag set from the last run" if state.interlock_refused else "")
    return (f"{modules}×{guns} contactors all open, feedback agrees with every coil"
            f"{note}")


async def check_meter(gun: int, ep: DeviceEndpoint, link: LinkSettings) -> str:
    driver = ModbusMeter(gun, ep, link)
    try:
        s = await driver.poll()
    finally:
        await driver.close()
    if not s.available:
        raise CheckFailed(_driver_reason(s.reason, f"meter {gun}", ep))
    return (f"{s.voltage_v:.1f} V, {s.current_a:.1f} A, energy register "
            f"{s.energy_wh / 1000:.3f} kWh")


async def check_vehicle(gun: int, ep: DeviceEndpoint, link: LinkSettings) -> str:
    """The gun's SECC bridge: reachable, a sane status, its heartbeat moving. Read-only: a
    raw read through the Modbus link, never the vehicle link (which writes START/STOP)."""
    modbus = ModbusLink(ep, f"SECC gun {gun + 1}", link)
    try:
        first = await modbus.run_poll(lambda: modbus.read_input(SECC_INPUT_START,
                                                                SECC_INPUT_COUNT))
        await asyncio.sleep(0.1)
        second = await modbus.run_poll(lambda: modbus.read_input(SECC_INPUT_START,
                                                                 SECC_INPUT_COUNT))
        a, b = decode_status(first), decode_status(second)
    except HardwareError as exc:
        raise CheckFailed(f"SECC gun {gun + 1} at {endpoint_label(ep)}: {exc}") from None
    except SeccDecodeError as exc:
        raise CheckFailed(f"SECC gun {gun + 1} answers nonsense: {exc}") from None
    finally:
        await modbus.close()
    if a.heartbeat == b.heartbeat:
        raise CheckFailed(f"SECC gun {gun + 1}: heartbeat stuck at {b.heartbeat} (bridge "
                          "frozen: the controller would treat the gun as unplugged)")
    if not b.plugged:
        return "answering, heartbeat moving, no vehicle plugged"
    soc = "unknown" if b.soc_pct is None else f"{b.soc_pct:.1f} %"
    return (f"vehicle plugged: EV max {b.ev_max_current_a:.0f} A / {b.ev_max_voltage_v:.0f} V, "
            f"SoC {soc}")


# --------------------------------------------------------------------------- MQTT
def _mqtt_reason(exc: Exception, cfg: MqttConfig) -> str:
    msg = str(exc) or type(exc).__name__
    where = f"{cfg.host}:{cfg.port}"
    who = f"username {cfg.username!r}" if cfg.username else "no username"
    if "code:134" in msg or "code:4]" in msg or "code:5]" in msg or "code:135" in msg:
        return f"broker {where} refused the connection: {msg} ({who})"
    if "CERTIFICATE_VERIFY_FAILED" in msg:
        ca = cfg.tls.ca_file if cfg.tls is not None else None
        return (f"TLS: the certificate of broker {where} is not trusted "
                f"(checked against {ca or 'the system trust store'}): {msg}")
    if "refused" in msg.lower():
        return f"connection refused by {where} (broker not running or wrong port): {msg}"
    return f"cannot connect to broker {where}: {msg}"


async def check_mqtt(cfg: MqttConfig, station_id: str) -> str:
    """CONNECT with the controller's settings, SUBSCRIBE to the grid topic, DISCONNECT.

    The client id gets a ``-doctor`` suffix: the broker would otherwise drop a running
    controller's session with the same id.
    """
    cid = f"{cfg.client_id or f'mwc-{station_id}'}-doctor"
    try:
        client = MqttConnection(cfg.model_copy(update={"client_id": cid}),
                                station_id).make_client()
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CheckFailed(f"cannot set up TLS from [mqtt.tls]: {exc}") from None
    topic = cfg.topic("grid_limit", station_id)
    try:
        async with client:
            granted = await client.subscribe(topic, qos=1, timeout=cfg.timeout_s)
    except aiomqtt.MqttError as exc:
        raise CheckFailed(_mqtt_reason(exc, cfg)) from None
    codes = [int(c.value) if isinstance(c, ReasonCode) else int(c) for c in granted]
    if any(c >= 0x80 for c in codes):
        raise CheckFailed(f"broker {cfg.host}:{cfg.port} accepted the connection but refused "
                          f"the subscription to {topic} (code {codes[0]}: check its ACL)")
    how = "TLS" if cfg.tls is not None else "plain TCP"
    who = f"user {cfg.username}" if cfg.username else "anonymous"
    return f"{cfg.host}:{cfg.port} ({how}, {who}): connected, subscribed to {topic}"


# --------------------------------------------------------------------------- OCPP
#: Where each client persists the password the backend set: OCPP 2.0.1 in its device model
#: (A01, SetVariables BasicAuthPassword), OCPP 1.6 in its configuration keys
#: (ChangeConfiguration AuthorizationKey, security extension).
_PASSWORD_QUERIES = {
    "2.0.1": "SELECT value FROM device_model WHERE component = 'SecurityCtrlr' "
             "AND name = 'BasicAuthPassword' AND evse IS NULL",
    "1.6": "SELECT value FROM v16_config WHERE key = 'AuthorizationKey'",
}


def stored_password(database: str, version: str = "2.0.1") -> str | None:
    """The password the backend set, from the OCPP database; opened read-only.

    None when the database or its table does not exist yet (the configured password is then
    the one in force).
    """
    path = Path(database)
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error as exc:
        raise CheckFailed(f"cannot open ocpp.database {database} read-only: {exc}") from None
    try:
        row = db.execute(_PASSWORD_QUERIES[version]).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise CheckFailed(f"cannot read ocpp.database {database}: {exc}") from None
    finally:
        db.close()
    return str(row[0]) if row and row[0] else None


def _safe_url(url: str) -> str:
    """``url`` without any user:password@ part."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=host).geturl()


def _http_reason(status: int, body: str, cfg: OcppConfig, sid: str, source: str,
                 url: str) -> str:
    proto = connection.SUBPROTOCOLS.get(cfg.version, cfg.version)
    if status == 401:
        if cfg.security_profile in (1, 2):
            return (f"HTTP 401: the backend refused the credentials of station {sid} "
                    f"(wrong password? it came from {source})")
        return (f"HTTP 401: the backend wants credentials, security_profile "
                f"{cfg.security_profile} sends no password")
    if status == 404:
        return f"HTTP 404: no OCPP endpoint at {url} (check [ocpp] url and station_id)"
    if status == 400 and "subprotocol" in body.lower():
        return f"subprotocol {proto} refused by the backend (HTTP 400: {body})"
    return f"HTTP {status} from the backend: {body or 'no body'}"


async def check_ocpp(cfg: OcppConfig, station_id: str, timeout_s: float) -> str:
    """Open the websocket as the controller does (URL, TLS, credentials, subprotocol) and
    close it at once: no OCPP message is sent, so the backend records no boot."""
    url = _safe_url(connection.station_url(cfg, station_id))
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
    stored = (stored_password(cfg.database, cfg.version) if cfg.security_profile in (1, 2)
              else None)
    password = stored or (cfg.password.get_secret_value() if cfg.password is not None
                          else None)
    where_stored = "the device model" if cfg.version == "2.0.1" else "AuthorizationKey"
    source = (f"{where_stored} in {cfg.database}, set by the backend" if stored
              else "[ocpp] password")
    try:
        connection.ssl_context(cfg)  # the TLS files load?
    except (OSError, ssl.SSLError) as exc:
        raise CheckFailed(f"cannot load the TLS files of [ocpp] (ca_file/cert_file/key_file): "
                          f"{exc}") from None
    proto = connection.SUBPROTOCOLS.get(cfg.version, cfg.version)
    try:
        ws = await connection.connect(cfg, station_id, password, 0, open_timeout=timeout_s)
    except socket.gaierror as exc:
        raise CheckFailed(f"DNS: cannot resolve {parts.hostname}: {exc.strerror}") from None
    except ssl.SSLCertVerificationError as exc:
        raise CheckFailed(f"TLS: the backend's certificate is not trusted: "
                          f"{exc.verify_message} (checked against "
                          f"{cfg.ca_file or 'the system trust store'})") from None
    except ssl.SSLError as exc:
        extra = (f"; did the backend refuse the client certificate {cfg.cert_file}?"
                 if cfg.security_profile == 3 else "")
        raise CheckFailed(f"TLS handshake with {where} failed: {exc.reason or exc}{extra}"
                          ) from None
    except ConnectionRefusedError:
        raise CheckFailed(f"connection refused by {where} (backend not running or wrong "
                          "port)") from None
    except websockets.InvalidStatus as exc:
        body = exc.response.body.decode("utf-8", "replace").strip().splitlines()
        raise CheckFailed(_http_reason(exc.response.status_code, (body or [""])[0][:200],
                                       cfg, station_id, source, url)) from None
    except websockets.InvalidHandshake as exc:
        cause = exc.__cause__
        if (isinstance(cause, ssl.SSLError | ConnectionResetError | EOFError)
                and cfg.security_profile == 3):  # TLS 1.3: the refusal arrives after the
            # handshake, as a closed connection instead of the HTTP answer
            raise CheckFailed(f"the backend closed the TLS connection before answering ({cause})"
                              f": did it refuse the client certificate {cfg.cert_file}?"
                              ) from None
        raise CheckFailed(f"websocket handshake with {url} failed: {exc}") from None
    except TimeoutError:
        raise CheckFailed(f"no websocket handshake with {url} within {timeout_s:g} s") from None
    except ConnectionError as exc:  # connection.connect: subprotocol not accepted
        if "subprotocol" in str(exc):
            raise CheckFailed(f"subprotocol {proto} refused: {exc}") from None
        raise CheckFailed(f"connection to {where} failed: {exc}") from None
    except OSError as exc:
        raise CheckFailed(f"cannot connect to {where}: {exc.strerror or exc}") from None
    try:
        tls = ""
        ssl_obj = ws.transport.get_extra_info("ssl_object") if ws.transport else None
        if ssl_obj is not None:
            tls = f", {ssl_obj.version()}"
    finally:
        await ws.close()
    pw = f", password from {source}" if cfg.security_profile in (1, 2) else ""
    return (f"{url}: websocket opened and closed, subprotocol {ws.subprotocol}, security "
            f"profile {cfg.security_profile} ({_PROFILES[cfg.security_profile]}{tls}){pw}")
