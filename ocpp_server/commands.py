"""Operator commands, one function per intent, mapped onto the station's protocol version.

The REST API and the CLI speak intents ("remote start on EVSE 1 for token X"); this module
turns them into OCPP 2.0.1 or 1.6 CALLs. Charging profiles are passed through in the OCPP
JSON form of the station's version (camelCase), because their shape differs between versions.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable
from typing import Any

from ocpp_server.limits import InvalidInput
from ocpp_server.session import Session, StationCallError, StationGone

V16 = "ocpp1.6"
_RESET_V16 = {"Immediate": "Hard", "OnIdle": "Soft", "Hard": "Hard", "Soft": "Soft"}
_RESET_V201 = {"Hard": "Immediate", "Soft": "OnIdle", "Immediate": "Immediate",
               "OnIdle": "OnIdle"}


def _v16(session: Session) -> bool:
    return session.subprotocol == V16


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


async def _start(session: Session, evse_id: int | None, profile: dict[str, Any] | None,
                 call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    if profile is None:
        return await call
    return await _recorded(session, evse_id or 0, profile, call)  # a TxProfile travels along


async def remote_start(session: Session, id_token: str, evse_id: int | None = None,
                       charging_profile: dict[str, Any] | None = None,
                       timeout: float | None = None) -> dict[str, Any]:
    if _v16(session):
        payload = _clean({"idTag": id_token, "connectorId": evse_id,
                          "chargingProfile": charging_profile})
        response = await _start(session, evse_id, charging_profile,
                                session.call_raw("RemoteStartTransaction", payload, timeout))
    else:
        payload = _clean({"idToken": {"idToken": id_token, "type": "Central"},
                          "remoteStartId": secrets.randbelow(2**31 - 1) + 1, "evseId": evse_id,
                          "chargingProfile": charging_profile})
        # Kept before sending (once it has passed the checks that would refuse it): a
        # Started event without idToken is matched to it by remoteStartId
        # (repository.adopt_remote_start_token), even across a restart.
        await session.vet_call("RequestStartTransaction", payload)
        await session.repo.record_message(session.id, "RequestStartTransaction", payload)
        response = await _start(session, evse_id, charging_profile,
                                session.call_raw("RequestStartTransaction", payload, timeout))
        response = {**response, "remoteStartId": payload["remoteStartId"]}
    return response


async def remote_stop(session: Session, transaction_id: str,
                      timeout: float | None = None) -> dict[str, Any]:
    if _v16(session):
        if not transaction_id.isascii() or not transaction_id.lstrip("-").isdigit():
            raise InvalidInput("transaction_id", "type", "OCPP 1.6 transaction ids are integers")
        return await session.call_raw("RemoteStopTransaction",
                                      {"transactionId": int(transaction_id)}, timeout)
    return await session.call_raw("RequestStopTransaction", {"transactionId": transaction_id},
                                  timeout)


async def _recorded(session: Session, evse_id: int, profile: dict[str, Any],
                    call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Await a call carrying a charging profile; record the profile with its outcome.

    The outcome is the station's status, or ``CallError <code>`` / ``NoAnswer`` /
    ``Disconnected`` when it gave none, so /charging-profiles shows every attempt.
    """
    outcome: str | None = None  # stays None when the request never left (schema violation)
    try:
        response = await call
        outcome = str(response.get("status"))
        return response
    except StationCallError as exc:
        outcome = f"CallError {exc.code}"
        raise
    except TimeoutError:
        outcome = "NoAnswer"
        raise
    except StationGone:
        outcome = "Disconnected"
        raise
    finally:
        if outcome is not None:
            await session.repo.record_charging_profile(session.id, evse_id, profile, outcome)


async def set_charging_profile(session: Session, evse_id: int, profile: dict[str, Any],
                               timeout: float | None = None) -> dict[str, Any]:
    if _v16(session):
        payload = {"connectorId": evse_id, "csChargingProfiles": profile}
    else:
        payload = {"evseId": evse_id, "chargingProfile": profile}
    return await _recorded(session, evse_id, profile,
                           session.call_raw("SetChargingProfile", payload, timeout))


async def change_availability(session: Session, operative: bool, evse_id: int | None = None,
                              connector_id: int | None = None,
                              timeout: float | None = None) -> dict[str, Any]:
    """Make the station (evse_id None or 0), an EVSE or a connector (In)operative (G03/G04)."""
    status = "Operative" if operative else "Inoperative"
    if _v16(session):
        target = connector_id if connector_id is not None else evse_id
        return await session.call_raw("ChangeAvailability",
                                      {"connectorId": target or 0, "type": status}, timeout)
    evse = None if not evse_id else _clean({"id": evse_id, "connectorId": connector_id})
    return await session.call_raw("ChangeAvailability",
                                  _clean({"operationalStatus": status, "evse": evse}), timeout)


async def clear_charging_profile(session: Session, profile_id: int | None = None,
                                 evse_id: int | None = None, purpose: str | None = None,
                                 stack_level: int | None = None,
                                 timeout: float | None = None) -> dict[str, Any]:
    if _v16(session):
        payload = _clean({"id": profile_id, "connectorId": evse_id,
                          "chargingProfilePurpose": purpose, "stackLevel": stack_level})
    else:
        criteria = _clean({"evseId": evse_id, "chargingProfilePurpose": purpose,
                           "stackLevel": stack_level})
        payload = _clean({"chargingProfileId": profile_id,
                          "chargingProfileCriteria": criteria or None})
    return await session.call_raw("ClearChargingProfile", payload, timeout)


async def get_composite_schedule(session: Session, evse_id: int, duration: int,
                                 charging_rate_unit: str | None = None,
                                 timeout: float | None = None) -> dict[str, Any]:
    key = "connectorId" if _v16(session) else "evseId"
    payload = _clean({key: evse_id, "duration": duration,
                      "chargingRateUnit": charging_rate_unit})
    return await session.call_raw("GetCompositeSchedule", payload, timeout)


async def get_variables(session: Session, items: list[dict[str, Any]],
                        timeout: float | None = None) -> dict[str, Any]:
    """2.0.1: items are ``{"component": .., "variable": .., "evse"?: .., "attributeType"?: ..}``;
    1.6: the variable names are read as configuration keys."""
    if _v16(session):
        return await get_configuration(session, [i["variable"] for i in items], timeout)
    data = [_clean({"component": _named(i["component"], i.get("evse")),
                    "variable": _named(i["variable"]), "attributeType": i.get("attributeType")})
            for i in items]
    return await session.call_raw("GetVariables", {"getVariableData": data}, timeout)


async def set_variables(session: Session, items: list[dict[str, Any]],
                        timeout: float | None = None) -> dict[str, Any]:
    """2.0.1: items carry ``value``; 1.6: each becomes a ChangeConfiguration of the variable."""
    if _v16(session):
        results = [await change_configuration(session, i["variable"], str(i["value"]), timeout)
                   for i in items]
        return {"results": results}
    data = [_clean({"component": _named(i["component"], i.get("evse")),
                    "variable": _named(i["variable"]), "attributeValue": str(i["value"]),
                    "attributeType": i.get("attributeType")}) for i in items]
    return await session.call_raw("SetVariables", {"setVariableData": data}, timeout)


def _named(name: str | dict[str, Any], evse: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = dict(name) if isinstance(name, dict) else {"name": name}
    if evse is not None:
        out["evse"] = {"id": evse}
    return out


class NotApplicable(ValueError):
    """The command cannot be expressed in the station's OCPP version; nothing was sent."""


def _component_variable(key: str) -> dict[str, Any]:
    component, dot, variable = key.partition(".")
    if not (dot and component and variable):
        raise NotApplicable(
            f"key {key!r}: a 2.0.1 station has no configuration keys; name a variable as"
            " Component.Variable (e.g. OCPPCommCtrlr.HeartbeatInterval) or use variables/get")
    return {"component": component, "variable": variable}


async def get_configuration(session: Session, keys: list[str] | None = None,
                            timeout: float | None = None) -> dict[str, Any]:
    """1.6 GetConfiguration; 2.0.1: ``Component.Variable`` keys become GetVariables."""
    if not _v16(session):
        if not keys:
            raise NotApplicable(
                "a 2.0.1 station has no GetConfiguration: name the variables as"
                " Component.Variable, or ask for a full report with call GetBaseReport")
        return await get_variables(session, [_component_variable(k) for k in keys], timeout)
    return await session.call_raw("GetConfiguration", _clean({"key": keys or None}), timeout)


async def change_configuration(session: Session, key: str, value: str,
                               timeout: float | None = None) -> dict[str, Any]:
    """1.6 ChangeConfiguration; 2.0.1: a ``Component.Variable`` key becomes SetVariables."""
    if not _v16(session):
        item = {**_component_variable(key), "value": value}
        return await set_variables(session, [item], timeout)
    response = await session.call_raw("ChangeConfiguration", {"key": key, "value": value},
                                      timeout)
    return {"key": key, **response}


async def reset(session: Session, type_: str = "OnIdle", evse_id: int | None = None,
                timeout: float | None = None) -> dict[str, Any]:
    if _v16(session):
        return await session.call_raw("Reset", {"type": _RESET_V16.get(type_, type_)}, timeout)
    return await session.call_raw("Reset", _clean({"type": _RESET_V201.get(type_, type_),
                                                   "evseId": evse_id}), timeout)


async def trigger_message(session: Session, requested_message: str,
                          evse_id: int | None = None, connector_id: int | None = None,
                          timeout: float | None = None) -> dict[str, Any]:
    payload: dict[str, Any]
    if _v16(session):
        payload = _clean({"requestedMessage": requested_message,
                          "connectorId": connector_id if connector_id is not None else evse_id})
    else:
        evse = None if evse_id is None else _clean({"id": evse_id, "connectorId": connector_id})
        payload = _clean({"requestedMessage": requested_message, "evse": evse})
    return await session.call_raw("TriggerMessage", payload, timeout)


async def unlock(session: Session, evse_id: int, connector_id: int = 1,
                 timeout: float | None = None) -> dict[str, Any]:
    if _v16(session):
        return await session.call_raw("UnlockConnector", {"connectorId": evse_id}, timeout)
    return await session.call_raw("UnlockConnector",
                                  {"evseId": evse_id, "connectorId": connector_id}, timeout)


async def push_password(session: Session, password: str,
                        timeout: float | None = None) -> bool:
    """Send a new Basic-auth password to the station (A09); True when it accepted it."""
    if _v16(session):
        hex_key = password.encode().hex()
        response = await change_configuration(session, "AuthorizationKey", hex_key, timeout)
        return response.get("status") == "Accepted"
    response = await set_variables(session, [{"component": "SecurityCtrlr",
                                              "variable": "BasicAuthPassword",
                                              "value": password}], timeout)
    results = response.get("setVariableResult", [])
    return bool(results) and results[0].get("attributeStatus") == "Accepted"
