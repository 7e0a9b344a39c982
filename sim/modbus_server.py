"""Real Modbus TCP servers (pymodbus ``SimDevice``) in front of ``StationPhysics``.

Each device's registers are refreshed from the physics when a master reads them and writes are
applied to the physics (through ``SimDevice(action=...)``), so what a master sees is always
the model's state at that instant. Port layout (see ``docs/modbus-map.md``): module ``i`` on
``base + i`` (unit 1), the matrix on ``base + M`` (unit 1), the meters on ``base + M + 1``
(unit ``g + 1``) and the fault-injection control device on ``base + M + 2``. ``base_port = 0``
binds every server to a free port (tests); ``ports`` tells which. Optionally one extra
gateway port serves every device by unit id.

A module with injected communication loss, or an offline meter, drops requests silently: the
master times out, as with a pulled cable.

A module serves read/write-multiple-registers (function 23) with its live values mirrored into
holding registers 0..14; ``module_fc23=False`` simulates an older module without either
(function 23 answers exception 1, the mirror exception 2), for the driver's fallback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymodbus import ModbusDeviceIdentification
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from power.modbus_base import DeviceEndpoint, LinkSettings
from power.modbus_driver import HardwareConfig
from power.modbus_map import (
    GATEWAY_MATRIX_UNIT,
    MAX_GATEWAY_GUNS,
    MAX_GATEWAY_MODULES,
    MODULE_HOLDING_COUNT,
    MODULE_HOLDING_START,
    MODULE_LIVE_COUNT,
    MODULE_MIRROR_COUNT,
    MODULE_MIRROR_START,
    MODULE_RATING_START,
    MeterInput,
    ModuleHolding,
    control_port,
    decode_f32,
    encode_f32,
    encode_f64,
    gateway_meter_unit,
    gateway_module_unit,
    matrix_port,
    meter_port,
    meter_unit,
    module_port,
)
from sim.modules import SimModule
from sim.physics import MatrixPhysics, RealTimeStepper, StationPhysics

_BIT_FCS = frozenset({1, 2, 5, 15})
_READ_HOLDING = 3
_READ_WRITE = 23  # read/write multiple registers: the write first, then the read
_WRITE_HOLDING = frozenset({6, 16, _READ_WRITE})

#: What Read Device Identification (fc 43/14) answers, so `mwc doctor` has a firmware
#: revision to report. pymodbus keeps one identity per process: every simulated device alike.
SIM_IDENTITY = ModbusDeviceIdentification(info_name={  # type: ignore[no-untyped-call]
    "VendorName": "mwcharge", "ProductCode": "SIM-PM40", "MajorMinorRevision": "1.0.0"})


def _dummy_bits() -> list[SimData]:
    return [SimData(0, count=16, values=False, datatype=DataType.BITS)]


def _invalid() -> list[SimData]:
    return [SimData(0, count=1, datatype=DataType.INVALID)]


def _pack_bits(bits: list[bool], words: list[int]) -> None:
    """Write ``bits`` (bit 0 first) into the 16-bit words of a pymodbus bit block."""
    for w in range(len(words)):
        chunk = bits[w * 16 : w * 16 + 16]
        words[w] = sum(1 << i for i, b in enumerate(chunk) if b)


#: Function codes :func:`matrix_bits` serves (coils and their feedback inputs).
MATRIX_BIT_FUNCTIONS = (1, 2, 5, 15)


def matrix_bits(mx: MatrixPhysics, t: float, fc: int, address: int, regs: list[int],
                values: list[int] | list[bool] | None) -> ExcCodes | None:
    """The contactor matrix's coils (1, 5, 15) and closed-feedback inputs (2), shared by the
    per-device matrix and the power unit: a coil write the interlock refuses is
    ILLEGAL_VALUE and changes nothing."""
    if fc == 2:
        _pack_bits(mx.closed, regs)
        return None
    if values is None:  # a read, or the read-back after a write
        _pack_bits(mx.coils, regs)
        return None
    bits = [bool(v) for v in values]
    if address + len(bits) > mx.modules * mx.guns:
        return ExcCodes.ILLEGAL_ADDRESS
    if not mx.write_coils(t, address, bits):
        return ExcCodes.ILLEGAL_VALUE
    _pack_bits(mx.coils, regs)
    # pymodbus merges ``values`` into regs after this; they are what we accepted.
    return None


def _unpack_bits(words: list[int], n: int) -> list[bool]:
    return [bool(words[i // 16] >> (i % 16) & 1) for i in range(n)]


def module_live_registers(mod: SimModule) -> list[int]:
    """Input registers 0..14 of a module."""
    regs = (
        encode_f32(mod.voltage_v)
        + encode_f32(mod.current_a)
        + encode_f32(mod.coolant_in_c)
        + encode_f32(mod.coolant_out_c)
        + encode_f32(mod.internal_c)
        + encode_f32(mod.available_current_a)
    )
    regs += [mod.status, mod.fault_code & 0xFFFF, mod.heartbeat & 0xFFFF]
    return regs


def module_holding_registers(mod: SimModule) -> list[int]:
    """Holding registers 100..106 of a module (fault reset reads 0)."""
    return (
        encode_f32(mod.voltage_setpoint_v)
        + encode_f32(mod.current_limit_a)
        + [int(mod.enabled), mod.watchdog_ms & 0xFFFF, 0]
    )


class _Devices:
    """Builds the pymodbus devices for one station and holds their actions."""

    def __init__(self, physics: StationPhysics,
                 command: Callable[[int, int, int], str | None] | None = None,
                 module_fc23: bool = True) -> None:
        self.physics = physics
        self.command = command or physics.apply_command
        self.module_fc23 = module_fc23

    # ---------------------------------------------------------------- module
    def module(self, index: int, unit: int) -> SimDevice:
        mod = self.physics.modules[index]
        p = mod.params
        rating = (
            encode_f32(p.rated_power_w)
            + encode_f32(p.rated_current_a)
            + encode_f32(p.min_voltage_v)
            + encode_f32(p.max_voltage_v)
        )
        physics = self.physics
        fc23 = self.module_fc23

        async def action(
            fc: int, start: int, address: int, count: int,
            regs: list[int], values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if index in physics.comm_lost:
                raise NoSuchIdException(f"module {index}: simulated communication loss")
            if fc in _BIT_FCS or (fc == _READ_WRITE and not fc23):
                return ExcCodes.ILLEGAL_ADDRESS if fc in _BIT_FCS else ExcCodes.ILLEGAL_FUNCTION
            if fc == 4:
                if address < MODULE_LIVE_COUNT:
                    regs[0:MODULE_LIVE_COUNT] = module_live_registers(mod)
                return None
            base = MODULE_HOLDING_START - start
            current = module_holding_registers(mod)
            if fc == _READ_HOLDING or (fc in _WRITE_HOLDING and values is None):
                regs[base : base + MODULE_HOLDING_COUNT] = current  # (read-back after a write)
                if start == MODULE_MIRROR_START and address < MODULE_MIRROR_COUNT:
                    regs[0:MODULE_MIRROR_COUNT] = module_live_registers(mod)  # the mirror
                return None
            if fc in _WRITE_HOLDING and values is not None:
                if address < MODULE_HOLDING_START:
                    return ExcCodes.ILLEGAL_ADDRESS  # the mirror is read-only
                merged = list(current)
                off = address - MODULE_HOLDING_START
                merged[off : off + len(values)] = [int(v) for v in values]
                h, s0 = ModuleHolding, MODULE_HOLDING_START
                refused = mod.write_holding(
                    physics.t,
                    voltage_setpoint_v=decode_f32(merged, h.VOLTAGE_SETPOINT - s0),
                    current_limit_a=decode_f32(merged, h.CURRENT_LIMIT - s0),
                    enable=merged[h.ENABLE - s0],
                    watchdog_ms=merged[h.WATCHDOG_MS - s0],
                    fault_reset=merged[h.FAULT_RESET - s0],
                )
                return ExcCodes.ILLEGAL_VALUE if refused else None
            return ExcCodes.ILLEGAL_FUNCTION

        return SimDevice(
            id=unit,
            simdata=(
                _dummy_bits(),
                _dummy_bits(),
                [*([SimData(MODULE_MIRROR_START, count=MODULE_MIRROR_COUNT,
                            datatype=DataType.REGISTERS)] if fc23 else []),
                 SimData(MODULE_HOLDING_START, count=MODULE_HOLDING_COUNT,
                         datatype=DataType.REGISTERS)],
                [
                    SimData(0, count=MODULE_LIVE_COUNT, datatype=DataType.REGISTERS),
                    SimData(MODULE_RATING_START, values=rating, datatype=DataType.REGISTERS),
                ],
            ),
            action=action,
        )

    # ---------------------------------------------------------------- matrix
    def matrix(self, unit: int) -> SimDevice:
        mx = self.physics.matrix
        n = mx.modules * mx.guns
        physics = self.physics

        async def action(
            fc: int, start: int, address: int, count: int,
            regs: list[int], values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if fc == 4:
                regs[0:3] = [mx.modules, mx.guns, mx.fault_word]
                return None
            if fc in MATRIX_BIT_FUNCTIONS:
                return matrix_bits(mx, physics.t, fc, address, regs, values)
            return ExcCodes.ILLEGAL_FUNCTION

        bits = [SimData(0, count=max(16, n), values=False, datatype=DataType.BITS)]
        return SimDevice(
            id=unit,
            simdata=(
                bits,
                [SimData(0, count=max(16, n), values=False, datatype=DataType.BITS)],
                _invalid(),
                [SimData(0, count=3, datatype=DataType.REGISTERS)],
            ),
            action=action,
        )

    # ---------------------------------------------------------------- meter
    def meter(self, gun: int, unit: int) -> SimDevice:
        meter = self.physics.meters[gun]
        physics = self.physics

        async def action(
            fc: int, start: int, address: int, count: int,
            regs: list[int], values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if gun in physics.meter_offline:
                raise NoSuchIdException(f"meter {gun}: simulated offline")
            if fc != 4:
                return ExcCodes.ILLEGAL_ADDRESS
            regs[MeterInput.VOLTAGE : MeterInput.VOLTAGE + 2] = encode_f32(meter.voltage_v)
            regs[MeterInput.CURRENT : MeterInput.CURRENT + 2] = encode_f32(meter.current_a)
            regs[MeterInput.POWER : MeterInput.POWER + 2] = encode_f32(meter.power_w)
            regs[MeterInput.ENERGY : MeterInput.ENERGY + 4] = encode_f64(meter.energy_wh)
            return None

        return SimDevice(
            id=unit,
            simdata=(
                _dummy_bits(),
                _dummy_bits(),
                _invalid(),
                [SimData(0, count=10, datatype=DataType.REGISTERS)],
            ),
            action=action,
        )

    # ---------------------------------------------------------------- control
    def control(self, unit: int) -> SimDevice:
        command = self.command

        async def action(
            fc: int, start: int, address: int, count: int,
            regs: list[int], values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if fc in (_READ_HOLDING, 6) and values is None:
                return None
            if fc == 16 and address == 0 and values is not None and len(values) == 3:
                cmd, target, value = (int(v) for v in values)
                return ExcCodes.ILLEGAL_VALUE if command(cmd, target, value) else None
            return ExcCodes.ILLEGAL_FUNCTION

        return SimDevice(
            id=unit,
            simdata=(
                _dummy_bits(),
                _dummy_bits(),
                [SimData(0, count=3, datatype=DataType.REGISTERS)],
                _invalid(),
            ),
            action=action,
        )


@dataclass(slots=True)
class SimPorts:
    """Where each simulated device listens (after ``start``)."""

    host: str
    modules: list[int] = field(default_factory=list)
    matrix: int = 0
    meters: int = 0
    control: int = 0
    gateway: int | None = None
    extra: dict[str, int] = field(default_factory=dict)  # add_devices name -> port


@dataclass(slots=True)
class _Extra:
    """Devices served on one more port (``StationSimulator.add_devices``)."""

    build: Callable[[], list[SimDevice]]
    port: int  # wanted port when the simulator has a base port (else any free one)
    info: dict[str, object]


class StationSimulator:
    """The simulated station served over Modbus TCP; in-process (tests) or from the CLI.

    ``realtime=True`` steps the physics from ``clock`` in a background task (``speed`` ×
    real time); with ``realtime=False`` time only moves when the caller calls ``advance(dt)``
    (or ``physics.step``), which is what deterministic tests and a simulated clock use.
    """

    def __init__(
        self,
        physics: StationPhysics | None = None,
        *,
        host: str = "127.0.0.1",
        base_port: int = 0,
        gateway_port: int | None = None,
        realtime: bool = True,
        speed: float = 1.0,
        tick_s: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
        module_fc23: bool = True,
    ) -> None:
        self.physics = physics or StationPhysics()
        self.host = host
        self.base_port = base_port
        self.gateway_port = gateway_port
        self.stepper = RealTimeStepper(self.physics, clock, tick_s, speed) if realtime else None
        self.ports = SimPorts(host)
        self._servers: list[ModbusTcpServer] = []
        self._devices = _Devices(self.physics, self._command, module_fc23)
        self._fixed_ports: list[int] | None = None
        self._extra: dict[str, _Extra] = {}
        self._commands: dict[int, Callable[[int, int], str | None]] = {}

    def add_devices(
        self, name: str, build: Callable[[], list[SimDevice]], port: int,
        info: Mapping[str, object] | None = None,
        commands: Mapping[int, Callable[[int, int], str | None]] | None = None,
    ) -> None:
        """Serve more simulated devices (e.g. sim/secc_server.py) on one more port.

        Call before ``start``. ``port`` applies when the simulator has a base port (else a
        free port is bound); ``info`` joins the port in ``describe()[name]``; ``commands``
        adds control-device commands, ``handler(target, value)`` → refusal text or None.
        """
        if self._servers:
            raise RuntimeError("add_devices must be called before start")
        self._extra[name] = _Extra(build, port, dict(info or {}))
        self._commands.update(commands or {})

    def _command(self, command: int, target: int, value: int) -> str | None:
        handler = self._commands.get(command)
        if handler is not None:
            return handler(target, value)
        return self.physics.apply_command(command, target, value)

    def advance(self, dt: float) -> None:
        """Step the physics by ``dt`` simulated seconds (external-clock mode)."""
        self.physics.step(dt)

    async def _serve(self, devices: SimDevice | list[SimDevice], port: int) -> int:
        server = ModbusTcpServer(devices, address=(self.host, port), ignore_missing_devices=True,
                                 identity=SIM_IDENTITY)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus' way of saying "address in use"
            raise OSError(f"could not listen on {self.host}:{port}: {exc}") from exc
        if server.transport is None:
            raise OSError(f"could not listen on {self.host}:{port}")
        self._servers.append(server)
        listener: Any = server.transport
        bound: int = listener.sockets[0].getsockname()[1]
        return bound

    def _port(self, i: int, laid_out: int) -> int:
        if self._fixed_ports is not None:
            return self._fixed_ports[i]
        return laid_out if self.base_port else 0

    async def start(self) -> SimPorts:
        """Listen on every device's port and start the real-time stepper (if any).

        Calling ``start`` again after ``stop`` reuses the same ports (simulated restart).
        """
        if self._servers:
            return self.ports
        ph = self.physics
        m_count, base = len(ph.modules), self.base_port
        d = self._devices
        try:
            ports = SimPorts(self.host)
            for i in range(m_count):
                ports.modules.append(await self._serve(d.module(i, 1),
                                                        self._port(i, module_port(base, i))))
            ports.matrix = await self._serve(d.matrix(1),
                                             self._port(m_count, matrix_port(base, m_count)))
            meters = [d.meter(g, meter_unit(g)) for g in range(ph.guns)]
            ports.meters = await self._serve(meters,
                                             self._port(m_count + 1, meter_port(base, m_count)))
            ports.control = await self._serve(d.control(1),
                                              self._port(m_count + 2, control_port(base, m_count)))
            if self.gateway_port is not None:
                if m_count > MAX_GATEWAY_MODULES or ph.guns > MAX_GATEWAY_GUNS:
                    raise ValueError("too many devices for the gateway unit-id layout")
                gw = [d.module(i, gateway_module_unit(i)) for i in range(m_count)]
                gw.append(d.matrix(GATEWAY_MATRIX_UNIT))
                gw += [d.meter(g, gateway_meter_unit(g)) for g in range(ph.guns)]
                fixed = self._fixed_ports
                gw_port = fixed[m_count + 3] if fixed is not None else self.gateway_port
                ports.gateway = await self._serve(gw, gw_port)
            for name, extra in self._extra.items():
                fixed_extra = self.ports.extra.get(name) if self._fixed_ports else None
                want = fixed_extra or (extra.port if self.base_port else 0)
                ports.extra[name] = await self._serve(extra.build(), want)
        except BaseException:
            await self.stop()
            raise
        self.ports = ports
        fixed = [*ports.modules, ports.matrix, ports.meters, ports.control]
        if ports.gateway is not None:
            fixed.append(ports.gateway)
        self._fixed_ports = fixed
        if self.stepper is not None:
            self.stepper.start()
        return ports

    async def stop(self) -> None:
        """Close every server and connection; stop the stepper. Safe to call twice."""
        if self.stepper is not None:
            await self.stepper.stop()
        servers, self._servers = self._servers, []
        for server in servers:
            await server.shutdown()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> StationSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return bool(self._servers)

    def hardware_config(self, link: LinkSettings | None = None,
                        gateway: bool = False) -> HardwareConfig:
        """Driver configuration for the ports actually bound (after ``start``)."""
        p, guns = self.ports, self.physics.guns
        if gateway:
            if p.gateway is None:
                raise RuntimeError("simulator has no gateway port")
            return HardwareConfig.gateway(p.host, p.gateway, len(p.modules), guns, link)
        return HardwareConfig(
            tuple(DeviceEndpoint(p.host, port, 1) for port in p.modules),
            DeviceEndpoint(p.host, p.matrix, 1),
            tuple(DeviceEndpoint(p.host, p.meters, meter_unit(g)) for g in range(guns)),
            link or LinkSettings(),
        )

    def describe(self) -> dict[str, object]:
        """The port layout as plain data (printed by the CLI)."""
        p = self.ports
        return {
            "host": p.host,
            "modules": {"ports": list(p.modules), "count": len(p.modules), "unit": 1},
            "matrix": {"port": p.matrix, "unit": 1},
            "meters": {"port": p.meters,
                       "units": [meter_unit(g) for g in range(self.physics.guns)]},
            "control": {"port": p.control, "unit": 1},
            "gateway": None if p.gateway is None else {
                "port": p.gateway,
                "module_units": [1, len(p.modules)],
                "matrix_unit": GATEWAY_MATRIX_UNIT,
                "meter_units": [gateway_meter_unit(g) for g in range(self.physics.guns)],
            },
            **{name: {"port": p.extra.get(name), **x.info} for name, x in self._extra.items()},
        }

