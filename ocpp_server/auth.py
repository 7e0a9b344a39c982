"""Station authentication at the websocket handshake (``process_request`` hook).

Security profiles (OCPP 2.0.1 Part 2 A00): 1 = Basic auth over ws or wss, 2 = Basic auth over
TLS, 3 = TLS client certificate whose CN equals the station id (checked against
``client_ca`` by the TLS layer). Profile 0 admits without credentials and is meant for labs.
Unknown station, missing or wrong credentials: HTTP 401. Path not ``/ocpp/<id>``: 404. No
supported subprotocol offered: 400 (before authentication reveals anything else, the path and
subprotocol are checked; the password is compared last and only in a worker thread, because
scrypt takes tens of milliseconds that would otherwise stall every other station).
After a pushed password change the earlier password is accepted too, until the station logs
in with the new one (``passwords.rotated``; docs/csms.md "Password rotation").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import math
import os
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from ocpp_server.passwords import current_hash, hash_password, match_password
from ocpp_server.repository import AlreadyExists, StationRecord
from ocpp_server.session import Backend, TokenBucket

log = structlog.get_logger("ocpp_server.auth")

SUBPROTOCOLS = ("ocpp2.0.1", "ocpp1.6")
_PATH = re.compile(r"/ocpp/([^/?#]+)/?")
_STATION_ID = re.compile(r"[A-Za-z0-9._~+*@\-]{1,48}")
MAX_RETRY_AFTER = 120  # seconds: the longest a refused station is asked to wait


@dataclass(frozen=True)
class Admission:
    """What the handshake established; stored on the connection for the handler."""

    station_id: str
    approved: bool
    security_profile: int


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization")
    if not header or not header.lower().startswith("basic "):
        return None
    try:  # a non-ASCII header is a ValueError (not binascii.Error) from b64decode
        user, _, password = base64.b64decode(header[6:].strip(),
                                             validate=True).decode().partition(":")
    except (binascii.Error, ValueError):
        raise MalformedCredentials("Authorization header is not valid Basic credentials "
                                   "(base64 of UTF-8 'id:password')") from None
    return user, password


class MalformedCredentials(ValueError):
    """The Authorization header is present but not decodable Basic credentials."""


def _client_cn(connection: ServerConnection) -> str | None:
    cert = connection.transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class Authenticator:
    """The ``process_request`` callable for one listener (plain or TLS)."""

    def __init__(self, backend: Backend, tls: bool) -> None:
        self.backend = backend
        self.tls = tls
        # Passwords verified since start, as keyed HMACs: a reconnect storm costs no scrypt.
        self._key = os.urandom(32)
        self._verified: dict[str, tuple[str, bytes, int]] = {}
        ocfg = backend.cfg.ocpp
        self._admit = (TokenBucket(ocfg.admit_rate_per_s, ocfg.admit_burst)
                       if ocfg.admit_rate_per_s > 0 else None)
        self.deferred = 0  # handshakes answered 503 by the admission rate
        self._next_slot = 0.0  # monotonic time of the last admission slot handed out

    def _retry_after(self) -> int:
        """Seconds until the next admission slot not yet promised to a refused station.

        Telling every refused station "1 s" brings the whole fleet back each second: a storm
        of N stations costs N handshakes per second to refuse, whatever the rate. Handing out
        slots ``1/rate`` apart spreads the retries over the time the admission needs (10,000
        stations at 300/s: 1..34 s), so most stations are refused once. A station that ignores
        the header only costs a refusal; the schedule never reaches past ``MAX_RETRY_AFTER``."""
        now, rate = time.monotonic(), self.backend.cfg.ocpp.admit_rate_per_s
        self._next_slot = min(max(self._next_slot, now + 1.0) + 1.0 / rate,
                              now + MAX_RETRY_AFTER)
        return min(MAX_RETRY_AFTER, max(1, math.ceil(self._next_slot - now)))

    def _deny(self, connection: ServerConnection, station_id: str, reason: str,
              body: str = "Unauthorized\n") -> Response:
        log.warning("station_refused", station_id=station_id, reason=reason,
                    remote=str(connection.remote_address))
        response = connection.respond(HTTPStatus.UNAUTHORIZED, body)
        response.headers["WWW-Authenticate"] = 'Basic realm="mwcharge", charset="UTF-8"'
        return response

    async def _password_index(self, station: StationRecord, password: str) -> int | None:
        """Which of the station's hashes ``password`` matches (0 = current), or None."""
        if station.password_hash is None:
            return None
        mac = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        cached = self._verified.get(station.id)
        if cached is not None and cached[0] == station.password_hash \
                and hmac.compare_digest(cached[1], mac):
            return cached[2]
        index = await asyncio.to_thread(match_password, password, station.password_hash)
        if index is not None:
            self._verified[station.id] = (station.password_hash, mac, index)
        return index

    async def _retire_old_passwords(self, station: StationRecord) -> None:
        """The station logged in with its new password: earlier ones stop working (A09)."""
        assert station.password_hash is not None
        now = await self.backend.repo.get_station(station.id)
        if now is None or now.password_hash != station.password_hash:
            return  # changed meanwhile (another push): keep what the operator set last
        await self.backend.repo.set_station_password(station.id,
                                                     current_hash(station.password_hash))
        log.info("station_password_rotated", station_id=station.id)

    async def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        match = _PATH.fullmatch(request.path.split("?", 1)[0])
        if match is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "use /ocpp/<stationId>\n")
        station_id = unquote(match[1])
        if not _STATION_ID.fullmatch(station_id):
            return connection.respond(HTTPStatus.BAD_REQUEST, "invalid station id\n")
        offered = {p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol")
                   for p in h.split(",")}
        if not offered.intersection(SUBPROTOCOLS):
            return connection.respond(
                HTTPStatus.BAD_REQUEST,
                f"offer one of the subprotocols {', '.join(SUBPROTOCOLS)}\n")
        if self._admit is not None and not self._admit.take():
            # A storm: admit at the configured rate so the loop keeps serving the stations
            # already in; the rest come back after Retry-After (with their own back-off).
            self.deferred += 1
            response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy, retry\n")
            response.headers["Retry-After"] = str(self._retry_after())
            return response
        try:
            creds = _basic_credentials(request)
        except MalformedCredentials as exc:
            return self._deny(connection, station_id, str(exc), body=f"{exc}\n")
        cn = _client_cn(connection) if self.tls else None
        station = await self.backend.repo.get_station(station_id)
        if station is None:
            if not self.backend.cfg.ocpp.auto_register:
                return self._deny(connection, station_id, "unknown station")
            station = await self._register(station_id, creds, cn)
        denial = await self._check(station, creds, cn)
        if denial is not None:
            return self._deny(connection, station_id, denial)
        connection.csms_admission = Admission(  # type: ignore[attr-defined]
            station_id, station.approved, station.security_profile)
        return None

    async def _check(self, station: StationRecord, creds: tuple[str, str] | None,
                     cn: str | None) -> str | None:
        """None when admitted, else the reason (for the log only)."""
        profile = station.security_profile
        if profile == 0:
            return None
        if profile >= 2 and not self.tls:
            return f"profile {profile} requires TLS"
        if profile == 3:
            return None if cn == station.id else f"client certificate CN {cn!r} != station id"
        if creds is None:
            return "no Basic credentials"
        if creds[0] != station.id:
            return "Basic username is not the station id"
        index = await self._password_index(station, creds[1])
        if index is None:
            return "wrong password"
        if index > 0:  # accepted a new password but still presents the old: keep both
            log.info("station_old_password_used", station_id=station.id)
        elif station.password_hash is not None and "," in station.password_hash:
            await self._retire_old_passwords(station)
        return None

    async def _register(self, station_id: str, creds: tuple[str, str] | None,
                        cn: str | None) -> StationRecord:
        """Lab mode: remember an unknown station with the credentials it presents (TOFU)."""
        pw_hash: str | None = None
        profile = 0
        if cn == station_id:
            profile = 3
        elif creds is not None and creds[0] == station_id:
            try:
                pw_hash = await asyncio.to_thread(hash_password, creds[1])
                profile = 2 if self.tls else 1
            except ValueError:
                pass
        record = StationRecord(id=station_id, security_profile=profile,
                               approved=self.backend.cfg.ocpp.auto_approve,
                               password_hash=pw_hash)
        try:
            await self.backend.repo.add_station(record)
            log.info("station_auto_registered", station_id=station_id, security_profile=profile)
        except AlreadyExists:  # registered by a concurrent handshake
            existing = await self.backend.repo.get_station(station_id)
            assert existing is not None
            return existing
        return record


def admission_of(connection: Any) -> Admission:
    return connection.csms_admission  # type: ignore[no-any-return]
