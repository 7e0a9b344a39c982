"""Helpers for the CSMS tests: a backend on loopback, stations from the ``ocpp`` package, PKI.

Plain helpers rather than pytest fixtures so the test modules import them explicitly (the
suite has no shared conftest for the backend).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import websockets
from helpers import Issued, certificate
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v201 import ChargePoint as Cp201

from ocpp_server.app import CsmsServer
from ocpp_server.config import CsmsConfig
from ocpp_server.passwords import hash_password
from ocpp_server.repository import StationRecord, TokenRecord

API_TOKEN = "test-api-token"
PASSWORD = "correct-horse-battery"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_config(tmp_path: Path, **ocpp: Any) -> CsmsConfig:
    cfg = CsmsConfig()
    cfg.storage.path = str(tmp_path / "csms.db")
    cfg.ocpp.host = "127.0.0.1"
    cfg.ocpp.port = 0
    cfg.ocpp.call_timeout = 5
    for key, value in ocpp.items():
        setattr(cfg.ocpp, key, value)
    cfg.api.port = 0
    cfg.api.tokens = [API_TOKEN]
    return cfg


@contextlib.asynccontextmanager
async def running_csms(cfg: CsmsConfig) -> AsyncIterator[CsmsServer]:
    server = CsmsServer(cfg)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def provision(server: CsmsServer, station_id: str, *, password: str | None = PASSWORD,
                    profile: int = 1, approved: bool = True) -> None:
    pw_hash = None if password is None else hash_password(password, n=2**10)
    await server.repo.add_station(StationRecord(id=station_id, security_profile=profile,
                                                approved=approved, password_hash=pw_hash))


async def add_token(server: CsmsServer, id_token: str, **kw: Any) -> None:
    await server.repo.upsert_token(TokenRecord(id_token, **kw))


def basic(station_id: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{station_id}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@contextlib.asynccontextmanager
async def station(url: str, station_id: str, cls: type = Cp201, *, password: str | None = PASSWORD,
                  subprotocol: str | None = None, ssl_ctx: ssl.SSLContext | None = None,
                  ) -> AsyncIterator[Any]:
    """A connected ``ocpp`` ChargePoint (``cls``) whose receive loop runs in a task."""
    proto = subprotocol or ("ocpp1.6" if issubclass(cls, Cp16) else "ocpp2.0.1")
    headers = basic(station_id, password) if password else None
    async with websockets.connect(f"{url}/ocpp/{station_id}", subprotocols=[proto],  # type: ignore[list-item]
                                  additional_headers=headers, ssl=ssl_ctx,
                                  open_timeout=5) as ws:
        cp = cls(station_id, ws, response_timeout=5)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def api(server: CsmsServer, token: str = API_TOKEN) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.api_port}",
                             headers={"Authorization": f"Bearer {token}"}, timeout=10)


# --- PKI --------------------------------------------------------------------------------------
@dataclass
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    dir: Path

    def client(self, cn: str, ca: bool = True) -> tuple[Path, Path]:
        """A client certificate for ``cn`` signed by the test CA (or self-signed)."""
        issued = certificate(cn, self._ca if ca else None, client=True)
        cert_path, key_path = self.dir / f"{cn}.crt", self.dir / f"{cn}.key"
        issued.write(cert_path, key_path)
        return cert_path, key_path

    _ca: Issued | None = None

    def client_context(self, cn: str | None, ca: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        if cn is not None:
            cert, key = self.client(cn, ca)
            ctx.load_cert_chain(str(cert), str(key))
        return ctx


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = certificate("mwcharge test CA", ca=True)
    ca_path = directory / "ca.crt"
    cert, key = directory / "localhost.crt", directory / "localhost.key"
    ca.write(ca_path)
    certificate("localhost", ca, server=True).write(cert, key)
    pki = Pki(ca_path, cert, key, directory)
    pki._ca = ca
    return pki
