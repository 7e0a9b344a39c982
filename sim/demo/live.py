"""The live view: one line per gun and the station line, in place on a terminal.

On a terminal the block is redrawn in place (ANSI cursor-up) at most ``refresh_s`` of wall
time apart; scenario events are printed above it as they happen. When stdout is not a
terminal, plain lines: the events, and the block every ``plain_every_s`` simulated seconds.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Live:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None,
                 refresh_s: float = 0.2, plain_every_s: float = 60.0) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.refresh_s = refresh_s
        self.plain_every_s = plain_every_s
        self._drawn = 0
        self._last_wall = 0.0
        self._last_plain = -float("inf")
        self._lines: list[str] = []

    def _write(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text)
            self.stream.flush()

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self._write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def note(self, text: str) -> None:
        self._clear()
        self._write(f"  {text}\n")
        self._redraw()

    def event(self, t: float, text: str) -> None:
        self._clear()
        self._write(f"[{_clock(t)}] {text}\n")
        self._redraw()

    def observe(self, ev: Any) -> None:
        """Station observer: session starts and stops as events."""
        kind = getattr(ev, "kind", "")
        if kind in ("charging_started", "charging_stopped"):
            extra = f" ({ev.reason})" if kind == "charging_stopped" and ev.reason else ""
            self._clear()
            self._write(f"          gun {ev.gun + 1}: {kind.replace('_', ' ')}{extra}\n")
            self._redraw()

    def update(self, rec: Any, elapsed: float, feed: Any) -> None:
        self._lines = lines(rec, elapsed, feed)
        if self.tty:
            now = time.monotonic()
            if now - self._last_wall >= self.refresh_s:
                self._last_wall = now
                self._clear()
                self._redraw()
        elif elapsed - self._last_plain >= self.plain_every_s:
            self._last_plain = elapsed
            self._write("".join(f"{ln}\n" for ln in self._lines))

    def _redraw(self) -> None:
        if self.tty and self._lines:
            self._write("".join(f"{ln}\n" for ln in self._lines))
            self._drawn = len(self._lines)

    def close(self) -> None:
        if self.tty and self._lines:
            self._clear()
            self._write("".join(f"{ln}\n" for ln in self._lines))


def _clock(t: float) -> str:
    return f"t+{int(t) // 60:02d}:{t % 60:04.1f}"


def lines(rec: Any, elapsed: float, feed: Any) -> list[str]:
    out = []
    for g in rec.guns:
        soc = f"{g.soc_pct:5.1f} %" if g.soc_pct is not None else "    - "
        out.append(f"  gun {g.gun + 1}  {g.state:<13} {g.current_a:7.0f} A {g.power_w / 1e3:7.1f}"
                   f" kW  SoC {soc}  {len(g.modules):2d} mod  bound by {g.binding} "
                   f"({g.binding_source})")
    grid = "LOST" if feed.lost else f"{feed.limit_kw:g} kW + storage {feed.storage_kw:g} kW"
    out.append(f"  station [{_clock(elapsed)}] {rec.station_power_w / 1e3:7.1f} kW of cap "
               f"{rec.station_cap_w / 1e3:7.1f} kW from {rec.cap_source}; grid signal {grid}")
    return out
