"""Limits with their source and expiry: the contract between everything that constrains
the station and the control cycle that obeys.

Every constraint (cable rating, EV maximum and request, an OCPP charging profile, the grid
signal from the energy manager, thermal derating, the station's own maximum) reaches the
control cycle as a :class:`Limit` that says *what* it allows, *who* said so and *until when*.
The cycle combines them with :class:`LimitBook`, so any allocation can be explained ("gun 2:
780 A, bound by ocpp:TxProfile#7 until 14:05:00") and no external limit outlives its validity:
when it expires, the configured fallback for that key applies instead, never "no limit".

Scopes: ``STATION`` limits are in watts (the station cap); ``gun(g)`` limits are in amperes.
Times are seconds on the controller's injected monotonic clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

STATION = "station"


class LimitKey(StrEnum):
    """Where limits of one kind come from; each (scope, key) holds at most one limit.

    A ``StrEnum``, so a key still equals its name as text (``LimitKey.GRID == "grid"``)
    and a string given to :class:`LimitBook` is checked against this list (an unknown key
    is a clear error, not a silent new kind).
    """

    STATION_MAX = "station_max"  # the configured station maximum (W)
    GRID = "grid"  # the energy manager's grid limit over MQTT (W)
    GRID_SITE = "grid_site"  # the site-wide limit topic, when configured (W)
    CABLE = "cable"  # the gun's cable rating (A)
    EV_MAX = "ev_max"  # the vehicle's maximum current (A)
    EV_REQUEST = "ev_request"  # the vehicle's current request (A); the cycle's target
    OCPP = "ocpp"  # composite OCPP charging profiles (W at the station, A per gun)

    @classmethod
    def of(cls, key: LimitKey | str) -> LimitKey:
        """``key`` as a LimitKey; a string that names none raises ``ValueError``."""
        if isinstance(key, LimitKey):
            return key
        try:
            return cls(key)
        except ValueError:
            known = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown limit key {key!r} (known: {known})") from None


#: Keys whose limits come from outside the cabinet; the cycle's own keys (set every cycle)
#: are the others. A lowered outside limit wakes the cycle at once.
EXTERNAL_KEYS = frozenset({LimitKey.GRID, LimitKey.GRID_SITE, LimitKey.OCPP})


def gun(index: int) -> str:
    """Scope name of gun ``index`` (0-based)."""
    return f"gun{index}"


@dataclass(frozen=True, slots=True)
class Limit:
    """One constraint: ``value`` (W for the station scope, A for a gun) from ``source``.

    ``expires_at`` is None for static limits (configuration, hardware ratings); every limit
    that comes from outside the cabinet (OCPP, grid, vehicle) has an expiry.
    """

    value: float
    source: str
    issued_at: float = 0.0
    expires_at: float | None = None
    detail: str = ""
    #: Set by :class:`LimitBook` when the limit is stored (None for a limit not in a book);
    #: tells the vehicle request apart from the other gun limits.
    key: LimitKey | None = None

    def __post_init__(self) -> None:
        if math.isnan(self.value) or self.value < 0:
            raise ValueError(f"limit from {self.source!r}: value must be >= 0, got {self.value}")
        if self.expires_at is not None and self.expires_at < self.issued_at:
            raise ValueError(f"limit from {self.source!r}: expires before it was issued")

    def active(self, now: float) -> bool:
        """True while the limit is valid (an expiry equal to ``now`` has passed)."""
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class Effective:
    """The binding limit of a scope right now, and every limit that was considered."""

    value: float
    binding: Limit
    considered: tuple[Limit, ...]


@dataclass
class LimitBook:
    """All limits of the station, by scope and key; each key holds at most one limit.

    A :class:`LimitKey` names where limits of one kind come from (strings naming a key are
    accepted and checked); every limit stored carries its key. A new limit under the same
    key replaces the old one. A key can have a fallback: while the key's limit is missing
    or expired, the fallback applies in its place. Keys without a fallback simply stop
    constraining when their limit expires, so external keys
    must be given one (``set_fallback``).
    """

    _limits: dict[tuple[str, LimitKey], Limit] = field(default_factory=dict)
    _fallbacks: dict[tuple[str, LimitKey], Limit] = field(default_factory=dict)
    #: Called as ``on_decrease(scope, key, limit)`` when ``set`` lowers the scope's
    #: effective value (at the limit's ``issued_at``): the station wakes its cycle at once
    #: instead of waiting for the period. Increases do not call it (they keep the period).
    on_decrease: Callable[[str, LimitKey, Limit], None] | None = None

    def set(self, scope: str, key: LimitKey | str, limit: Limit) -> None:
        k = LimitKey.of(key)
        limit = _keyed(limit, k, scope)
        if self.on_decrease is None:
            self._limits[(scope, k)] = limit
            return
        now = limit.issued_at
        before = self.effective(scope, now).value
        self._limits[(scope, k)] = limit
        if self.effective(scope, now).value < before:
            self.on_decrease(scope, k, limit)

    def clear(self, scope: str, key: LimitKey | str) -> None:
        self._limits.pop((scope, LimitKey.of(key)), None)

    def set_fallback(self, scope: str, key: LimitKey | str, limit: Limit) -> None:
        """What applies for ``key`` whenever its limit is absent or expired. The one
        place a key's fallback is set: a second call replaces the first."""
        k = LimitKey.of(key)
        if limit.expires_at is not None:
            raise ValueError(f"fallback for {scope}/{k} must not expire")
        self._fallbacks[(scope, k)] = _keyed(limit, k, scope)

    def clear_fallback(self, scope: str, key: LimitKey | str) -> None:
        """Remove ``key``'s fallback (e.g. an OCPP profile was cleared: nothing to fall to)."""
        self._fallbacks.pop((scope, LimitKey.of(key)), None)

    def get(self, scope: str, key: LimitKey | str) -> Limit | None:
        return self._limits.get((scope, LimitKey.of(key)))

    def fallback(self, scope: str, key: LimitKey | str) -> Limit | None:
        """The fallback set for ``key`` in ``scope`` (None when there is none)."""
        return self._fallbacks.get((scope, LimitKey.of(key)))

    def in_force(self, scope: str, now: float) -> list[Limit]:
        """The limits constraining ``scope`` now: active ones, fallbacks for expired keys."""
        keys = {k for (s, k) in self._limits if s == scope}
        keys |= {k for (s, k) in self._fallbacks if s == scope}
        out: list[Limit] = []
        for key in sorted(keys):
            lim = self._limits.get((scope, key))
            if lim is not None and lim.active(now):
                out.append(lim)
                continue
            fb = self._fallbacks.get((scope, key))
            if fb is not None:
                detail = "expired" if lim is not None else "none received"
                out.append(replace(fb, issued_at=now, detail=f"fallback for {key}: {detail}"))
        return out

    def effective(self, scope: str, now: float, default: float = math.inf) -> Effective:
        """The smallest limit in force for ``scope`` (``default`` when there is none)."""
        return combine(self.in_force(scope, now), default)

    def next_expiry(self, now: float) -> float | None:
        """The earliest future expiry of any limit (for scheduling and telemetry)."""
        times = [
            lim.expires_at
            for lim in self._limits.values()
            if lim.expires_at is not None and lim.expires_at > now
        ]
        return min(times, default=None)


def install_grid_fallback(book: LimitBook, fallback_w: float,
                          key: LimitKey = LimitKey.GRID) -> None:
    """The one place a grid key's fallback is written (``[station] fallback_grid_kw``):
    what applies while no valid grid limit is in force."""
    book.set_fallback(STATION, key, Limit(
        value=fallback_w, source=f"{key}:fallback",
        detail=f"no valid {key} limit: configured fallback {fallback_w / 1000:g} kW"))


def _keyed(limit: Limit, key: LimitKey, scope: str) -> Limit:
    """``limit`` carrying ``key``; a limit already keyed otherwise is a caller's mistake."""
    if limit.key is None:
        return replace(limit, key=key)
    if limit.key is not key:
        raise ValueError(f"limit from {limit.source!r} carries key {limit.key.value!r} "
                         f"but was stored under {scope}/{key.value}")
    return limit


def combine(limits: Iterable[Limit], default: float = math.inf) -> Effective:
    """The binding (smallest) of ``limits``; ties go to the first given."""
    considered = tuple(limits)
    if not considered:
        none = Limit(value=default if math.isfinite(default) else 0.0, source="none")
        return Effective(value=default, binding=none, considered=())
    binding = min(considered, key=lambda lim: lim.value)
    return Effective(value=binding.value, binding=binding, considered=considered)
