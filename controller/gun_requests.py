"""What the outside has asked of each gun, kept between cycles and handed to ``decide``.

The station's per-gun latches: the authorization answer for a waiting session, a requested
stop, a fault to acknowledge, a latched gun fault, OCPP availability. ``decide`` reads them
as one snapshot per cycle (:meth:`GunRequests.snapshot`); the rules for how they change live
here, in one place:

- a gun entering Preparing forgets the last answer and asks the authorizer (unless charging
  is free or there is none); an inoperative gun is refused without asking, even with free
  charging, and asked again when it becomes available while its session still waits;
- a requested stop is forgotten once the session reaches Available, Finishing or Faulted;
- a fault acknowledgement (``clear``) lasts one cycle;
- latched faults and availability survive a controller restart (:meth:`fresh` keeps them);
  only their explicit clear lifts a fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from controller.session import GunSession, GunState, SessionEvent

Authorizer = Callable[[int, str | None], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class RequestSnapshot:
    """The latches as one cycle's ``decide`` sees them."""

    auth: tuple[bool | None, ...]
    stops: tuple[str | None, ...]
    faults: tuple[str | None, ...]
    clear_faults: tuple[bool, ...]


class GunRequests:
    """The per-gun latches of one station (see the module docstring for their rules)."""

    def __init__(self, guns: int, authorizer: Authorizer | None, free_charging: bool,
                 tasks: set[asyncio.Task[Any]], log: Any) -> None:
        self.guns = guns
        self.authorizer = authorizer
        self.free_charging = free_charging
        #: background authorizer calls, cancelled by the station's stop sequence
        self.tasks = tasks
        self.log = log
        self.faults: list[str | None] = [None] * guns  # latched gun faults (kept on restart)
        self.unavailable: list[bool] = [False] * guns  # OCPP Inoperative (kept on restart)
        self.fresh()

    def fresh(self) -> None:
        """A controller start: no answers, stops or acknowledgements pending."""
        self.auth: list[bool | None] = [None] * self.guns
        self.stops: list[str | None] = [None] * self.guns
        self.clear: list[bool] = [False] * self.guns

    def snapshot(self) -> RequestSnapshot:
        return RequestSnapshot(tuple(self.auth), tuple(self.stops), tuple(self.faults),
                               tuple(self.clear))

    def decided(self) -> None:
        """After ``decide``: acknowledgements were used."""
        self.clear = [False] * self.guns

    def clear_all(self) -> None:
        """Acknowledge every gun's fault (the emergency stop was lifted)."""
        self.clear = [True] * self.guns

    def clear_fault(self, gun: int) -> None:
        """The operator's acknowledgement: the latch is lifted and the gun leaves Faulted."""
        self.faults[gun] = None
        self.acknowledge(gun)

    def acknowledge(self, gun: int) -> None:
        """Faulted → Available at the next cycle (when its cause is gone); a latched fault
        stays latched."""
        self.clear[gun] = True

    def stop(self, gun: int, reason: str) -> None:
        self.stops[gun] = reason

    def set_authorization(self, gun: int, accepted: bool) -> None:
        self.auth[gun] = accepted

    def set_available(self, gun: int, available: bool, session: GunSession) -> None:
        self.unavailable[gun] = not available
        waiting = session.state is GunState.PREPARING
        if not available and waiting:
            self.auth[gun] = False
        elif available and waiting and self.auth[gun] is False:
            self.auth[gun] = None
            self.request_auth(gun, session.id_token)

    def fault(self, gun: int, reason: str) -> bool:
        """Latch a fault on ``gun`` unless one is latched already; True when latched now."""
        if self.faults[gun] is not None:
            return False
        self.faults[gun] = reason
        return True

    def on_events(self, events: Sequence[SessionEvent]) -> None:
        """The latches' share of a cycle's session events."""
        for ev in events:
            if ev.kind != "state_changed":
                continue
            if ev.state is GunState.PREPARING:
                self.auth[ev.gun] = None
                self.request_auth(ev.gun, ev.id_token)
            if ev.state in (GunState.AVAILABLE, GunState.FINISHING, GunState.FAULTED):
                self.stops[ev.gun] = None

    def request_auth(self, g: int, token: str | None) -> None:
        """Ask the authorizer in the background; a failing authorizer refuses (logged)."""
        if self.unavailable[g]:
            self.auth[g] = False
            return
        if self.free_charging or self.authorizer is None:
            return
        authorizer = self.authorizer

        async def ask() -> None:
            try:
                ok = await authorizer(g, token)
            except Exception as exc:
                self.log.error("authorizer failed", gun=g, error=repr(exc))
                ok = False
            self.auth[g] = bool(ok)

        task = asyncio.ensure_future(ask())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
