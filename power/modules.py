"""Power-module driver: the ``ModuleDriver`` contract and its Modbus TCP implementation.

A poll reads input registers 0..14 in one request (plus the rating, 200..207, once per
connection) and checks every value against physics before trusting it, so a garbled or
impossible reply makes the module unavailable with a reason instead of reaching the allocator.

Once a setpoint has been written, a poll is one read/write-multiple-registers request
(function 23): it writes the setpoint pair in force again (feeding the watchdog) and reads
the live values from their holding-register mirror, after the write. A ``set_output`` of
exactly that pair in the same cycle then sends nothing, so a module whose setpoint holds
costs one request per cycle; a changed setpoint is a second one. Only a poll that follows a
``set_output`` echoes (once): when the controller stops commanding, the polls stop feeding
the watchdog, which then expires at most one poll later than without the echo. A module that
answers
function 23 with exception 1 (no such function) or 2 (no mirror) is polled with function 4
from then on (``LinkSettings.module_read_write``; docs/modbus-map.md, "Function 23").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from power.modbus_base import (
    BadReplyError,
    Clock,
    DeviceEndpoint,
    DeviceHealth,
    HardwareError,
    LinkSettings,
    ModbusExceptionError,
    ModbusLink,
)
from power.modbus_map import (
    MODULE_LIVE_COUNT,
    MODULE_LIVE_START,
    MODULE_MIRROR_COUNT,
    MODULE_MIRROR_START,
    MODULE_RATING_COUNT,
    MODULE_RATING_START,
    MODULE_SETPOINT_START,
    ModuleHolding,
    ModuleInput,
    ModuleStatus,
    decode_f32,
    encode_f32,
)

#: Plausibility limits that no healthy module can exceed.
MIN_TEMPERATURE_C = -40.0
MAX_TEMPERATURE_C = 150.0
VOLTAGE_TOLERANCE = 0.02  # fraction above the rated maximum still believed
CURRENT_TOLERANCE = 0.2  # fraction above the rated current still believed
REVERSE_CURRENT_A = 5.0  # small negative readings are measurement offset


@dataclass(frozen=True, slots=True)
class ModuleRating:
    """Input registers 200..207: what the module says it can do."""

    rated_power_w: float
    rated_current_a: float
    min_voltage_v: float
    max_voltage_v: float


@dataclass(frozen=True, slots=True)
class ModuleState:
    """One poll of a module at ``read_at`` (clock seconds).

    When ``available`` is False the numbers are the last sane ones (NaN if there never were
    any) and must not be used for control; ``reason`` says why. After a single tolerated
    missed poll ``available`` stays True, the values are the previous poll's and ``reason``
    starts with "stale:".
    """

    index: int
    available: bool
    reason: str | None
    read_at: float
    voltage_v: float = math.nan
    current_a: float = math.nan
    coolant_in_c: float = math.nan
    coolant_out_c: float = math.nan
    internal_c: float = math.nan
    available_current_a: float = math.nan
    status: int = 0
    fault_code: int = 0
    heartbeat: int = 0
    rating: ModuleRating | None = None

    def _bit(self, bit: ModuleStatus) -> bool:
        return bool(self.status & bit)

    @property
    def ready(self) -> bool:
        return self._bit(ModuleStatus.READY)

    @property
    def output_on(self) -> bool:
        return self._bit(ModuleStatus.OUTPUT_ON)

    @property
    def derating(self) -> bool:
        return self._bit(ModuleStatus.DERATING)

    @property
    def fault(self) -> bool:
        return self._bit(ModuleStatus.FAULT)

    @property
    def watchdog_expired(self) -> bool:
        return self._bit(ModuleStatus.WATCHDOG_EXPIRED)

    @property
    def over_temperature(self) -> bool:
        return self._bit(ModuleStatus.OVER_TEMPERATURE)

    @property
    def stale(self) -> bool:
        """A tolerated missed poll: the values are the previous poll's, not a measurement."""
        return self.reason is not None and self.reason.startswith("stale:")

    @property
    def fresh(self) -> bool:
        """Answered this poll with sane values: its numbers may be judged and acted on."""
        return self.available and not self.stale

    @property
    def known_current_a(self) -> float:
        """The measured current, NaN unless ``fresh`` (unknown is not last-known)."""
        return self.current_a if self.fresh else math.nan

    @property
    def usable_current_a(self) -> float:
        """Current the allocator may plan with: 0 unless available, ready and fault-free."""
        if not self.available or not self.ready or self.fault:
            return 0.0
        return max(0.0, self.available_current_a)


@runtime_checkable
class ModuleDriver(Protocol):
    """Contract of one DC power module.

    ``poll`` never raises for device trouble: it returns a state with ``available`` False and
    a reason. Commands raise a ``HardwareError`` subclass when they did not reach the module
    (``DeviceUnavailableError``), were refused (``ModbusExceptionError``), and ``ValueError``
    for arguments outside the module's rating. Every accepted write feeds the module's
    watchdog; after a watchdog expiry the module stays off until ``enable()``.
    """

    index: int

    async def poll(self) -> ModuleState: ...

    async def set_output(self, voltage_v: float, current_a: float) -> None: ...

    async def enable(self) -> None: ...

    async def disable(self) -> None: ...

    async def reset_fault(self) -> None: ...

    async def set_watchdog(self, ms: int) -> None: ...

    async def close(self) -> None: ...


def check_module(values: ModuleState, rating: ModuleRating) -> str | None:
    """Why the values are physically impossible for this rating, or None when sane."""
    fields = {
        "output voltage": values.voltage_v,
        "output current": values.current_a,
        "coolant inlet temperature": values.coolant_in_c,
        "coolant outlet temperature": values.coolant_out_c,
        "internal temperature": values.internal_c,
        "available current": values.available_current_a,
    }
    for name, v in fields.items():
        if not math.isfinite(v):
            return f"{name} is {v}"
    for name in ("coolant inlet temperature", "coolant outlet temperature",
                 "internal temperature"):
        t = fields[name]
        if not MIN_TEMPERATURE_C <= t <= MAX_TEMPERATURE_C:
            return (f"{name} {t:.1f} °C outside {MIN_TEMPERATURE_C:.0f}.."
                    f"{MAX_TEMPERATURE_C:.0f} °C")
    v_max = rating.max_voltage_v * (1 + VOLTAGE_TOLERANCE)
    if not -10.0 <= values.voltage_v <= v_max:
        return (f"output voltage {values.voltage_v:.1f} V above the rated maximum "
                f"{rating.max_voltage_v:.0f} V" if values.voltage_v > 0
                else f"output voltage {values.voltage_v:.1f} V is negative")
    i_max = rating.rated_current_a * (1 + CURRENT_TOLERANCE)
    if not -REVERSE_CURRENT_A <= values.current_a <= i_max:
        return (f"output current {values.current_a:.1f} A outside "
                f"-{REVERSE_CURRENT_A:.0f}..{i_max:.0f} A")
    if not -0.5 <= values.available_current_a <= rating.rated_current_a * 1.01 + 0.5:
        return (f"available current {values.available_current_a:.1f} A outside "
                f"0..{rating.rated_current_a:.0f} A")
    return None


def check_rating(r: ModuleRating) -> str | None:
    """Why a rating block is nonsense, or None."""
    vals = (r.rated_power_w, r.rated_current_a, r.min_voltage_v, r.max_voltage_v)
    if not all(math.isfinite(v) for v in vals):
        return f"rating has a non-finite value: {vals}"
    if r.rated_power_w <= 0 or r.rated_current_a <= 0:
        return f"rated power {r.rated_power_w} W / current {r.rated_current_a} A must be > 0"
    if not 0 <= r.min_voltage_v < r.max_voltage_v <= 2000:
        return f"voltage range {r.min_voltage_v}..{r.max_voltage_v} V is not plausible"
    return None


class ModbusModule:
    """``ModuleDriver`` over Modbus TCP (see ``docs/modbus-map.md``)."""

    def __init__(
        self,
        index: int,
        endpoint: DeviceEndpoint,
        settings: LinkSettings | None = None,
        clock: Clock = time.monotonic,
        link: ModbusLink | None = None,
    ) -> None:
        self.index = index
        self.clock = clock
        self.link = link or ModbusLink(endpoint, f"module {index}", settings, clock)
        self.health = DeviceHealth(self.link.settings.max_missed)
        self.rating: ModuleRating | None = None
        self._rating_connects = -1
        self._heartbeat: int | None = None
        self._heartbeat_same = 0
        self._last = ModuleState(index, False, "not polled yet", clock())
        #: "auto" | "fc23" | "fc4" (see the module docstring); "auto" becomes "fc4" on refusal
        self.read_write = self.link.settings.module_read_write
        self.read_write_refused: str | None = None  # why function 23 was given up
        self._echo: list[int] | None = None  # the setpoint pair a poll writes back
        self._echo_a = math.inf
        self._echoed: list[int] | None = None  # what this cycle's poll wrote (fc 23)
        self._armed = False  # a set_output since the last poll: the next poll may echo

    @property
    def last(self) -> ModuleState:
        """The most recent state (as returned by the last poll)."""
        return self._last

    async def _read_rating(self) -> ModuleRating:
        regs = await self.link.read_input(MODULE_RATING_START, MODULE_RATING_COUNT)
        rating = ModuleRating(*(decode_f32(regs, i) for i in range(0, 8, 2)))
        if (why := check_rating(rating)) is not None:
            raise BadReplyError(f"module {self.index}: {why}")
        return rating

    async def _read(self) -> ModuleState:
        await self.link.ensure_connected()
        if self.rating is None or self._rating_connects != self.link.connects:
            self.rating = await self._read_rating()  # once per connection
            self._rating_connects = self.link.connects
        regs = await self._read_live()
        mi = ModuleInput
        state = ModuleState(
            self.index, True, None, self.clock(),
            voltage_v=decode_f32(regs, mi.VOLTAGE),
            current_a=decode_f32(regs, mi.CURRENT),
            coolant_in_c=decode_f32(regs, mi.COOLANT_IN),
            coolant_out_c=decode_f32(regs, mi.COOLANT_OUT),
            internal_c=decode_f32(regs, mi.INTERNAL_TEMP),
            available_current_a=decode_f32(regs, mi.AVAILABLE_CURRENT),
            status=regs[mi.STATUS], fault_code=regs[mi.FAULT_CODE],
            heartbeat=regs[mi.HEARTBEAT], rating=self.rating,
        )
        if (why := check_module(state, self.rating)) is not None:
            raise BadReplyError(f"module {self.index}: {why}")
        self._check_heartbeat(state.heartbeat)
        return state

    async def _read_live(self) -> list[int]:
        """Registers 0..14: with function 23 (echoing the setpoint) when possible."""
        self._echoed = None
        echo, armed, self._armed = self._echo, self._armed, False
        if echo is not None and armed and self.read_write != "fc4":
            try:
                regs = await self.link.read_write(MODULE_MIRROR_START, MODULE_MIRROR_COUNT,
                                                  MODULE_SETPOINT_START, echo)
            except ModbusExceptionError as exc:
                if self.read_write != "auto" or exc.code not in (1, 2):
                    raise
                self.read_write, self.read_write_refused = "fc4", str(exc)
            else:
                self._echoed = echo
                return regs
        return await self.link.read_input(MODULE_LIVE_START, MODULE_LIVE_COUNT)

    def _check_heartbeat(self, beat: int) -> None:
        limit = self.link.settings.heartbeat_stale_polls
        self._heartbeat_same = self._heartbeat_same + 1 if beat == self._heartbeat else 0
        self._heartbeat = beat
        if limit > 0 and self._heartbeat_same >= limit:
            raise BadReplyError(
                f"module {self.index}: heartbeat stuck at {beat} for {self._heartbeat_same} polls"
            )

    async def poll(self) -> ModuleState:
        """Read the module; never raises for device trouble (see ``ModuleDriver``)."""
        try:
            state = await self.link.run_poll(self._read)
        except HardwareError as exc:
            self.health.record(exc)
            self._last = replace(self._last, available=self.health.available,
                                 reason=self.health.reason, read_at=self.clock())
            if self.health.available:  # a tolerated miss: values are the last good ones
                self._last = replace(self._last, reason=f"stale: {exc}")
            return self._last
        self.health.ok()
        self._last = state
        return state

    def _check_voltage(self, voltage_v: float) -> None:
        limit = self.rating.max_voltage_v if self.rating else math.inf
        if not (math.isfinite(voltage_v) and 0.0 <= voltage_v <= limit):
            raise ValueError(
                f"module {self.index}: voltage setpoint {voltage_v} V outside 0..{limit} V"
            )

    async def set_output(self, voltage_v: float, current_a: float) -> None:
        """Write voltage setpoint and current limit in one request (feeds the watchdog)."""
        self._check_voltage(voltage_v)
        limit = self.rating.rated_current_a if self.rating else math.inf
        if not (math.isfinite(current_a) and 0.0 <= current_a <= limit):
            raise ValueError(
                f"module {self.index}: current limit {current_a} A outside 0..{limit} A"
            )
        regs = encode_f32(voltage_v) + encode_f32(current_a)
        echoed, self._echoed = self._echoed, None
        self._armed = True
        if echoed == regs:
            return  # this cycle's poll wrote exactly this pair (function 23)
        if current_a <= self._echo_a:  # a lower pair is echoed even if this write fails
            self._echo, self._echo_a = regs, current_a
        await self.link.write_registers(ModuleHolding.VOLTAGE_SETPOINT, regs)
        self._echo, self._echo_a = regs, current_a

    async def enable(self) -> None:
        """Switch the output on (also re-arms after a watchdog expiry)."""
        await self.link.write_register(ModuleHolding.ENABLE, 1)

    async def disable(self) -> None:
        await self.link.write_register(ModuleHolding.ENABLE, 0)

    async def reset_fault(self) -> None:
        """Ask the module to clear a latched fault (it stays if the cause persists)."""
        await self.link.write_register(ModuleHolding.FAULT_RESET, 1)

    async def set_watchdog(self, ms: int) -> None:
        """Watchdog timeout in ms (0 disables it; 1..65535)."""
        if not 0 <= ms <= 0xFFFF:
            raise ValueError(f"module {self.index}: watchdog {ms} ms outside 0..65535")
        await self.link.write_register(ModuleHolding.WATCHDOG_MS, int(ms))

    async def close(self) -> None:
        await self.link.close()
