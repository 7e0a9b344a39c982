"""REST routes that send a command to a connected station and return its answer.

Offline station: 409 at once (also when it disconnects while the command waits). No answer
within the timeout (``?timeout=`` or the configured ``call_timeout``): 504. The station
answered with a CALLERROR: 502 with its error code.
A request that violates the OCPP schema is refused with 422 and never sent.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, HTTPException, Query
from ocpp.exceptions import OCPPError
from pydantic import BaseModel, Field

from ocpp_server import commands
from ocpp_server.limits import InvalidInput
from ocpp_server.session import Session, StationCallError, StationGone

if TYPE_CHECKING:
    from ocpp_server.app import CsmsServer

T = TypeVar("T")
Timeout = Annotated[float | None, Query(gt=0, le=300, description="seconds to wait")]


class RemoteStartIn(BaseModel):
    id_token: str
    evse_id: int | None = None
    charging_profile: dict[str, Any] | None = Field(
        None, description="OCPP JSON of the station's version (camelCase)")


class RemoteStopIn(BaseModel):
    transaction_id: str


class ChargingProfileIn(BaseModel):
    evse_id: int = 0
    charging_profile: dict[str, Any] = Field(
        description="chargingProfile (2.0.1) or csChargingProfiles (1.6), camelCase")


class ClearProfileIn(BaseModel):
    profile_id: int | None = None
    evse_id: int | None = None
    purpose: str | None = None
    stack_level: int | None = None


class CompositeIn(BaseModel):
    evse_id: int = 0
    duration: int = Field(3600, ge=1)
    charging_rate_unit: Literal["W", "A"] | None = None


class VariableIn(BaseModel):
    component: str | dict[str, Any]
    variable: str | dict[str, Any]
    evse: int | None = None
    attributeType: str | None = None  # the OCPP field name
    value: str | None = None


class ConfigGetIn(BaseModel):
    keys: list[str] | None = None


class ConfigSetIn(BaseModel):
    key: str
    value: str


class ResetIn(BaseModel):
    type: Literal["Immediate", "OnIdle", "Hard", "Soft"] = "OnIdle"
    evse_id: int | None = None


class TriggerIn(BaseModel):
    requested_message: str
    evse_id: int | None = None
    connector_id: int | None = None


class AvailabilityIn(BaseModel):
    operative: bool = Field(description="true: Operative, false: Inoperative")
    evse_id: int | None = Field(None, ge=0, description="none or 0: the whole station")
    connector_id: int | None = Field(None, ge=1)


class UnlockIn(BaseModel):
    evse_id: int
    connector_id: int = 1


async def station_call(awaitable: Awaitable[T]) -> T:
    """Await a station command, turning its failures into HTTP errors."""
    try:
        return await awaitable
    except StationGone as exc:
        raise HTTPException(409, str(exc)) from exc
    except TimeoutError as exc:
        raise HTTPException(504, "the station did not answer in time") from exc
    except StationCallError as exc:
        raise HTTPException(502, {"station_error": exc.code, "description": exc.description,
                                  "details": exc.details}) from exc
    except OCPPError as exc:  # our request failed schema validation: nothing was sent
        raise HTTPException(422, f"{exc.code}: {exc.description} {exc.details}") from exc
    except InvalidInput as exc:  # a value no station may get (limits.py): nothing was sent
        raise HTTPException(422, str(exc)) from exc
    except commands.NotApplicable as exc:  # not expressible in the station's version
        raise HTTPException(422, str(exc)) from exc


def command_router(server: CsmsServer) -> APIRouter:
    r = APIRouter(prefix="/stations/{station_id}", tags=["commands"])

    def online(station_id: str) -> Session:
        session = server.session(station_id)
        if session is None:
            raise HTTPException(409, f"station {station_id!r} is not connected")
        return session

    @r.post("/remote-start")
    async def remote_start(station_id: str, body: RemoteStartIn,
                           timeout: Timeout = None) -> dict[str, Any]:
        s = online(station_id)
        return await station_call(commands.remote_start(
            s, body.id_token, body.evse_id, body.charging_profile, timeout))

    @r.post("/remote-stop")
    async def remote_stop(station_id: str, body: RemoteStopIn,
                          timeout: Timeout = None) -> dict[str, Any]:
        s = online(station_id)
        return await station_call(commands.remote_stop(s, body.transaction_id, timeout))

    @r.post("/charging-profile")
    async def set_profile(station_id: str, body: ChargingProfileIn,
                          timeout: Timeout = None) -> dict[str, Any]:
        s = online(station_id)
        return await station_call(commands.set_charging_profile(
            s, body.evse_id, body.charging_profile, timeout))

    @r.post("/charging-profile/clear")
    async def clear_profile(station_id: str, body: ClearProfileIn,
                            timeout: Timeout = None) -> dict[str, Any]:
        s = online(station_id)
        return await station_call(commands.clear_charging_profile(
            s, body.profile_id, body.evse_id, body.purpose, body.stack_level, timeout))

    @r.post("/composite-schedule")
    async def composite(station_id: str, body: CompositeIn,
                        timeout: Timeout = None) -> dict[str, Any]:
        s = online(station_id)
        return await station_call(commands.get_composite_schedule(
            s, body.evse_id, body.duration, body.charging_rate_unit, timeout))

    @r.post("/variables/get")
    async def get_variables(station_id: str, body: list[VariableIn],
                            timeout: Timeout = None) -> dict[str, Any]:
        s = online(station_id)
        items = [v.model_dump(exclude_none=True) for v in body]
        return await station_call(commands.get_variables(s, items, timeout))

    @r.post("/variables/set")
    async def set_variables(station_id: str, body: list[VariableIn],
                            timeout: Timeout = None) -> dict[str, Any]:
        s = online(station_id)
        if any(v.value is None for v in body):
            raise HTTPException(422, "every variable to set needs a value")
        items = [v.model_dump(exclude_none=True) for v in body]
        return await station_call(commands.set_variables(s, items, timeout))

    @r.post("/configuration/get")
    async def get_configuration(station_id: str, body: ConfigGetIn,
                                timeout: Timeout = None) -> dict[str, Any]:
        s = online(station_id)
        return await station_call(commands.get_configuration(s, body.keys, timeout))

    @r.post("/configuration/set")
    async def change_configuration(station_id: str, body: ConfigSetIn,
                                   timeout: Timeout = None) -> dict[str, Any]:
        s = online(station_id)
        return await station_call(commands.change_configuration(s, body.key, body.value,
                                                                timeout))

    @r.post("/reset")
    async def reset(station_id: str, body: ResetIn, timeout: Timeout = None) -> dict[str, Any]:
        s = online(station_id)
        return await station_call(commands.reset(s, body.type, body.evse_id, timeout))

    @r.post("/trigger-message")
    async def trigger(station_id: str, body: TriggerIn,
                      timeout: Timeout = None) -> dict[str, Any]:
        s = online(station_id)
        return await station_call(commands.trigger_message(
            s, body.requested_message, body.evse_id, body.connector_id, timeout))

    @r.post("/availability")
    async def change_availability(station_id: str, body: AvailabilityIn,
                                  timeout: Timeout = None) -> dict[str, Any]:
        """ChangeAvailability (2.0.1 G03/G04, 1.6 Core) for the station, an EVSE or a connector."""
        s = online(station_id)
        return await station_call(commands.change_availability(
            s, body.operative, body.evse_id, body.connector_id, timeout))

    @r.post("/unlock")
    async def unlock(station_id: str, body: UnlockIn, timeout: Timeout = None) -> dict[str, Any]:
        s = online(station_id)
        return await station_call(commands.unlock(s, body.evse_id, body.connector_id, timeout))

    @r.post("/call/{action}")
    async def raw_call(station_id: str, action: str,
                       payload: Annotated[dict[str, Any], Body()],
                       timeout: Timeout = None) -> dict[str, Any]:
        """Any OCPP action with a camelCase payload, as the station's version defines it."""
        s = online(station_id)
        return await station_call(s.call_raw(action, payload, timeout))

    return r
