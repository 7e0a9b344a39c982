"""The per-gun latches the station hands to ``decide`` (controller/gun_requests.py)."""

from __future__ import annotations

import logging
from typing import Any

from helpers import eventually

from controller import logs
from controller.gun_requests import GunRequests
from controller.session import GunSession, GunState, SessionEvent


class Asked:
    """An authorizer that records who asked and answers what it is told."""

    def __init__(self, answer: bool | Exception = True) -> None:
        self.answer = answer
        self.calls: list[tuple[int, str | None]] = []

    async def __call__(self, gun: int, token: str | None) -> bool:
        self.calls.append((gun, token))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _requests(authorizer: Any = None, free: bool = False) -> GunRequests:
    return GunRequests(2, authorizer, free, set(), logs.get_logger("test.gun_requests"))


def _entered(state: GunState, gun: int = 0, token: str | None = "TOK") -> SessionEvent:
    return SessionEvent("state_changed", gun, 1.0, state, GunState.AVAILABLE, None, token)


async def test_preparing_forgets_the_last_answer_and_asks_the_authorizer() -> None:
    asked = Asked(True)
    req = _requests(asked)
    req.set_authorization(0, False)
    req.on_events([_entered(GunState.PREPARING)])
    assert req.snapshot().auth == (None, None)  # forgotten at once, the answer is pending
    await eventually(lambda: req.auth[0] is True, what="the authorizer's answer")
    assert asked.calls == [(0, "TOK")] and not req.tasks


async def test_a_failing_authorizer_refuses_and_is_logged(caplog: Any) -> None:
    req = _requests(Asked(RuntimeError("backend gone")))
    with caplog.at_level(logging.ERROR):
        req.request_auth(1, None)
        await eventually(lambda: req.auth[1] is False, what="the refusal")
    assert "authorizer failed" in caplog.text and "backend gone" in caplog.text


async def test_free_charging_or_no_authorizer_asks_nobody() -> None:
    asked = Asked(True)
    for req in (_requests(asked, free=True), _requests(None)):
        req.on_events([_entered(GunState.PREPARING)])
        assert req.auth == [None, None] and not req.tasks  # no authorizer call started
    assert asked.calls == []


async def test_an_inoperative_gun_is_refused_without_asking_and_asked_when_back() -> None:
    asked = Asked(True)
    req = _requests(asked, free=True)  # refused even with free charging
    waiting = GunSession(0, GunState.PREPARING, id_token="TOK")
    req.set_available(0, False, waiting)
    assert req.auth[0] is False and req.unavailable == [True, False]
    req.on_events([_entered(GunState.PREPARING)])
    assert req.auth[0] is False and asked.calls == []
    req.free_charging = False
    req.set_available(0, True, waiting)  # the waiting session is asked again
    await eventually(lambda: req.auth[0] is True, what="the new answer")
    assert asked.calls == [(0, "TOK")]
    req.set_available(1, False, GunSession(1, GunState.CHARGING))  # a running one goes on
    assert req.auth[1] is None


def test_a_stop_lasts_until_the_session_ends() -> None:
    req = _requests()
    req.stop(1, "Remote")
    req.on_events([_entered(GunState.CHARGING, gun=1)])
    assert req.snapshot().stops == (None, "Remote")
    req.on_events([_entered(GunState.FINISHING, gun=1)])
    assert req.snapshot().stops == (None, None)


def test_faults_latch_once_clears_last_one_cycle_and_a_restart_keeps_faults() -> None:
    req = _requests()
    assert req.fault(0, "safety: a") and not req.fault(0, "safety: b")
    req.set_available(1, False, GunSession(1))
    req.fresh()  # a controller restart
    assert req.snapshot().faults == ("safety: a", None) and req.unavailable == [False, True]
    req.clear_fault(0)
    snap = req.snapshot()
    assert snap.faults == (None, None) and snap.clear_faults == (True, False)
    req.decided()
    assert req.snapshot().clear_faults == (False, False)
    req.clear_all()
    assert req.snapshot().clear_faults == (True, True)
