"""UTC timestamps in one text form, so SQLite can compare and sort them as strings."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_last: tuple[int, str] = (0, "")


def now_iso() -> str:
    """Now, as ``2026-01-31T12:00:00.000Z`` (the form OCPP stations expect).

    Hot path (several calls per message): the formatted seconds are cached.
    """
    global _last
    t = time.time()
    sec = int(t)
    if _last[0] != sec:
        _last = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{_last[1]}.{int((t - sec) * 1000):03d}Z"


def norm_ts(value: str | None) -> str | None:
    """Any ISO 8601 timestamp as UTC ``...T..:..:..sssZ``; unparseable text is kept as is."""
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return value
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        utc = dt.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00: before year 1 in UTC
        return value
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
