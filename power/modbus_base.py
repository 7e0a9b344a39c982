"""One Modbus TCP device's link: connection with backoff, timeouts, typed errors, health.

pymodbus serves one request at a time per connection and never retries a failed first
connect, so every device gets its own ``ModbusLink`` with its own client and its own
reconnect policy. A request either returns checked data or raises a ``HardwareError``
subclass that says what went wrong; it never hangs past ``timeout_s``.

``DeviceHealth`` turns request outcomes into the ``available`` / ``reason`` that the state
objects carry: ``max_missed`` consecutive missed polls (timeouts, connection failures) make a
device unavailable, a Modbus exception or an insane value does so at once, and the first sane
answer brings it back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

Clock = Callable[[], float]
_T = TypeVar("_T")

_log = structlog.get_logger("power.modbus")

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


# --------------------------------------------------------------------------- errors


class HardwareError(Exception):
    """Base of every error a hardware driver raises."""


class DeviceUnavailableError(HardwareError):
    """The device cannot be reached now (not connected, backing off, connection dropped)."""


class DeviceTimeoutError(DeviceUnavailableError):
    """The device did not answer within the timeout."""


class ModbusExceptionError(HardwareError):
    """The device answered with a Modbus exception response."""

    def __init__(self, what: str, code: int) -> None:
        self.code = code
        name = _EXCEPTION_NAMES.get(code, "unknown")
        super().__init__(f"{what}: Modbus exception {code} ({name})")


class BadReplyError(HardwareError):
    """The reply was malformed or its values are physically impossible."""


class InterlockRefusedError(ModbusExceptionError):
    """The contactor matrix refused to connect a module that is on another gun."""

    def __init__(self, module: int, gun: int, code: int) -> None:
        self.module = module
        self.gun = gun
        super().__init__(f"connect module {module} to gun {gun} refused by the interlock", code)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class DeviceEndpoint:
    """Where one device answers: host, TCP port and Modbus unit id.

    Both one port per device (unit 1 each) and one gateway port with many unit ids work.
    """

    host: str
    port: int
    unit: int = 1

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/unit {self.unit}"


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Timing policy of a link; defaults suit a 100 ms control cycle."""

    timeout_s: float = 0.06  # per request and per connect attempt
    poll_budget_s: float = 0.08  # a whole poll of one device (connect + all its requests)
    max_missed: int = 2  # consecutive missed polls before "unavailable"
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    #: Modules only: unavailable when the heartbeat register has not moved for this many
    #: polls in a row (a hung controller behind a live Modbus stack); 0 disables the check.
    heartbeat_stale_polls: int = 0
    #: Modules only: poll with read/write multiple registers (function 23, one request that
    #: echoes the setpoint and reads the live values): "auto" falls back to function 4 for
    #: good on exception 1 or 2, "fc23" never falls back, "fc4" never tries it.
    module_read_write: str = "auto"


# --------------------------------------------------------------------------- health


class DeviceHealth:
    """Availability of one device from the outcomes of its polls."""

    def __init__(self, max_missed: int) -> None:
        self.max_missed = max(1, max_missed)
        self.missed = 0
        self.available = False
        self.reason: str | None = "not polled yet"

    def ok(self) -> None:
        """A sane answer: available again."""
        self.missed = 0
        self.available = True
        self.reason = None

    def miss(self, reason: str) -> None:
        """No answer; unavailable once ``max_missed`` polls in a row are missed."""
        self.missed += 1
        if self.missed >= self.max_missed or not self.available:  # (never seen: at once)
            self.available = False
            self.reason = f"{reason} ({self.missed} missed polls)"

    def bad(self, reason: str) -> None:
        """An exception response or an impossible value: unavailable at once."""
        self.missed = 0
        self.available = False
        self.reason = reason

    def record(self, exc: HardwareError) -> None:
        """Book an error by kind: unreachable devices miss, everything else is bad."""
        if isinstance(exc, DeviceUnavailableError):
            self.miss(str(exc))
        else:
            self.bad(str(exc))


# --------------------------------------------------------------------------- link


class _Reply(Protocol):
    registers: Any
    bits: Any
    exception_code: int

    def isError(self) -> bool: ...


ClientFactory = Callable[[DeviceEndpoint, float], AsyncModbusTcpClient]


def _default_client(endpoint: DeviceEndpoint, timeout_s: float) -> AsyncModbusTcpClient:
    # reconnect_delay=0: no pymodbus auto-reconnect, ModbusLink owns that policy.
    # pymodbus' own timeout sits above ours so that ours fires first (and quietly).
    return AsyncModbusTcpClient(
        endpoint.host,
        port=endpoint.port,
        timeout=timeout_s * 2 + 0.05,
        retries=0,
        reconnect_delay=0,
        name=str(endpoint),
    )


class ModbusLink:
    """A device's connection: connect with exponential backoff, timed requests, typed errors."""

    def __init__(
        self,
        endpoint: DeviceEndpoint,
        name: str,
        settings: LinkSettings | None = None,
        clock: Clock = time.monotonic,
        client_factory: ClientFactory = _default_client,
    ) -> None:
        self.endpoint = endpoint
        self.name = name
        self.settings = settings or LinkSettings()
        self.clock = clock
        self._factory = client_factory
        self._client: AsyncModbusTcpClient | None = None
        self._next_attempt = float("-inf")
        self._backoff = self.settings.backoff_initial_s
        self._last_connect_error = ""
        self.connects = 0  # successful connects, for diagnostics and tests

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    def drop(self) -> None:
        """Close the connection (after a timeout the stream may hold a late reply)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        self.drop()

    async def ensure_connected(self) -> None:
        """Connect unless backing off after a failure; raises ``DeviceUnavailableError``."""
        if self.connected:
            return
        self.drop()
        now = self.clock()
        if now < self._next_attempt:
            raise DeviceUnavailableError(
                f"{self.name} at {self.endpoint}: not connected, retry in "
                f"{self._next_attempt - now:.2f} s ({self._last_connect_error})"
            )
        client = self._factory(self.endpoint, self.settings.timeout_s)
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                ok = await client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            ok = False
            self._last_connect_error = f"connect failed: {exc!r}"
        except BaseException:  # cancelled: do not leak a half-open connection
            client.close()
            raise
        else:
            if not ok:
                self._last_connect_error = "connect failed (refused or unreachable)"
        if not ok:
            client.close()
            self._next_attempt = now + self._backoff
            self._backoff = min(self._backoff * 2, self.settings.backoff_max_s)
            raise DeviceUnavailableError(f"{self.name} at {self.endpoint}: "
                                         f"{self._last_connect_error}")
        self._client = client
        self._backoff = self.settings.backoff_initial_s
        self._next_attempt = float("-inf")
        self.connects += 1
        _log.debug("modbus connected", device=self.name, endpoint=str(self.endpoint))

    async def run_poll(self, read: Callable[[], Awaitable[_T]]) -> _T:
        """Run one device poll within ``poll_budget_s``; typed errors only.

        An overrun drops the connection (a late reply must not be taken for the next one)
        and becomes ``DeviceTimeoutError``; undecodable registers become ``BadReplyError``.
        """
        budget = self.settings.poll_budget_s
        try:
            async with asyncio.timeout(budget):
                return await read()
        except TimeoutError:
            self.drop()
            raise DeviceTimeoutError(
                f"{self.name} at {self.endpoint}: poll exceeded {budget * 1000:.0f} ms"
            ) from None
        except ValueError as exc:
            raise BadReplyError(f"{self.name}: malformed reply: {exc}") from exc
        except asyncio.CancelledError:  # cancelled from outside mid-request: resync later
            self.drop()
            raise

    async def _call(
        self, what: str, call: Callable[[AsyncModbusTcpClient], Awaitable[_Reply]]
    ) -> _Reply:
        await self.ensure_connected()
        client = self._client
        assert client is not None
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                reply = await call(client)
        except TimeoutError:
            self.drop()
            raise DeviceTimeoutError(
                f"{self.name} at {self.endpoint}: no answer to {what} within "
                f"{self.settings.timeout_s * 1000:.0f} ms"
            ) from None
        except (ModbusException, OSError) as exc:
            self.drop()
            raise DeviceUnavailableError(f"{self.name} at {self.endpoint}: {what}: {exc}") from exc
        if reply is None:
            raise BadReplyError(f"{self.name}: {what}: empty reply")
        if reply.isError():
            raise ModbusExceptionError(f"{self.name}: {what}", int(reply.exception_code))
        return reply

    async def read_input(self, address: int, count: int) -> list[int]:
        """Read input registers (fc 4), checking the reply length."""
        what = f"read input registers {address}..{address + count - 1}"
        unit = self.endpoint.unit
        reply = await self._call(
            what, lambda c: c.read_input_registers(address, count=count, device_id=unit)
        )
        return self._registers(reply, count, what)

    async def read_holding(self, address: int, count: int) -> list[int]:
        """Read holding registers (fc 3), checking the reply length."""
        what = f"read holding registers {address}..{address + count - 1}"
        unit = self.endpoint.unit
        reply = await self._call(
            what, lambda c: c.read_holding_registers(address, count=count, device_id=unit)
        )
        return self._registers(reply, count, what)

    async def read_coils(self, address: int, count: int) -> list[bool]:
        """Read coils (fc 1)."""
        what = f"read coils {address}..{address + count - 1}"
        unit = self.endpoint.unit
        reply = await self._call(what, lambda c: c.read_coils(address, count=count, device_id=unit))
        return self._bits(reply, count, what)

    async def read_discrete(self, address: int, count: int) -> list[bool]:
        """Read discrete inputs (fc 2)."""
        what = f"read discrete inputs {address}..{address + count - 1}"
        unit = self.endpoint.unit
        reply = await self._call(
            what, lambda c: c.read_discrete_inputs(address, count=count, device_id=unit)
        )
        return self._bits(reply, count, what)

    async def write_registers(self, address: int, values: list[int]) -> None:
        """Write holding registers (fc 16)."""
        unit = self.endpoint.unit
        await self._call(
            f"write registers {address}..{address + len(values) - 1}",
            lambda c: c.write_registers(address, values, device_id=unit),
        )

    async def read_write(self, read_address: int, read_count: int, write_address: int,
                         values: list[int]) -> list[int]:
        """Write holding registers, then read holding registers, in one request (fc 23)."""
        what = (f"read/write registers {read_address}..{read_address + read_count - 1} / "
                f"{write_address}..{write_address + len(values) - 1}")
        unit = self.endpoint.unit
        reply = await self._call(what, lambda c: c.readwrite_registers(
            read_address=read_address, read_count=read_count, write_address=write_address,
            values=values, device_id=unit))
        return self._registers(reply, read_count, what)

    async def write_register(self, address: int, value: int) -> None:
        """Write one holding register (fc 6)."""
        unit = self.endpoint.unit
        await self._call(
            f"write register {address}", lambda c: c.write_register(address, value, device_id=unit)
        )

    async def write_coil(self, address: int, value: bool) -> None:
        """Write one coil (fc 5)."""
        unit = self.endpoint.unit
        await self._call(
            f"write coil {address}={int(value)}",
            lambda c: c.write_coil(address, value, device_id=unit),
        )

    def _registers(self, reply: _Reply, count: int, what: str) -> list[int]:
        regs = list(reply.registers or [])
        if len(regs) != count:
            raise BadReplyError(f"{self.name}: {what}: got {len(regs)} registers, expected {count}")
        return regs

    def _bits(self, reply: _Reply, count: int, what: str) -> list[bool]:
        bits = list(reply.bits or [])
        if len(bits) < count:
            raise BadReplyError(f"{self.name}: {what}: got {len(bits)} bits, expected {count}")
        return [bool(b) for b in bits[:count]]
