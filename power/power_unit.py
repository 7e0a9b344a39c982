"""Driver of the power-unit layout: every module behind one Modbus device.

A poll is a handful of requests, all in flight together on a small pool of connections
(pymodbus answers one request at a time per connection): the header with the cycle counter,
the live block in reads of ≤ 125 registers (12 modules each), the matrix coils and feedback,
plus each DC meter on its own connection. Commands keep the ``ModuleDriver`` /
``MatrixDriver`` contracts so that ``apply_commands`` works unchanged, but every
``set_output`` (and every contactor change) issued in the same event-loop turn is coalesced
into one multi-register (one multi-coil) write, so an apply phase costs one request, not one
per module. Gaps inside a coalesced write carry the unit's current values (read at connect,
then what was last accepted), so nothing but the asked-for modules changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, Self, TypeVar

import numpy as np

from power.hardware_api import StationHardware
from power.matrix import MatrixState
from power.meters import MeterDriver, ModbusMeter
from power.modbus_base import (
    BadReplyError,
    Clock,
    DeviceHealth,
    DeviceTimeoutError,
    HardwareError,
    InterlockRefusedError,
    ModbusExceptionError,
    ModbusLink,
)
from power.modbus_driver import Hardware, HardwareConfig, HardwareSnapshot, _fallback_meter
from power.modbus_map import MatrixFault, decode_f32
from power.modules import ModuleRating, ModuleState, check_module, check_rating
from power.power_unit_drivers import PowerUnitMatrix, PowerUnitModule
from power.power_unit_io import LinkPool, PowerUnitConfig, _Batch, _Results, _settle
from power.power_unit_map import (
    HEADER_COUNT,
    LAYOUT_VERSION,
    MATRIX_IMAGE_START,
    MAX_COILS_PER_WRITE,
    MAX_WRITE,
    MODULE_STRIDE,
    OUTPUT_START,
    OUTPUT_STRIDE,
    OUTPUTS_PER_WRITE,
    ControlSlot,
    ModuleSlot,
    UnitHeader,
    control_address,
    from_s16,
    from_u16,
    head_reads,
    image_words,
    live_reads,
    output_registers,
    rating_reads,
    unpack_bits,
)

__all__ = ["LinkPool", "PowerUnit", "PowerUnitConfig", "PowerUnitHardware", "make_hardware"]

_T = TypeVar("_T")
#: Upper bound of the automatic connection count (power units accept a few TCP clients).
AUTO_MAX_CONNECTIONS = 8


class PowerUnit:
    """The unit's state and I/O: poll, coalesced output and coil writes, control writes."""

    def __init__(self, config: PowerUnitConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.m_n = config.module_count
        self.g_n = config.guns
        per_poll = len(head_reads(self.m_n, self.g_n)) + len(live_reads(self.m_n))
        n_links = config.connections or min(AUTO_MAX_CONNECTIONS, per_poll)
        self.pool = LinkPool(config.unit, "power unit", config.link, clock, n_links)
        self.health = [DeviceHealth(config.link.max_missed) for _ in range(self.m_n)]
        self.matrix_health = DeviceHealth(config.link.max_missed)
        self.ratings: list[ModuleRating] | None = None
        self._ratings_connects = -1
        self.outputs: list[tuple[float, float]] | None = None  # the unit's setpoints
        self.coils: list[bool] | None = None  # the unit's coil image
        self.cycle: int | None = None  # last cycle counter
        self.repeats = 0  # polls in a row with the same cycle counter
        self.fresh = False  # the last poll saw a new cycle counter
        self.requests = 0
        t = clock()
        self.modules: list[ModuleState] = [ModuleState(i, False, "not polled yet", t)
                                           for i in range(self.m_n)]
        empty = np.zeros((self.m_n, self.g_n), dtype=bool)
        self.matrix = MatrixState(self.m_n, self.g_n, False, "not polled yet", t, empty, empty)
        self._out_batch = _Batch()
        self._coil_batch = _Batch()
        self._ctl_batch = _Batch()

    # ------------------------------------------------------------------ requests
    async def _req(self, call: Callable[[ModbusLink], Awaitable[_T]]) -> _T:
        self.requests += 1
        return await self.pool.run(call)

    async def _input(self, address: int, count: int) -> list[int]:
        return await self._req(lambda ln: ln.read_input(address, count))

    async def _holding(self, address: int, count: int) -> list[int]:
        return await self._req(lambda ln: ln.read_holding(address, count))

    async def _read_static(self) -> None:
        """Ratings and the output block: once per (re)connection of the pool."""
        m_n = self.m_n
        r_reads = rating_reads(m_n)
        o_reads = [(f, OUTPUT_START + f * OUTPUT_STRIDE, min(OUTPUTS_PER_WRITE, m_n - f)
                    * OUTPUT_STRIDE) for f in range(0, m_n, OUTPUTS_PER_WRITE)]
        got = await asyncio.gather(
            *(self._input(a, c) for _f, a, c in r_reads),
            *(self._holding(a, c) for _f, a, c in o_reads))
        ratings: list[ModuleRating] = []
        for regs in got[:len(r_reads)]:
            for off in range(0, len(regs), 8):
                r = ModuleRating(*(decode_f32(regs, off + i) for i in range(0, 8, 2)))
                if (why := check_rating(r)) is not None:
                    raise BadReplyError(f"power unit: module {len(ratings)}: {why}")
                ratings.append(r)
        outputs: list[tuple[float, float]] = []
        for regs in got[len(r_reads):]:
            outputs += [(from_u16(regs[i]), from_u16(regs[i + 1]))
                        for i in range(0, len(regs), 2)]
        self.ratings, self.outputs = ratings, outputs
        self._ratings_connects = self.pool.connects

    async def _read(self) -> tuple[list[int], list[list[int]], list[bool], list[bool]]:
        if self.ratings is None or self.outputs is None:
            await self._read_static()
        n = self.m_n * self.g_n
        heads = head_reads(self.m_n, self.g_n)
        got = await asyncio.gather(*(self._input(a, c) for a, c in heads),
                                   *(self._input(a, c) for _f, a, c in live_reads(self.m_n)))
        head = [r for regs in got[:len(heads)] for r in regs]
        w = image_words(self.m_n, self.g_n)
        coils = unpack_bits(head[MATRIX_IMAGE_START:MATRIX_IMAGE_START + w], n)
        closed = unpack_bits(head[MATRIX_IMAGE_START + w:MATRIX_IMAGE_START + 2 * w], n)
        return head[:HEADER_COUNT], list(got[len(heads):]), coils, closed

    def _check_header(self, header: list[int]) -> None:
        m, g = header[UnitHeader.MODULES], header[UnitHeader.GUNS]
        if (m, g) != (self.m_n, self.g_n):
            raise BadReplyError(f"power unit reports {m} modules × {g} guns, configured "
                                f"{self.m_n} × {self.g_n}")
        if header[UnitHeader.LAYOUT_VERSION] != LAYOUT_VERSION:
            raise BadReplyError(f"power unit layout version {header[UnitHeader.LAYOUT_VERSION]}"
                                f", this driver speaks {LAYOUT_VERSION}")
        cycle = header[UnitHeader.CYCLE]
        self.fresh = cycle != self.cycle
        self.repeats = 0 if self.fresh else self.repeats + 1
        self.cycle = cycle
        limit = self.config.link.heartbeat_stale_polls
        if limit > 0 and self.repeats >= limit:
            raise BadReplyError(f"power unit: cycle counter stuck at {cycle} for "
                                f"{self.repeats} polls (a repeated snapshot)")

    async def poll(self) -> tuple[list[ModuleState], MatrixState]:
        """Read everything; never raises for device trouble (states carry the reason)."""
        budget = self.config.link.poll_budget_s
        try:
            if self.pool.connects != self._ratings_connects:
                self.ratings = None  # reconnected: the unit may have been replaced
            async with asyncio.timeout(budget):
                header, blocks, coils, closed = await self._read()
            self._check_header(header)
        except (HardwareError, TimeoutError, ValueError) as exc:
            if isinstance(exc, TimeoutError):
                exc = DeviceTimeoutError(f"power unit at {self.config.unit}: poll exceeded "
                                         f"{budget * 1000:.0f} ms")
            elif isinstance(exc, ValueError) and not isinstance(exc, HardwareError):
                exc = BadReplyError(f"power unit: malformed reply: {exc}")
            self._unit_failed(exc)
            return self.modules, self.matrix
        now = self.clock()
        assert self.ratings is not None
        for (first, _a, _c), regs in zip(live_reads(self.m_n), blocks, strict=True):
            for k in range(len(regs) // MODULE_STRIDE):
                m = first + k
                self._module(m, regs[k * MODULE_STRIDE:(k + 1) * MODULE_STRIDE], now)
        if not self.fresh:  # the unit has not refreshed its modules since the last poll
            why = (f"stale: power unit cycle counter still {self.cycle} "
                   f"(a repeated snapshot, {self.repeats} polls)")
            self.modules = [replace(s, reason=why) if s.available and s.reason is None else s
                            for s in self.modules]
        self.coils = list(coils)
        shape = (self.m_n, self.g_n)
        self.matrix_health.ok()
        self.matrix = MatrixState(self.m_n, self.g_n, True, None, now,
                                  np.array(closed, dtype=bool).reshape(shape),
                                  np.array(coils, dtype=bool).reshape(shape),
                                  header[UnitHeader.MATRIX_FAULT])
        return self.modules, self.matrix

    def _module(self, m: int, slot: list[int], now: float) -> None:
        assert self.ratings is not None
        health = self.health[m]
        if slot[ModuleSlot.LINK]:
            health.bad(f"power unit: module {m} not answering on the internal bus "
                       f"(link register {slot[ModuleSlot.LINK]})")
            self.modules[m] = replace(self.modules[m], available=False, reason=health.reason,
                                      read_at=now)
            return
        s = ModuleSlot
        state = ModuleState(
            m, True, None, now,
            voltage_v=from_u16(slot[s.VOLTAGE]), current_a=from_s16(slot[s.CURRENT]),
            coolant_in_c=from_s16(slot[s.COOLANT_IN]), coolant_out_c=from_s16(slot[s.COOLANT_OUT]),
            internal_c=from_s16(slot[s.INTERNAL_TEMP]),
            available_current_a=from_u16(slot[s.AVAILABLE_CURRENT]),
            status=slot[s.STATUS], fault_code=slot[s.FAULT_CODE], heartbeat=slot[s.HEARTBEAT],
            rating=self.ratings[m])
        if (why := check_module(state, self.ratings[m])) is not None:
            health.bad(f"module {m}: {why}")
            self.modules[m] = replace(self.modules[m], available=False, reason=health.reason,
                                      read_at=now)
            return
        health.ok()
        self.modules[m] = state

    def _unit_failed(self, exc: HardwareError) -> None:
        now = self.clock()
        for m, health in enumerate(self.health):
            health.record(exc)
            reason = health.reason if not health.available else f"stale: {exc}"
            self.modules[m] = replace(self.modules[m], available=health.available,
                                      reason=reason, read_at=now)
        self.matrix_health.record(exc)
        self.matrix = replace(self.matrix, available=self.matrix_health.available,
                              reason=(f"stale: {exc}" if self.matrix_health.available
                                      else self.matrix_health.reason), read_at=now)
        self.outputs = None  # re-read at the next good connection
        self.coils = None

    # ------------------------------------------------------------------ coalesced writes
    async def _staged(self, batch_attr: str, key: int, value: Any,
                      flush: Callable[[dict[int, Any]], Coroutine[Any, Any, _Results]],
                      ) -> None:
        """Stage ``value`` for ``key``; all staged in this loop turn go out as one write."""
        batch: _Batch = getattr(self, batch_attr)
        batch.items[key] = value
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        batch.waiters.append((key, fut))
        if not batch.scheduled:
            batch.scheduled = True

            def go(b: _Batch = batch) -> None:
                setattr(self, batch_attr, _Batch())
                task = loop.create_task(flush(b.items))
                task.add_done_callback(lambda t: _settle(b, t))

            loop.call_soon(go)
        await fut

    async def set_output(self, m: int, voltage_v: float, current_a: float) -> None:
        await self._staged("_out_batch", m, (voltage_v, current_a), self._flush_outputs)

    async def _flush_outputs(self, items: dict[int, tuple[float, float]]
                             ) -> dict[int, BaseException | None]:
        if self.outputs is None:
            err = DeviceTimeoutError(f"power unit at {self.config.unit}: setpoints unknown "
                                     "until the next good poll")
            return dict.fromkeys(items, err)
        wanted = list(self.outputs)
        for m, pair in items.items():
            wanted[m] = pair
        keys = sorted(items)
        chunks: list[tuple[int, int]] = []  # [lo, hi] module ranges, ≤ 61 modules each
        lo = keys[0]
        while lo <= keys[-1]:
            hi = min(keys[-1], lo + OUTPUTS_PER_WRITE - 1)
            chunks.append((lo, hi))
            lo = next((k for k in keys if k > hi), keys[-1] + 1)

        async def write(lo: int, hi: int) -> None:
            regs = output_registers(wanted[lo:hi + 1])
            addr = OUTPUT_START + lo * OUTPUT_STRIDE
            await self._req(lambda ln: ln.write_registers(addr, regs))
            if self.outputs is not None:
                self.outputs[lo:hi + 1] = wanted[lo:hi + 1]

        got = await asyncio.gather(*(write(lo, hi) for lo, hi in chunks),
                                   return_exceptions=True)
        out: dict[int, BaseException | None] = {}
        for (lo, hi), res in zip(chunks, got, strict=True):
            for m in keys:
                if lo <= m <= hi:
                    out[m] = res if isinstance(res, BaseException) else None
        return out

    async def set_coil(self, index: int, on: bool) -> None:
        await self._staged("_coil_batch", index, on, self._flush_coils)

    async def _flush_coils(self, items: dict[int, bool]) -> dict[int, BaseException | None]:
        if self.coils is None:
            err = DeviceTimeoutError(f"power unit at {self.config.unit}: coil image unknown "
                                     "until the next good poll")
            return dict.fromkeys(items, err)
        keys = sorted(items)
        lo, hi = keys[0], keys[-1]
        if hi - lo + 1 > MAX_COILS_PER_WRITE:
            raise ValueError("coil write too wide")  # cannot happen below 192 × 6 coils
        bits = list(self.coils[lo:hi + 1])
        for k in keys:
            bits[k - lo] = items[k]
        try:
            await self._write_coils(lo, bits)
        except ModbusExceptionError:
            if len(keys) == 1:
                return {lo: await self._refusal(lo, items[lo])}
            # Refused as a whole: one coil at a time, so that only the culprit fails.
            out: dict[int, BaseException | None] = {}
            for k in keys:
                try:
                    await self._write_coils(k, [items[k]])
                    out[k] = None
                except ModbusExceptionError:
                    out[k] = await self._refusal(k, items[k])
                except HardwareError as exc:
                    out[k] = exc
            return out
        except HardwareError as exc:
            return dict.fromkeys(keys, exc)
        return dict.fromkeys(keys, None)

    async def _write_coils(self, lo: int, bits: list[bool]) -> None:
        unit = self.config.unit.unit

        async def call(ln: ModbusLink) -> None:
            await ln._call(f"write coils {lo}..{lo + len(bits) - 1}",
                           lambda c: c.write_coils(lo, bits, device_id=unit))

        await self._req(call)
        if self.coils is not None:
            self.coils[lo:lo + len(bits)] = bits

    async def _refusal(self, index: int, on: bool) -> BaseException:
        m, g = divmod(index, self.g_n)
        exc = ModbusExceptionError(f"power unit: coil {index} (module {m}, gun {g})", 3)
        if not on:
            return exc
        try:
            regs = await self._req(lambda ln: ln.read_input(0, HEADER_COUNT))
        except HardwareError:
            return exc
        if regs[UnitHeader.MATRIX_FAULT] & MatrixFault.INTERLOCK_REFUSED:
            return InterlockRefusedError(m, g, 3)
        return exc

    async def write_control(self, m: int, slot: ControlSlot, value: int) -> None:
        """One control register; those written in the same loop turn go out together, one
        write per contiguous run (no gap is filled: only asked-for registers change)."""
        await self._staged("_ctl_batch", control_address(slot, m), value, self._flush_control)

    async def _flush_control(self, items: dict[int, int]) -> _Results:
        keys = sorted(items)
        runs: list[list[int]] = []
        for k in keys:
            if runs and k == runs[-1][-1] + 1 and len(runs[-1]) < MAX_WRITE:
                runs[-1].append(k)
            else:
                runs.append([k])

        async def write(run: list[int]) -> None:
            values = [items[k] for k in run]
            await self._req(lambda ln: ln.write_registers(run[0], values))

        got = await asyncio.gather(*(write(r) for r in runs), return_exceptions=True)
        out: _Results = {}
        for run, res in zip(runs, got, strict=True):
            for k in run:
                out[k] = res if isinstance(res, BaseException) else None
        return out


class PowerUnitHardware:
    """``StationHardware`` for the power-unit layout (``power/hardware_api.py``)."""

    def __init__(self, config: PowerUnitConfig, clock: Clock = time.monotonic,
                 *, meters: Sequence[MeterDriver] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.unit = PowerUnit(config, clock)
        self.modules = [PowerUnitModule(self.unit, i) for i in range(config.module_count)]
        self.matrix = PowerUnitMatrix(self.unit)
        self.meters: list[MeterDriver] = list(meters) if meters is not None else [
            ModbusMeter(g, ep, config.link, clock) for g, ep in enumerate(config.meters)]
        self.last: HardwareSnapshot | None = None

    async def start(self) -> HardwareSnapshot:
        return await self.poll_all()

    async def close(self) -> None:
        await asyncio.gather(self.unit.pool.close(), *(m.close() for m in self.meters),
                             return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def poll_all(self, deadline_s: float | None = None) -> HardwareSnapshot:
        """The unit and every meter at once; never raises for device trouble."""
        deadline = self.config.link.poll_budget_s + 0.02 if deadline_s is None else deadline_s
        started = self.clock()
        loop = asyncio.get_running_loop()
        unit_task = loop.create_task(self.unit.poll())
        met_tasks = [loop.create_task(m.poll()) for m in self.meters]
        _done, pending = await asyncio.wait([unit_task, *met_tasks], timeout=deadline)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if unit_task.cancelled() or unit_task.exception() is not None:
            why = (f"poll exceeded {deadline * 1000:.0f} ms" if unit_task.cancelled()
                   else f"driver error: {unit_task.exception()!r}")
            self.unit._unit_failed(DeviceTimeoutError(f"power unit: {why}"))
        mets = []
        for m, t in zip(self.meters, met_tasks, strict=True):
            if not t.cancelled() and t.exception() is None:
                mets.append(t.result())
            else:
                fb = _fallback_meter(m, started)
                mets.append(replace(fb, available=False, read_at=self.clock(),
                                    reason=f"meter {m.gun}: poll exceeded {deadline * 1000:.0f}"
                                    " ms" if t.cancelled() else f"driver error: {t.exception()!r}"))
        snap = HardwareSnapshot(tuple(self.unit.modules), self.unit.matrix, tuple(mets),
                                started, self.clock())
        self.last = snap
        return snap


def make_hardware(hardware: StationHardware | HardwareConfig | PowerUnitConfig,
                  clock: Clock = time.monotonic) -> StationHardware:
    """The driver for a configuration (either layout), or ``hardware`` itself when built."""
    if isinstance(hardware, PowerUnitConfig):
        return PowerUnitHardware(hardware, clock)
    if isinstance(hardware, HardwareConfig):
        return Hardware(hardware, clock)
    return hardware
