"""The remote-start bookkeeping both versions share (2.0.1 RequestStartTransaction F01/F02,
1.6 RemoteStartTransaction), per gun (0-based).

A remote start for a gun nobody has plugged into yet *waits* (until the version's
connection timeout) for the station's authorization request; one for a waiting gun, or a
waiting one taken up, is *accepted*: its token is the transaction's, whatever the truck's
own authorization answers later, until the transaction carries it. A TxProfile sent with it
is held until the transaction starts. ``T`` is the version's token: 2.0.1 (idToken,
remoteStartId), 1.6 the idTag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from controller.ocpp.ports import Log, StationPort
from controller.session import GunState

T = TypeVar("T")
Profile = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Waiting(Generic[T]):
    token: T
    until: float  # wall time, epoch seconds: the connection timeout
    profile: Profile | None


def candidates(station: StationPort, guns: int, chosen: int | None) -> list[int]:
    """The guns a remote start may take, in order: the one the backend ``chosen`` (0-based,
    not range-checked here), else every gun with a plugged-in truck first."""
    if chosen is not None:
        return [chosen]
    return sorted(range(guns), key=lambda g: station.sessions[g].state is not GunState.PREPARING)


class RemoteStarts(Generic[T]):
    """Waiting and accepted remote starts and their held profiles, by gun."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.waiting: dict[int, Waiting[T]] = {}
        self.accepted: dict[int, T] = {}
        self.profiles: dict[int, Profile] = {}

    def wait(self, g: int, token: T, until: float, profile: Profile | None) -> None:
        """Gun ``g`` is free: the remote start waits for a truck until ``until``."""
        self.waiting[g] = Waiting(token, until, profile)

    def take_waiting(self, g: int, now: float) -> Waiting[T] | None:
        """The remote start waiting for gun ``g`` (removed), None when there is none or it
        expired (logged)."""
        w = self.waiting.pop(g, None)
        if w is not None and now > w.until:
            self.log.info("remote start expired (connection timeout)", gun=g)
            return None
        return w

    def accept(self, g: int, token: T, profile: Profile | None) -> None:
        """Gun ``g`` starts for this remote start; ``profile`` is held for its transaction."""
        self.accepted[g] = token
        if profile is not None:
            self.profiles[g] = profile

    def won(self, g: int) -> bool:
        """A remote start was accepted for gun ``g`` and no transaction carries it yet."""
        return g in self.accepted

    def take_token(self, g: int) -> T | None:
        """The accepted remote start's token for the transaction of gun ``g`` (once)."""
        return self.accepted.pop(g, None)

    def take_profile(self, g: int) -> Profile | None:
        """The TxProfile held for gun ``g``'s transaction (once)."""
        return self.profiles.pop(g, None)

    def forget(self, g: int) -> None:
        """Gun ``g``'s session ended before a transaction took the remote start."""
        self.accepted.pop(g, None)
        self.profiles.pop(g, None)
