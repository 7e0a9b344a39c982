"""systemd's notify protocol (sd_notify), without libsystemd: READY, WATCHDOG, STOPPING.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract
socket) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). The controller
says READY=1 only when it can control the hardware: the allocator compiled (or loaded from the
numba cache), the configuration valid and the first control cycle done. WATCHDOG=1 is sent
from the control cycle itself (an observer of its CycleEvent), so a stuck cycle stops the pings
and systemd restarts the service; by then the power modules' own Modbus watchdogs
(``station.watchdog_ms``) have switched their outputs off.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op. Sending never blocks and never
raises: a lost datagram must not stop the cycle (the failure is logged once).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from controller import logs


class Notifier:
    """Sends sd_notify datagrams; ``watchdog()`` is rate-limited to a quarter of the
    watchdog interval (systemd recommends pinging at half of it at the latest)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.watchdog_s = watchdog_usec / 1e6 if watchdog_usec else None
        self.clock = clock
        self.sent: list[str] = []  # the last messages, newest last (diagnostics, tests)
        self._last_ping = -float("inf")
        self._sock: socket.socket | None = None
        self._warned = False
        self.log = logs.get_logger("controller.sdnotify")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> Notifier:
        """The notifier systemd asked for; WATCHDOG_PID naming another process (a child
        that inherited the environment) disables the watchdog for this one."""
        e = os.environ if env is None else env
        address = e.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw = e.get("WATCHDOG_USEC", "")
        pid = e.get("WATCHDOG_PID", "")
        if raw.isdigit() and int(raw) > 0 and (not pid or pid == str(os.getpid())):
            usec = int(raw)
        return cls(address, usec, clock)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one datagram (``KEY=value`` lines); False when not sent."""
        if self.address is None:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), addr)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                self.log.warning("sd_notify failed", socket=self.address, error=repr(exc))
            return False
        self.sent = [*self.sent[-31:], message]
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        """Ping if a quarter of the watchdog interval has passed since the last ping."""
        if self.watchdog_s is None:
            return False
        now = self.clock()
        if now - self._last_ping < self.watchdog_s / 4 - 1e-3:  # 1 ms: float ticks
            return False
        self._last_ping = now
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), so start-up time includes the
    interpreter and imports; None where /proc is not available."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        start_ticks = int(fields[19])  # field 22 of stat; 20 after pid and comm are cut
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
