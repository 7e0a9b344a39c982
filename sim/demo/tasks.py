"""Joining the demo's background tasks after cancelling them.

A shutdown pass cancels its tasks and awaits them. Suppressing everything there would also
hide a task that had already died of its own error (the demo's report then silently lacks
what that task was measuring): only the cancellation is expected; any other exception is
logged, and the shutdown goes on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from controller import logs


async def join(task: asyncio.Future[Any], what: str, logger: str = "sim.demo") -> None:
    """Await ``task`` (cancelled by the caller, or finished): its CancelledError is dropped,
    any other exception it ended with is logged as ``demo task failed`` naming ``what``."""
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception as exc:
        logs.get_logger(logger).warning("demo task failed", task=what, error=repr(exc)[:200],
                                        exc_info=exc)
