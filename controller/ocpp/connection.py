"""The websocket to the backend: URL, security profiles 1–3, reconnect back-off (Part 4 §5.3).

Profile 1: HTTP Basic auth (``<stationId>:<BasicAuthPassword>``) over ws://. Profile 2: the
same over wss://, the server certificate checked against ``ca_file``, TLS ≥ 1.2. Profile 3:
wss:// with a client certificate, no Basic auth. The password is read from the device model
at every connect, so a BasicAuthPassword set by the backend (A01) is used on the next one.
"""

from __future__ import annotations

import base64
import random
import ssl
from collections.abc import Iterator
from typing import Any

import websockets

from controller.ocpp.config import OcppConfig

SUBPROTOCOL = "ocpp2.0.1"


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
                  ping_interval: float, open_timeout: float = 10.0) -> Any:
    """Open the websocket (raises on refusal, TLS failure, wrong subprotocol)."""
    ws = await websockets.connect(
        station_url(cfg, station_id), subprotocols=[websockets.Subprotocol(SUBPROTOCOL)],
        additional_headers=auth_headers(cfg.security_profile, station_id, password),
        ssl=ssl_context(cfg), ping_interval=ping_interval or None,
        ping_timeout=ping_interval or None, open_timeout=open_timeout, max_size=2**22)
    if ws.subprotocol != SUBPROTOCOL:
        await ws.close()
        raise ConnectionError(f"backend did not accept subprotocol {SUBPROTOCOL} "
                              f"(answered {ws.subprotocol!r})")
    return ws
