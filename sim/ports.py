"""Blocks of loopback ports for processes that cannot bind port 0 and report it.

A server that takes port 0 and reports where it landed never races anyone; use that where
the code path allows. Some cannot: a simulator restarted on the ports the controller already
knows, configuration files written before the processes start (the README lab steps). They
get a block picked here: below the kernel's ephemeral range, because a loaded machine's
outgoing connections (a load test's tens of thousands) leave no free block inside it, and
checked by binding each port. The block is only known free when picked: callers move to a
new block when their server cannot bind.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Never pick below this when the ephemeral range leaves room (well-known and registered
#: services cluster below it).
LOWEST = 10_000


def ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux; else 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(count: int = 1, tries: int = 200) -> int:
    """The first of ``count`` consecutive loopback ports that are free now, below the
    ephemeral range. Raises RuntimeError naming ``count`` when ``tries`` random blocks all
    had a port in use."""
    if count < 1:
        raise ValueError(f"free_port_block: count must be at least 1, not {count}")
    high = ephemeral_low() - count
    low = LOWEST if high > LOWEST + count else 1024
    for _ in range(tries):
        base = random.randrange(low, max(low + 1, high))
        if all(_bindable(p) for p in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free loopback ports found in {tries} tries")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
