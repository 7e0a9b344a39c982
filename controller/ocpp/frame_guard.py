"""The guard in front of a version's ChargePoint: a CallError for every frame the ``ocpp``
library would drop or mishandle, never a dead receive loop.

A version's ChargePoint holds one :class:`FrameGuard` (built with its logger, its send and
its spelling of the format error: 2.0.1 ``FormatViolation``, 1.6 ``FormationViolation``)
and routes every frame through :meth:`FrameGuard.route` and every CALL through
:meth:`FrameGuard.handle_call`. Nothing is rewritten after it was serialised: the guard
builds the version's error in the first place.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from ocpp.exceptions import FormationViolationError, FormatViolationError, OCPPError

from controller.ocpp.frame_check import check_frame
from controller.ocpp.ports import Log

#: The format error of each spelling, as the library's exception (its ``code``).
_FORMAT_ERRORS: dict[str, type[OCPPError]] = {
    "FormatViolation": FormatViolationError, "FormationViolation": FormationViolationError}


class FrameGuard:
    """CallErrors for frames the library would drop or mishandle
    (:func:`~controller.ocpp.frame_check.check_frame`: bad JSON, NaN, deep nesting, numbers
    out of range, naming the field), and an InternalError instead of a dead receive loop
    when a handler fails. A bad response (type 3/4) is dropped and logged: the CALL it
    answers times out and is retried like any unanswered one."""

    def __init__(self, log: Log, send: Callable[[str], Awaitable[None]],
                 format_violation: str = "FormatViolation") -> None:
        if format_violation not in _FORMAT_ERRORS:
            raise ValueError(f"unknown format error code {format_violation!r} "
                             f"(known: {', '.join(_FORMAT_ERRORS)})")
        self.log, self.send, self.format_violation = log, send, format_violation

    def code(self, code: str) -> str:
        """``code`` in this version's spelling."""
        return self.format_violation if code in _FORMAT_ERRORS else code

    async def route(self, raw_msg: str, inner: Callable[[str], Awaitable[None]]) -> None:
        """Check ``raw_msg``; pass a sound frame to ``inner`` (the library's router)."""
        msg, bad = check_frame(raw_msg)
        if bad is not None:
            if bad.msg_type in (3, 4):
                self.log.warning("bad response from backend dropped", code=bad.code,
                                 detail=bad.text[:255])
                return
            await self.error(bad.uid, bad.code, bad.text)
            return
        assert msg is not None
        uid = str(msg[1])
        try:
            await inner(raw_msg)
        except Exception as exc:  # never let the receive loop die on input
            self.log.exception("handling a backend message failed", error=repr(exc)[:300])
            if msg[0] == 2:
                await self.error(uid, "InternalError", f"{type(exc).__name__}: {exc}")

    async def handle_call(self, msg: Any, inner: Callable[[Any], Awaitable[None]]) -> None:
        """Run the library's CALL handling; its schema's format error is raised in this
        version's spelling (the library answers it)."""
        try:
            await inner(msg)
        except FormatViolationError as exc:
            cls = _FORMAT_ERRORS[self.format_violation]
            if cls is FormatViolationError:
                raise
            raise cls(description=exc.description, details=exc.details) from exc

    async def error(self, uid: str, code: str, text: str) -> None:
        """Answer the CALL ``uid`` with a CallError (``code`` in this version's spelling)."""
        self.log.warning("bad frame from backend", code=self.code(code), detail=text[:255])
        await self.send(json.dumps([4, uid, self.code(code), text[:255], {}]))
