"""The websocket to the backend: URL, security profiles 1–3, reconnect back-off (Part 4 §5.3).

Profile 1: HTTP Basic auth (``<stationId>:<BasicAuthPassword>``) over ws://. Profile 2: the
same over wss://, the server certificate checked against ``ca_file``, TLS ≥ 1.2. Profile 3:
wss:// with a client certificate, no Basic auth. The password is read from the device model
at every connect, so a BasicAuthPassword set by the backend (A01) is used on the next one.
"""

from __future__ import annotations

import asyncio
import base64
import random
import ssl
from collections.abc import Iterator

import websockets
from websockets.asyncio.client import ClientConnection

from controller.ocpp.config import OcppConfig

SUBPROTOCOL = "ocpp2.0.1"
#: How long closing the websocket waits for the backend's close frame (then the TCP
#: connection is dropped): a Reset or stop is never held up longer by a silent backend.
CLOSE_TIMEOUT_S = 3.0
SUBPROTOCOLS = {"2.0.1": "ocpp2.0.1", "1.6": "ocpp1.6"}  # by OcppConfig.version


def station_url(cfg: OcppConfig, station_id: str) -> str:
    return cfg.url.rstrip("/") + "/" + station_id


def ssl_context(cfg: OcppConfig) -> ssl.SSLContext | None:
    """The TLS context of profiles 2 and 3 (None for ws://)."""
    if not cfg.url.startswith("wss://"):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.security_profile == 3 and cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


def auth_headers(profile: int, station_id: str, password: str | None) -> dict[str, str]:
    if profile not in (1, 2) or not password:
        return {}
    raw = f"{station_id}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def backoff(wait_min: float, random_range: float, repeat: int,
            rng: random.Random | None = None) -> Iterator[float]:
    """Reconnect waits: ``wait_min`` doubled after each failure at most ``repeat`` times,
    plus a fresh random part in [0, random_range) every time; then the last value forever."""
    r = rng or random.Random()
    base = wait_min
    n = 0
    while True:
        yield base + r.uniform(0.0, random_range)
        if n < repeat:
            base *= 2
            n += 1


async def connect(cfg: OcppConfig, station_id: str, password: str | None,
                  ping_interval: float, open_timeout: float = 10.0) -> ClientConnection:
    """Open the websocket with the subprotocol of ``cfg.version`` (raises on refusal, TLS
    failure, wrong subprotocol)."""
    proto = SUBPROTOCOLS[cfg.version]
    ws = await websockets.connect(
        station_url(cfg, station_id), subprotocols=[websockets.Subprotocol(proto)],
        additional_headers=auth_headers(cfg.security_profile, station_id, password),
        ssl=ssl_context(cfg), ping_interval=ping_interval or None,
        ping_timeout=ping_interval or None, open_timeout=open_timeout, max_size=2**22,
        close_timeout=CLOSE_TIMEOUT_S)
    if ws.subprotocol != proto:
        await ws.close()
        raise ConnectionError(f"backend did not accept subprotocol {proto} "
                              f"(answered {ws.subprotocol!r})")
    return ws


async def tls_diagnosis(cfg: OcppConfig, timeout: float = 5.0) -> tuple[str, str] | None:
    """After a TLS handshake with the backend failed without a certificate error: find out
    whether the backend only offers a TLS version below 1.2 (security event InvalidTLSVersion)
    or only cipher suites we do not allow (InvalidTLSCipherSuite), with one probing handshake
    that accepts anything and sends nothing. None when neither (or the probe fails too)."""
    from urllib.parse import urlsplit

    ours = ssl_context(cfg)
    if ours is None:
        return None
    parts = urlsplit(cfg.url)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE  # only looking: this connection carries no data
    probe.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    probe.set_ciphers("ALL:@SECLEVEL=0")
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(
            parts.hostname, parts.port or 443, ssl=probe), timeout)
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    obj = w.get_extra_info("ssl_object")
    version, cipher = (obj.version(), obj.cipher()) if obj is not None else (None, None)
    w.close()
    if version in ("SSLv3", "TLSv1", "TLSv1.1"):
        return "InvalidTLSVersion", f"the CSMS offers {version} only; 1.2 or newer is required"
    allowed = {c["name"] for c in ours.get_ciphers()}
    if cipher is not None and cipher[0] not in allowed:
        return ("InvalidTLSCipherSuite",
                f"the CSMS offers cipher suite {cipher[0]} ({version}), which is not allowed")
    return None
