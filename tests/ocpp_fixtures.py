"""Shared helpers for the OCPP client tests: a test backend built from the ``ocpp`` package
over real websockets, a fake station with the observer/authorizer surface of ``Station``,
a test PKI, and a simulated wall clock."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ocpp.exceptions import InternalError
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call_result

from controller.config import parse_config
from controller.limits import LimitBook
from controller.ocpp.config import OcppConfig
from controller.ocpp.ports import StationPort
from controller.ocpp.v201.service import OcppService
from controller.records import GunRecord
from controller.session import GunSession, GunState, SessionEvent
from controller.station import CycleEvent, MeterSample

STATION_TOML = {
    "station": {"id": "MWC-T1", "max_kw": 1440, "fallback_grid_kw": 1000},
    "guns": [{"cable_rating_a": 1200, "max_voltage_v": 1250},
             {"cable_rating_a": 1200, "max_voltage_v": 1250}],
    "modules": {"count": 4},
}


def station_config() -> Any:
    return parse_config(STATION_TOML)


class SimWall:
    """Simulated UTC wall clock (and monotonic clock) moved by the test."""

    def __init__(self) -> None:
        self.t = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.UTC)
        self.mono = 1000.0

    def __call__(self) -> dt.datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += dt.timedelta(seconds=seconds)
        self.mono += seconds


@dataclass
class FakeStation:
    """Same surface as controller.station.Station for the OCPP service (type-checks against
    :class:`controller.ocpp.ports.StationPort`: ``mypy tests/ocpp_fixtures.py``)."""

    wall: SimWall
    guns: int = 2
    limits: LimitBook = field(default_factory=LimitBook)
    authorizer: Any = None
    stops: list[tuple[int, str]] = field(default_factory=list)
    auth: dict[int, bool] = field(default_factory=dict)
    available: dict[int, bool] = field(default_factory=dict)
    observers: list[Callable[[Any], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sessions = tuple(GunSession(g) for g in range(self.guns))
        self.cleared: list[int] = []
        self.energy = [0.0] * self.guns
        self.seq = 0
        self.last_record: Any = None

    def clock(self) -> float:
        return self.wall.mono

    def subscribe(self, cb: Callable[[Any], None]) -> Callable[[], None]:
        self.observers.append(cb)
        return lambda: None

    def stop_charging(self, gun: int, reason: str = "Remote") -> None:
        self.stops.append((gun, reason))

    def set_authorization(self, gun: int, ok: bool) -> None:
        self.auth[gun] = ok

    def set_available(self, gun: int, ok: bool) -> None:
        self.available[gun] = ok

    def clear_fault(self, gun: int) -> None:
        self.cleared.append(gun)

    def emit(self, ev: Any) -> None:
        for cb in self.observers:
            cb(ev)

    def go(self, g: int, state: GunState, reason: str | None = None,
           token: str | None = "TRUCK-1") -> None:
        prev = self.sessions[g].state
        self.sessions = tuple(GunSession(g, state) if i == g else s
                              for i, s in enumerate(self.sessions))
        self.emit(SessionEvent("state_changed", g, self.wall.mono, state, prev, reason, token))

    def event(self, kind: str, g: int, reason: str | None = None, token: str = "TRUCK-1",
              energy: float = 0.0) -> None:
        self.emit(SessionEvent(kind, g, self.wall.mono, self.sessions[g].state, None, reason,
                               token, energy))

    def cycle(self, volts: float = 790.0) -> None:
        """A CycleEvent: every gun's meter read, no current flowing yet."""
        guns = tuple(GunRecord(g, self.sessions[g].state.value, 0.0, volts, 0.0, 0.0, "EV",
                               "ev", (), 41.5, self.energy[g]) for g in range(self.guns))
        self.seq += 1
        self.last_record = SimpleNamespace(seq=self.seq, guns=guns)  # kept before the events
        self.emit(CycleEvent(self.last_record))  # type: ignore[arg-type]

    def sample(self, g: int, current: float = 1000.0, volts: float = 800.0) -> None:
        self.energy[g] += current * volts / 3600.0  # 1 s of energy
        rec = GunRecord(g, "Charging", current, volts, current * volts, current, "EV", "ev",
                        (0,), 42.0, self.energy[g])
        self.emit(MeterSample(g, self.wall.mono, rec))


def as_station_port(st: FakeStation) -> StationPort:
    """The type check of the double: mypy refuses this if FakeStation stops being a
    StationPort (``mypy tests/ocpp_fixtures.py``)."""
    return st


class Csms(ChargePoint):  # type: ignore[misc]
    """The test backend's view of one station: records every CALL it receives."""

    def __init__(self, cid: str, ws: Any, backend: Backend) -> None:
        super().__init__(cid, ws, response_timeout=5, logger=logging.getLogger("csms"))
        self.backend = backend

    async def route_message(self, raw_msg: str) -> None:
        self.backend.raw.append(raw_msg)
        self.backend.changed.set()
        await super().route_message(raw_msg)

    def _rec(self, action: str, kw: dict[str, Any]) -> None:
        self.backend.got.append((action, kw))
        self.backend.changed.set()

    @on("BootNotification")
    def boot(self, **kw: Any) -> Any:
        self._rec("BootNotification", kw)
        status = self.backend.boot.pop(0) if len(self.backend.boot) > 1 else self.backend.boot[0]
        return call_result.BootNotification(current_time=self.backend.now(), interval=
                                            self.backend.interval, status=status)

    @on("Heartbeat")
    def heartbeat(self, **kw: Any) -> Any:
        self._rec("Heartbeat", kw)
        return call_result.Heartbeat(current_time=self.backend.now())

    @on("StatusNotification")
    def status(self, **kw: Any) -> Any:
        self._rec("StatusNotification", kw)
        return call_result.StatusNotification()

    @on("TransactionEvent")
    def tx_event(self, **kw: Any) -> Any:
        self._rec("TransactionEvent", kw)
        if self.backend.reject_tx > 0:
            self.backend.reject_tx -= 1
            raise InternalError(description="test backend refuses")
        return call_result.TransactionEvent()

    @on("Authorize")
    def authorize(self, **kw: Any) -> Any:
        self._rec("Authorize", kw)
        ok = kw["id_token"]["id_token"] in self.backend.tokens
        return call_result.Authorize(id_token_info={"status": "Accepted" if ok else "Invalid"})

    @on("SecurityEventNotification")
    def security(self, **kw: Any) -> Any:
        self._rec("SecurityEventNotification", kw)
        return call_result.SecurityEventNotification()

    @on("NotifyReport")
    def report(self, **kw: Any) -> Any:
        self._rec("NotifyReport", kw)
        return call_result.NotifyReport()

    @on("NotifyChargingLimit")
    def limit(self, **kw: Any) -> Any:
        self._rec("NotifyChargingLimit", kw)
        return call_result.NotifyChargingLimit()

    @on("ReportChargingProfiles")
    def profiles(self, **kw: Any) -> Any:
        self._rec("ReportChargingProfiles", kw)
        return call_result.ReportChargingProfiles()

    @on("MeterValues")
    def meter(self, **kw: Any) -> Any:
        self._rec("MeterValues", kw)
        return call_result.MeterValues()


@dataclass
class Backend:
    """A CSMS on a real websocket server (optionally TLS, optionally Basic auth)."""

    password: str | None = None
    ssl_ctx: ssl.SSLContext | None = None
    boot: list[str] = field(default_factory=lambda: ["Accepted"])
    interval: int = 60
    reject_tx: int = 0
    tokens: set[str] = field(default_factory=lambda: {"TRUCK-1"})
    got: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    auth_seen: list[str | None] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    cp: Any = None
    server: Any = None
    port: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    clock: Callable[[], dt.datetime] | None = None  # the backend's own time (default: real)
    subprotocol: ClassVar[str] = "ocpp2.0.1"

    def make_cp(self, cid: str, ws: Any) -> Any:
        """The backend's ChargePoint for one connection (a 1.6 backend overrides this)."""
        return Csms(cid, ws, self)

    def now(self) -> str:
        t = self.clock() if self.clock is not None else dt.datetime.now(dt.UTC)
        return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def of(self, action: str) -> list[dict[str, Any]]:
        return [kw for a, kw in self.got if a == action]

    async def start(self, port: int = 0) -> None:
        async def check(conn: Any, request: Any) -> Any:
            auth = request.headers.get("Authorization")
            self.auth_seen.append(auth)
            if self.password is not None:
                want = "Basic " + base64.b64encode(
                    f"MWC-T1:{self.password}".encode()).decode()
                if auth != want:
                    return conn.respond(401, "bad credentials\n")
            return None

        async def handler(ws: Any) -> None:
            cp = self.make_cp(ws.request.path.rsplit("/", 1)[-1], ws)
            self.cp = cp
            with contextlib.suppress(websockets.ConnectionClosed):
                await cp.start()

        proto = websockets.Subprotocol(self.subprotocol)
        self.server = await websockets.serve(handler, "127.0.0.1", port, subprotocols=[proto],
                                             process_request=check, ssl=self.ssl_ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.cp = None

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        async def loop() -> None:
            while not pred():
                self.changed.clear()
                with __import__("contextlib").suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.05)
        await asyncio.wait_for(loop(), timeout)


def ocpp_config(tmp: Path, port: int, **kw: Any) -> OcppConfig:
    base: dict[str, Any] = {
        "url": f"ws://127.0.0.1:{port}/ocpp", "security_profile": 1, "password": "s3cret-pass",
        "database": str(tmp / "ocpp.sqlite3"), "retry_backoff_wait_minimum_s": 0,
        "retry_backoff_random_range_s": 0, "message_attempt_interval_s": 0,
        "response_timeout_s": 2, "ping_interval_s": 0, "aligned_interval_s": 0,
        "sampled_interval_s": 60}
    base.update(kw)
    return OcppConfig(**base)


async def started(cfg: OcppConfig, wall: SimWall) -> tuple[OcppService, FakeStation,
                                                            asyncio.Task[None]]:
    svc = OcppService(cfg, station_config(), wall=wall)
    st = FakeStation(wall)
    svc.attach(st)
    return svc, st, asyncio.ensure_future(svc.run())


async def shutdown(svc: OcppService, task: asyncio.Task[None]) -> None:
    await svc.close()
    task.cancel()
    with __import__("contextlib").suppress(BaseException):
        await task


@contextlib.asynccontextmanager
async def online(tmp: Path, **cfg: Any) -> AsyncIterator[
        tuple[Backend, OcppService, FakeStation, SimWall]]:
    """A test backend and a booted client on a fake station, both stopped afterwards."""
    be = Backend()
    await be.start()
    wall = SimWall()
    svc, st, task = await started(ocpp_config(tmp, be.port, **cfg), wall)
    try:
        await be.wait_for(lambda: svc.online)
        yield be, svc, st, wall
    finally:
        await shutdown(svc, task)
        await be.stop()


# ------------------------------------------------------------------ test PKI
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: Any, issuer: x509.Name | None, issuer_key: Any, ca: bool,
          san: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        import ipaddress
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_pki(d: Path) -> Pki:
    def write(name: str, obj: Any) -> Path:
        p = d / name
        if isinstance(obj, x509.Certificate):
            p.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
        else:
            p.write_bytes(obj.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
        return p

    ca_key, other_key = _key(), _key()
    ca = _cert("test CA", ca_key, None, ca_key, True)
    other = _cert("other CA", other_key, None, other_key, True)
    sk, ck = _key(), _key()
    server = _cert("127.0.0.1", sk, ca.subject, ca_key, False, san=True)
    client = _cert("MWC-T1", ck, ca.subject, ca_key, False)
    return Pki(write("ca.pem", ca), write("server.pem", server), write("server.key", sk),
               write("client.pem", client), write("client.key", ck), write("other.pem", other))


def server_ssl(pki: Pki, client_auth: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if client_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.ca)
    return ctx
