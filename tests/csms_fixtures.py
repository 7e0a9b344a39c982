"""Helpers for the CSMS tests: a backend on loopback, stations from the ``ocpp`` package, PKI.

Plain helpers rather than pytest fixtures so the test modules import them explicitly (the
suite has no shared conftest for the backend).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
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
        return _issue(self.dir, cn, self._ca if ca else None, client=True)

    _ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None

    def client_context(self, cn: str | None, ca: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        if cn is not None:
            cert, key = self.client(cn, ca)
            ctx.load_cert_chain(str(cert), str(key))
        return ctx


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(directory: Path, cn: str,
           issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *,
           client: bool = False, server: bool = False) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (x509.CertificateBuilder().subject_name(_name(cn))
               .issuer_name(issuer[0].subject if issuer else _name(cn))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + dt.timedelta(days=2)))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path, key_path = directory / f"{cn}.crt", directory / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca = (x509.CertificateBuilder().subject_name(_name("mwcharge test CA"))
          .issuer_name(_name("mwcharge test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(start + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert, key = _issue(directory, "localhost", (ca, ca_key), server=True)
    pki = Pki(ca_path, cert, key, directory)
    pki._ca = (ca, ca_key)
    return pki
