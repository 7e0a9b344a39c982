"""A simulated power-unit controller: one Modbus TCP device in front of every module.

The same ``StationPhysics`` (modules, matrix, meters) as ``sim/modbus_server.py``, served in
the power-unit layout (``power/power_unit_map.py``, ``docs/modbus-map.md``): the whole module
pool, its setpoints and the contactor matrix on one port (unit 1); the DC meters stay their
own devices (certified meters are separate boxes) on PORT + 1, the fault-injection control
device on PORT + 2, SECC bridges (``serve_trucks``) on PORT + M + 3 as in the other layout.

The unit's internal bus is modelled by its cycle counter: ``t / REFRESH_S``. A module with
injected communication loss shows a non-zero link register, and the unit does not forward
writes to it (so its watchdog expires, as behind a broken internal bus).
"""

from __future__ import annotations

import math
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from power.modbus_base import DeviceEndpoint, LinkSettings
from power.modbus_map import encode_f32, meter_unit
from power.power_unit import PowerUnitConfig
from power.power_unit_map import (
    HEADER_COUNT,
    LAYOUT_VERSION,
    LIVE_START,
    MAX_MODULES,
    MODULE_STRIDE,
    OUTPUT_START,
    OUTPUT_STRIDE,
    RATING_START,
    ControlSlot,
    UnitHeader,
    UnitStatus,
    from_u16,
    head_count,
    pack_bits,
    to_s16,
)
from sim.modbus_server import (
    MATRIX_BIT_FUNCTIONS,
    SimPorts,
    StationSimulator,
    _Devices,
    matrix_bits,
)
from sim.modules import SimModule
from sim.physics import StationPhysics

#: The unit's internal-bus refresh period: the cycle counter's tick.
REFRESH_S = 0.01


def _u16(value: float, scale: float = 10.0) -> int:
    return max(0, min(0xFFFF, math.floor(value * scale + 0.5))) if math.isfinite(
        value) else 0xFFFF


def module_slot(mod: SimModule, lost: bool) -> list[int]:
    """One module's ten live registers."""
    return [
        _u16(mod.voltage_v), to_s16(mod.current_a), to_s16(mod.coolant_in_c),
        to_s16(mod.coolant_out_c), to_s16(mod.internal_c), _u16(mod.available_current_a),
        mod.status, mod.fault_code & 0xFFFF, mod.heartbeat & 0xFFFF, 1 if lost else 0,
    ]


class _Unit:
    """The pymodbus device of the power unit and its action."""

    def __init__(self, physics: StationPhysics) -> None:
        self.physics = physics
        self.m_n = len(physics.modules)
        if self.m_n > MAX_MODULES:
            raise ValueError(f"the power-unit layout holds at most {MAX_MODULES} modules, "
                             f"got {self.m_n}")
        self.requests = 0  # served requests, for tests and benches
        self.head_n = head_count(self.m_n, physics.guns)

    def header(self) -> list[int]:
        ph = self.physics
        regs = [0] * HEADER_COUNT
        regs[UnitHeader.MODULES] = self.m_n
        regs[UnitHeader.GUNS] = ph.guns
        regs[UnitHeader.CYCLE] = int(ph.t / REFRESH_S) & 0xFFFF
        regs[UnitHeader.MATRIX_FAULT] = ph.matrix.fault_word
        regs[UnitHeader.UNIT_STATUS] = int(UnitStatus.BUS_OK)
        regs[UnitHeader.LAYOUT_VERSION] = LAYOUT_VERSION
        return regs

    def _read_input(self, start: int, address: int, count: int, regs: list[int]) -> None:
        end = address + count
        if address < self.head_n:
            mx = self.physics.matrix
            regs[0 - start:self.head_n - start] = (self.header() + pack_bits(mx.coils)
                                                   + pack_bits(mx.closed))
        live_end = LIVE_START + self.m_n * MODULE_STRIDE
        if address < live_end and end > LIVE_START:
            first = max(0, (address - LIVE_START) // MODULE_STRIDE)
            last = min(self.m_n, (end - LIVE_START + MODULE_STRIDE - 1) // MODULE_STRIDE)
            lost = self.physics.comm_lost
            for m in range(first, last):
                at = LIVE_START + m * MODULE_STRIDE - start
                regs[at:at + MODULE_STRIDE] = module_slot(self.physics.modules[m], m in lost)

    def _read_holding(self, start: int, regs: list[int]) -> None:
        for m, mod in enumerate(self.physics.modules):
            o = OUTPUT_START + m * OUTPUT_STRIDE - start
            regs[o:o + OUTPUT_STRIDE] = [_u16(mod.voltage_setpoint_v), _u16(mod.current_limit_a)]
            regs[ControlSlot.ENABLE + m - start] = int(mod.enabled)
            regs[ControlSlot.WATCHDOG_MS + m - start] = mod.watchdog_ms & 0xFFFF
            regs[ControlSlot.FAULT_RESET + m - start] = 0

    def _write_holding(self, address: int, values: list[int]) -> ExcCodes | None:
        """Apply a write to the output and/or control blocks, all modules or none."""
        staged: dict[int, dict[str, int]] = {}
        for i, raw in enumerate(values):
            a = address + i
            if OUTPUT_START <= a < OUTPUT_START + self.m_n * OUTPUT_STRIDE:
                m, off = divmod(a - OUTPUT_START, OUTPUT_STRIDE)
                staged.setdefault(m, {})["v" if off == 0 else "a"] = int(raw)
            else:
                slot = next((c for c in ControlSlot if c <= a < c + self.m_n), None)
                if slot is None:
                    return ExcCodes.ILLEGAL_ADDRESS
                staged.setdefault(a - slot, {})[slot.name] = int(raw)
        plans = []
        for m, fields in staged.items():
            mod = self.physics.modules[m]
            p = mod.params
            v = from_u16(fields["v"]) if "v" in fields else mod.voltage_setpoint_v
            amps = from_u16(fields["a"]) if "a" in fields else mod.current_limit_a
            enable = fields.get("ENABLE", int(mod.enabled))
            wd = fields.get("WATCHDOG_MS", mod.watchdog_ms)
            reset = fields.get("FAULT_RESET", 0)
            if not (0.0 <= v <= p.max_voltage_v and 0.0 <= amps <= p.rated_current_a
                    and enable in (0, 1) and reset in (0, 1)):
                return ExcCodes.ILLEGAL_VALUE  # nothing applied: the write is all or nothing
            plans.append((mod, v, amps, enable, wd, reset))
        for mod, v, amps, enable, wd, reset in plans:
            if mod.index in self.physics.comm_lost:
                continue  # the internal bus does not reach it: its watchdog runs out
            mod.write_holding(self.physics.t, voltage_setpoint_v=v, current_limit_a=amps,
                              enable=enable, watchdog_ms=wd, fault_reset=reset)
        return None

    def device(self, unit: int = 1) -> SimDevice:
        mx = self.physics.matrix
        n = mx.modules * mx.guns
        physics = self.physics
        ratings: list[int] = []
        for mod in physics.modules:
            p = mod.params
            ratings += (encode_f32(p.rated_power_w) + encode_f32(p.rated_current_a)
                        + encode_f32(p.min_voltage_v) + encode_f32(p.max_voltage_v))

        async def action(
            fc: int, start: int, address: int, count: int,
            regs: list[int], values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            self.requests += 1
            if fc == 4:
                self._read_input(start, address, count, regs)
                return None
            if fc in MATRIX_BIT_FUNCTIONS:
                return matrix_bits(mx, physics.t, fc, address, regs, values)
            if fc == 3 or (fc in (6, 16) and values is None):
                self._read_holding(start, regs)
                return None
            if fc in (6, 16) and values is not None:
                refused = self._write_holding(address, [int(v) for v in values])
                if refused is None:
                    self._read_holding(start, regs)
                    # pymodbus stores ``values`` after this: they are what was accepted.
                return refused
            return ExcCodes.ILLEGAL_FUNCTION

        bits = max(16, n)
        return SimDevice(
            id=unit,
            simdata=(
                [SimData(0, count=bits, values=False, datatype=DataType.BITS)],
                [SimData(0, count=bits, values=False, datatype=DataType.BITS)],
                [SimData(OUTPUT_START, count=self.m_n * OUTPUT_STRIDE,
                         datatype=DataType.REGISTERS),
                 *(SimData(int(c), count=self.m_n, datatype=DataType.REGISTERS)
                   for c in ControlSlot)],
                [SimData(0, count=self.head_n, datatype=DataType.REGISTERS),
                 SimData(LIVE_START, count=self.m_n * MODULE_STRIDE,
                         datatype=DataType.REGISTERS),
                 SimData(RATING_START, values=ratings, datatype=DataType.REGISTERS)],
            ),
            action=action,
        )


class PowerUnitSimulator(StationSimulator):
    """``StationSimulator`` in the power-unit layout (same physics, time and fault API).

    Ports: the unit on ``base`` (unit 1), the meters on ``base + 1`` (unit g + 1), the
    control device on ``base + 2``; extra devices (SECC bridges) as ``add_devices`` says.
    ``base_port = 0`` binds free ports.
    """

    def __init__(self, physics: StationPhysics | None = None, **kwargs: Any) -> None:
        if kwargs.get("gateway_port") is not None:
            raise ValueError("the power-unit layout has no gateway port: it is one device")
        kwargs.pop("gateway_port", None)
        super().__init__(physics, **kwargs)
        self.unit = _Unit(self.physics)
        self.unit_port = 0

    async def start(self) -> SimPorts:
        if self._servers:
            return self.ports
        ph, base = self.physics, self.base_port
        d = _Devices(ph, self._command)
        fixed = self._fixed_ports

        def port(i: int) -> int:
            if fixed is not None:
                return fixed[i]
            return base + i if base else 0

        try:
            ports = SimPorts(self.host)
            self.unit_port = await self._serve(self.unit.device(1), port(0))
            ports.meters = await self._serve([d.meter(g, meter_unit(g)) for g in range(ph.guns)],
                                             port(1))
            ports.control = await self._serve(d.control(1), port(2))
            for name, extra in self._extra.items():
                want = (self.ports.extra.get(name) if fixed else None) or (
                    extra.port if base else 0)
                ports.extra[name] = await self._serve(extra.build(), want)
        except BaseException:
            await self.stop()
            raise
        self.ports = ports
        self._fixed_ports = [self.unit_port, ports.meters, ports.control]
        if self.stepper is not None:
            self.stepper.start()
        return ports

    def hardware_config(self, link: LinkSettings | None = None,  # type: ignore[override]
                        gateway: bool = False, connections: int = 0) -> PowerUnitConfig:
        """Driver configuration for the ports actually bound (after ``start``)."""
        if gateway:
            raise ValueError("the power-unit layout has no gateway port")
        p = self.ports
        return PowerUnitConfig(
            DeviceEndpoint(p.host, self.unit_port, 1), len(self.physics.modules),
            tuple(DeviceEndpoint(p.host, p.meters, meter_unit(g))
                  for g in range(self.physics.guns)),
            link or LinkSettings(), connections)

    def describe(self) -> dict[str, object]:
        p = self.ports
        return {
            "host": p.host,
            "layout": "power_unit",
            "power_unit": {"port": self.unit_port, "unit": 1,
                           "modules": len(self.physics.modules), "guns": self.physics.guns},
            "modules": {"count": len(self.physics.modules)},
            "meters": {"port": p.meters,
                       "units": [meter_unit(g) for g in range(self.physics.guns)]},
            "control": {"port": p.control, "unit": 1},
            **{name: {"port": p.extra.get(name), **x.info} for name, x in self._extra.items()},
        }

