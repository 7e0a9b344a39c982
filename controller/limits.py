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

STATION = "station"


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

    A key (e.g. ``"grid"``, ``"ocpp"``, ``"cable"``) names where limits of one kind come
    from; a new limit under the same key replaces the old one. A key can have a fallback:
    while the key's limit is missing or expired, the fallback applies in its place. Keys
    without a fallback simply stop constraining when their limit expires, so external keys
    must be given one (``set_fallback``).
    """

    _limits: dict[tuple[str, str], Limit] = field(default_factory=dict)
    _fallbacks: dict[tuple[str, str], Limit] = field(default_factory=dict)
    #: Called as ``on_decrease(scope, key, limit)`` when ``set`` lowers the scope's
    #: effective value (at the limit's ``issued_at``): the station wakes its cycle at once
    #: instead of waiting for the period. Increases do not call it (they keep the period).
    on_decrease: Callable[[str, str, Limit], None] | None = None

    def set(self, scope: str, key: str, limit: Limit) -> None:
        if self.on_decrease is None:
            self._limits[(scope, key)] = limit
            return
        now = limit.issued_at
        before = self.effective(scope, now).value
        self._limits[(scope, key)] = limit
        if self.effective(scope, now).value < before:
            self.on_decrease(scope, key, limit)

    def clear(self, scope: str, key: str) -> None:
        self._limits.pop((scope, key), None)

    def set_fallback(self, scope: str, key: str, limit: Limit) -> None:
        """What applies for ``key`` whenever its limit is absent or expired."""
        if limit.expires_at is not None:
            raise ValueError(f"fallback for {scope}/{key} must not expire")
        self._fallbacks[(scope, key)] = limit

    def get(self, scope: str, key: str) -> Limit | None:
        return self._limits.get((scope, key))

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


def combine(limits: Iterable[Limit], default: float = math.inf) -> Effective:
    """The binding (smallest) of ``limits``; ties go to the first given."""
    considered = tuple(limits)
    if not considered:
        none = Limit(value=default if math.isfinite(default) else 0.0, source="none")
        return Effective(value=default, binding=none, considered=())
    binding = min(considered, key=lambda lim: lim.value)
    return Effective(value=binding.value, binding=binding, considered=considered)
