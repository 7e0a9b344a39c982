"""OCPP 1.6 smart charging on the shared core (:class:`~controller.ocpp.smart_charging.Profiles`).

A 1.6 ``csChargingProfiles`` (one ``chargingSchedule``, ``ChargePointMaxProfile``, connector
ids, an integer ``transactionId``) is translated into the 2.0.1 shape that ``Profiles``
validates, stores, composes and writes into the LimitBook, so both protocol versions feed the
control cycle's limits the same way (source "OCPP").
"""

from __future__ import annotations

from typing import Any

from controller.ocpp.smart_charging import Profiles

PURPOSE_IN = {"ChargePointMaxProfile": "ChargingStationMaxProfile",
              "TxDefaultProfile": "TxDefaultProfile", "TxProfile": "TxProfile"}
MAX_INSTALLED = 20  # MaxChargingProfilesInstalled


def to_v201(p: dict[str, Any]) -> dict[str, Any]:
    """The 2.0.1 form (snake_case keys, as the ``ocpp`` package hands them to handlers)."""
    s = p["charging_schedule"]
    sched: dict[str, Any] = {
        "id": p["charging_profile_id"], "charging_rate_unit": s["charging_rate_unit"],
        "charging_schedule_period": [{"start_period": int(q["start_period"]),
                                      "limit": float(q["limit"])}  # the library gives Decimal
                                     for q in s["charging_schedule_period"]]}
    for k, conv in (("start_schedule", str), ("duration", int), ("min_charging_rate", float)):
        if s.get(k) is not None:
            sched[k] = conv(s[k])
    out: dict[str, Any] = {
        "id": p["charging_profile_id"], "stack_level": p["stack_level"],
        "charging_profile_purpose": PURPOSE_IN.get(p["charging_profile_purpose"],
                                                   p["charging_profile_purpose"]),
        "charging_profile_kind": p["charging_profile_kind"], "charging_schedule": [sched]}
    for k in ("recurrency_kind", "valid_from", "valid_to"):
        if p.get(k) is not None:
            out[k] = p[k]
    if p.get("transaction_id") is not None:
        out["transaction_id"] = str(p["transaction_id"])
    return out


def set_profile(profiles: Profiles, connector: int, p: dict[str, Any]) -> str | None:
    """Validate and install a 1.6 profile on ``connector``; the reason of a refusal."""
    if p.get("charging_profile_purpose") not in PURPOSE_IN:
        return f"unknown chargingProfilePurpose {p.get('charging_profile_purpose')!r}"
    if p["charging_profile_purpose"] == "ChargePointMaxProfile" and connector != 0:
        return "ChargePointMaxProfile only on connector 0"
    try:
        q = to_v201(p)
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        return f"malformed chargingProfile: {type(exc).__name__} {exc}"
    if q["id"] not in profiles.items and len(profiles.items) >= MAX_INSTALLED:
        return f"already {MAX_INSTALLED} profiles installed (MaxChargingProfilesInstalled)"
    why = profiles.validate(connector, q)
    if why is None:
        profiles.install(connector, q)
    return why


def clear_profiles(profiles: Profiles, pid: int | None, connector: int | None,
                   purpose: str | None, stack: int | None) -> int:
    """ClearChargingProfile: how many profiles went."""
    return profiles.clear(pid, connector, PURPOSE_IN.get(purpose, purpose) if purpose else None,
                          stack)


def composite16(profiles: Profiles, connector: int, start: Any, duration: int, unit: str,
                nameplate_w: float, local: tuple[Any, ...] = ()) -> dict[str, Any]:
    """The ``chargingSchedule`` of GetCompositeSchedule.conf: the profiles capped by the
    station's ``local`` limits (see ``StationEvents.local_limits``; the nameplate when
    nothing limits the connector)."""
    periods = profiles.composite(connector, start, duration, unit, local)
    if not periods:
        limit = profiles.to_unit(nameplate_w, "W", unit, connector)
        periods = [{"startPeriod": 0, "limit": round(limit, 1)}]
    return {"duration": duration, "chargingRateUnit": unit, "chargingSchedulePeriod": periods}
