"""What both OCPP versions write the same way on the wire: timestamps, and the typed
``on``/``after`` route decorators of the ``ocpp`` library (untyped there), so a version's
handlers import them from here and never from the other version's modules."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from ocpp import routing

F = TypeVar("F", bound=Callable[..., Any])


def iso(t: datetime) -> str:
    """An OCPP timestamp: ISO 8601 in UTC with milliseconds and a ``Z``."""
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> datetime:
    """The production wall clock: aware UTC."""
    return datetime.now(UTC)


def on(action: str) -> Callable[[F], F]:
    """The handler of the backend's CALL ``action`` (answers at once, never awaits a CALL)."""
    return cast(Callable[[F], F], routing.on(action))


def after(action: str) -> Callable[[F], F]:
    """The follow-up run after the answer to ``action`` was sent."""
    return cast(Callable[[F], F], routing.after(action))
