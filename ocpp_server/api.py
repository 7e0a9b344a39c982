"""Operator REST API (FastAPI): stations, tokens, transactions; commands in ``api_commands``.

Every route under ``/api/v1`` needs ``Authorization: Bearer <token>`` with a token from the
configuration (``[api] tokens``); an empty list locks the API. ``/openapi.json``, ``/docs``
and ``/healthz`` are open: they hold no data.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING, Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator

from ocpp_server import commands
from ocpp_server.api_limits import strict_json_body
from ocpp_server.cluster import RemoteSession, retrigger_boot
from ocpp_server.limits import is_timestamp
from ocpp_server.passwords import MAX_LENGTH, MIN_LENGTH, hash_password, rotated
from ocpp_server.repository import AlreadyExists, StationRecord, TokenRecord, TxFilter

if TYPE_CHECKING:
    from ocpp_server.app import CsmsServer

log = structlog.get_logger("ocpp_server.api")
_bearer = HTTPBearer(auto_error=False)
_background: set[asyncio.Task[None]] = set()


class StationIn(BaseModel):
    id: str = Field(pattern=r"^[A-Za-z0-9._~+*@\-]{1,48}$")
    password: str | None = Field(None, min_length=MIN_LENGTH, max_length=MAX_LENGTH)
    security_profile: int = Field(1, ge=0, le=3)
    approved: bool = True
    rated_power_w: float | None = Field(
        None, gt=0, le=1e8, description="for meter-value plausibility; none: the default")


class RatingIn(BaseModel):
    rated_power_w: float | None = Field(gt=0, le=1e8, description="W; null: the default")


class PasswordIn(BaseModel):
    password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)
    push: bool = Field(True, description="if connected, send it to the station first (A09)")


class TokenIn(BaseModel):
    id_token: str = Field(min_length=1, max_length=36)
    type: str = "ISO14443"
    status: Literal["Accepted", "Blocked", "Expired", "Invalid", "NoCredit",
                    "NotAllowedTypeEVSE", "NotAtThisLocation", "NotAtThisTime"] = "Accepted"
    expiry: str | None = Field(None, description="ISO 8601; after it the token is Expired")
    group_id: str | None = Field(None, min_length=1, max_length=36)

    @field_validator("expiry")
    @classmethod
    def _expiry_is_a_date(cls, value: str | None) -> str | None:
        if value is not None and not is_timestamp(value):
            raise ValueError("expiry must be an ISO 8601 date-time")
        return value


def create_app(server: CsmsServer) -> FastAPI:
    """The FastAPI app bound to one running backend."""
    repo = server.repo
    tokens = [t.encode() for t in server.cfg.api.tokens]
    if not tokens:
        log.warning("api_locked", reason="no [api] tokens configured")

    async def require_token(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        given = creds.credentials.encode() if creds is not None else b""
        if not any(hmac.compare_digest(given, t) for t in tokens):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="mwcharge CSMS", version="1",
                  description="Operator API of the mwcharge OCPP backend")
    api = APIRouter(prefix="/api/v1",  # token first: a stranger learns nothing from a 422
                    dependencies=[Depends(require_token), Depends(strict_json_body)])

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, Any]:
        out: dict[str, Any] = {"ok": True, "connected": len(server.backend.sessions),
                               # event-loop lags > 50 ms: [unix time, ms], the last 256
                               "stalls": [[round(t, 3), round(lag * 1000)]
                                          for t, lag in server.stalls]}
        if server.cluster is not None:
            out["cluster"] = server.cluster.snapshot()
        return out

    async def _station_or_404(station_id: str) -> StationRecord:
        station = await repo.get_station(station_id)
        if station is None:
            raise HTTPException(404, f"unknown station {station_id!r}")
        return station

    @api.get("/metrics", tags=["meta"])
    async def metrics() -> dict[str, Any]:
        """CALLs handled per action, errors, and the handling-time histogram (ms)."""
        from ocpp_server.metrics import BOUNDS

        return {"connected": len(server.backend.sessions), **server.backend.metrics.snapshot(),
                "bucket_bounds_ms": [round(b, 3) for b in BOUNDS]}

    # stations -------------------------------------------------------------------------
    @api.get("/stations", tags=["stations"])
    async def list_stations() -> list[dict[str, Any]]:
        out = []
        for st in await repo.list_stations():
            session = server.session(st.id)
            out.append({**st.public(), "connected": session is not None,
                        "protocol": session.subprotocol if session else None})
        return out

    @api.post("/stations", status_code=201, tags=["stations"])
    async def add_station(body: StationIn) -> dict[str, Any]:
        pw_hash = None if body.password is None else await asyncio.to_thread(
            hash_password, body.password)
        record = StationRecord(id=body.id, security_profile=body.security_profile,
                               approved=body.approved, password_hash=pw_hash,
                               rated_power_w=body.rated_power_w)
        try:
            await repo.add_station(record)
        except AlreadyExists as exc:
            raise HTTPException(409, str(exc)) from exc
        log.info("station_added", station_id=body.id, security_profile=body.security_profile)
        stored = await repo.get_station(body.id)  # with created_at, as the database has it
        return (stored or record).public()

    @api.get("/stations/{station_id}", tags=["stations"])
    async def station_detail(station_id: str) -> dict[str, Any]:
        st = await _station_or_404(station_id)
        session = server.session(station_id)
        live = session.status() if session is not None else {"connected": False}
        return {**st.public(), "connection": live,
                "evse_status": await repo.latest_statuses(station_id)}

    @api.post("/stations/{station_id}/approve", tags=["stations"])
    async def approve_station(station_id: str) -> dict[str, Any]:
        await _station_or_404(station_id)
        await repo.set_station_approved(station_id, True)
        session = server.session(station_id)
        if isinstance(session, RemoteSession):  # held by another instance: it re-triggers
            try:
                await session.approved_here()
            except Exception as exc:  # approved all the same; it boots at its next retry
                log.warning("approval_not_routed", station_id=station_id, error=str(exc))
        elif session is not None and not session.approved:
            # Ask a Pending station to boot again now rather than at its next retry.
            task = asyncio.create_task(retrigger_boot(session))
            _background.add(task)
            task.add_done_callback(_background.discard)
        return {"id": station_id, "approved": True}

    @api.put("/stations/{station_id}/password", tags=["stations"])
    async def set_password(station_id: str, body: PasswordIn) -> dict[str, Any]:
        st = await _station_or_404(station_id)
        session = server.session(station_id)
        pushed = False
        if body.push and session is not None:
            from ocpp_server.api_commands import station_call
            ok = await station_call(commands.push_password(session, body.password))
            if not ok:
                raise HTTPException(409, "the station rejected the new password; kept the old")
            pushed = True
        new_hash = await asyncio.to_thread(hash_password, body.password)
        # Pushed: the old password stays valid until the station logs in with the new one
        # (auth.py retires it then), so a station that said Accepted but kept its old
        # credentials is not locked out. Not pushed: the operator's word replaces it.
        await repo.set_station_password(
            station_id, rotated(new_hash, st.password_hash) if pushed else new_hash)
        log.info("station_password_set", station_id=station_id, pushed=pushed)
        return {"id": station_id, "pushed_to_station": pushed}

    @api.put("/stations/{station_id}/rating", tags=["stations"])
    async def set_rating(station_id: str, body: RatingIn) -> dict[str, Any]:
        """Rated power for meter-value plausibility (plausibility.py)."""
        await _station_or_404(station_id)
        await repo.set_station_rating(station_id, body.rated_power_w)
        return {"id": station_id, "rated_power_w": body.rated_power_w}

    @api.get("/stations/{station_id}/security-events", tags=["stations"])
    async def security_events(station_id: str) -> list[dict[str, Any]]:
        await _station_or_404(station_id)
        return await repo.list_security_events(station_id)

    @api.get("/stations/{station_id}/messages", tags=["stations"])
    async def messages(station_id: str, action: str | None = None,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
                       offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
                       ) -> list[dict[str, Any]]:
        """Requests kept verbatim: NotifyReport, DataTransfer, FirmwareStatusNotification..."""
        await _station_or_404(station_id)
        return await repo.list_messages(station_id, action, limit, offset)

    @api.get("/stations/{station_id}/charging-profiles", tags=["stations"])
    async def charging_profiles(station_id: str) -> list[dict[str, Any]]:
        await _station_or_404(station_id)
        return await repo.list_charging_profiles(station_id)

    # tokens ---------------------------------------------------------------------------
    @api.get("/tokens", tags=["tokens"])
    async def list_tokens() -> list[dict[str, Any]]:
        return [t.__dict__ for t in await repo.list_tokens()]

    @api.post("/tokens", status_code=201, tags=["tokens"])
    async def add_token(body: TokenIn) -> dict[str, Any]:
        token = TokenRecord(**body.model_dump())
        await repo.upsert_token(token)
        return token.__dict__

    @api.post("/tokens/{id_token}/block", tags=["tokens"])
    async def block_token(id_token: str) -> dict[str, Any]:
        if not await repo.set_token_status(id_token, "Blocked"):
            raise HTTPException(404, f"unknown token {id_token!r}")
        return {"id_token": id_token, "status": "Blocked"}

    @api.post("/tokens/{id_token}/unblock", tags=["tokens"])
    async def unblock_token(id_token: str) -> dict[str, Any]:
        if not await repo.set_token_status(id_token, "Accepted"):
            raise HTTPException(404, f"unknown token {id_token!r}")
        return {"id_token": id_token, "status": "Accepted"}

    # transactions ---------------------------------------------------------------------
    @api.get("/transactions", tags=["transactions"])
    async def list_transactions(
        station_id: str | None = None, id_token: str | None = None,
        active: bool | None = None,
        since: Annotated[str | None, Query(description="started at or after (ISO 8601)")] = None,
        until: Annotated[str | None, Query(description="started before (ISO 8601)")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    ) -> list[dict[str, Any]]:
        return await repo.list_transactions(TxFilter(station_id, id_token, active, since, until,
                                                     limit, offset))

    @api.get("/transactions/{tx_id}", tags=["transactions"])
    async def transaction_detail(tx_id: Annotated[int, Path(ge=1, le=2**62)]) -> dict[str, Any]:
        tx = await repo.get_transaction(tx_id)
        if tx is None:
            raise HTTPException(404, f"unknown transaction {tx_id}")
        return tx

    from ocpp_server.api_commands import command_router

    api.include_router(command_router(server))
    app.include_router(api)
    return app
