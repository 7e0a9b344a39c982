"""The Modbus register map: the contract between the drivers (power/) and the hardware (sim/).

Everything a driver or a simulator needs to agree on lives here, so the two can never drift:
register addresses, status and fault bits, the float encoding (IEEE-754, big-endian word order
"ABCD") and the simulator's port layout. ``docs/modbus-map.md`` documents the same table for
people; this module is what the code uses. Pure data and pure functions: no I/O.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from enum import IntEnum, IntFlag
from typing import Final

# --------------------------------------------------------------------------- encoding

_F32: Final = struct.Struct(">f")
_F64: Final = struct.Struct(">d")
_U16: Final = struct.Struct(">H")


class RegisterDecodeError(ValueError):
    """A register block could not be decoded (too short, wrong type, out of 0..65535)."""


def _check_regs(regs: Sequence[int], offset: int, count: int, what: str) -> None:
    if offset < 0 or len(regs) < offset + count:
        raise RegisterDecodeError(
            f"{what}: need {count} registers at offset {offset}, got {len(regs)} in total"
        )
    for i in range(offset, offset + count):
        value = regs[i]
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise RegisterDecodeError(f"{what}: register {i} holds {value!r}, not a u16")


def encode_f32(value: float) -> list[int]:
    """Encode a float32 as two registers, high word first (ABCD).

    Values beyond the float32 range become ±inf rather than raising, like a device would.
    """
    try:
        raw = _F32.pack(value)
    except OverflowError:
        raw = _F32.pack(math.copysign(math.inf, value))
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


def decode_f32(regs: Sequence[int], offset: int = 0) -> float:
    """Decode the float32 stored in ``regs[offset:offset+2]`` (ABCD)."""
    _check_regs(regs, offset, 2, "float32")
    value: float = _F32.unpack(_U16.pack(regs[offset]) + _U16.pack(regs[offset + 1]))[0]
    return value


def encode_f64(value: float) -> list[int]:
    """Encode a float64 as four registers, most significant word first (ABCD…)."""
    raw = _F64.pack(value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 8, 2)]


def decode_f64(regs: Sequence[int], offset: int = 0) -> float:
    """Decode the float64 stored in ``regs[offset:offset+4]``."""
    _check_regs(regs, offset, 4, "float64")
    raw = b"".join(_U16.pack(regs[offset + i]) for i in range(4))
    value: float = _F64.unpack(raw)[0]
    return value


def encode_u16(value: int) -> list[int]:
    """Encode an unsigned 16-bit value as one register (raises if out of range)."""
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"u16 out of range: {value}")
    return [int(value)]


def decode_u16(regs: Sequence[int], offset: int = 0) -> int:
    """Return ``regs[offset]`` after checking it is a u16."""
    _check_regs(regs, offset, 1, "u16")
    return int(regs[offset])


# --------------------------------------------------------------------------- power module


class ModuleInput(IntEnum):
    """Input registers (function code 4) of a power module."""

    VOLTAGE = 0  # f32, output voltage V
    CURRENT = 2  # f32, output current A
    COOLANT_IN = 4  # f32, coolant inlet °C
    COOLANT_OUT = 6  # f32, coolant outlet °C
    INTERNAL_TEMP = 8  # f32, internal (heat sink) °C
    AVAILABLE_CURRENT = 10  # f32, thermally derated maximum current now, A
    STATUS = 12  # u16, ModuleStatus bits
    FAULT_CODE = 13  # u16, ModuleFault code (0 = none)
    HEARTBEAT = 14  # u16, increments every internal tick, wraps at 65536
    RATED_POWER = 200  # f32, W
    RATED_CURRENT = 202  # f32, A
    MIN_VOLTAGE = 204  # f32, V
    MAX_VOLTAGE = 206  # f32, V


#: One read of input registers 0..14 covers every live value of a module.
MODULE_LIVE_START: Final = 0
MODULE_LIVE_COUNT: Final = 15
#: One read of input registers 200..207 covers the rating (static; read once per connect).
MODULE_RATING_START: Final = 200
MODULE_RATING_COUNT: Final = 8


class ModuleHolding(IntEnum):
    """Holding registers (function codes 3/6/16) of a power module."""

    VOLTAGE_SETPOINT = 100  # f32, V
    CURRENT_LIMIT = 102  # f32, A
    ENABLE = 104  # u16, 0/1
    WATCHDOG_MS = 105  # u16, ms; 0 disables the watchdog
    FAULT_RESET = 106  # u16, write 1


MODULE_HOLDING_START: Final = 100
MODULE_HOLDING_COUNT: Final = 7
#: The setpoint pair (voltage setpoint, current limit): what one poll echoes.
MODULE_SETPOINT_START: Final = 100
MODULE_SETPOINT_COUNT: Final = 4
#: Holding registers 0..14 mirror input registers 0..14 (read-only; a write is refused with
#: exception 2), so one read/write-multiple-registers request (function 23) writes the
#: setpoint pair and then reads the live values: one request per module and poll. A device
#: without function 23 answers exception 1, one without the mirror exception 2: the driver
#: then polls input registers 0..14 (function 4) as before (docs/modbus-map.md).
MODULE_MIRROR_START: Final = 0
MODULE_MIRROR_COUNT: Final = MODULE_LIVE_COUNT


class ModuleStatus(IntFlag):
    """Bits of the module status word (input register 12)."""

    READY = 1 << 0
    OUTPUT_ON = 1 << 1
    DERATING = 1 << 2
    FAULT = 1 << 3
    WATCHDOG_EXPIRED = 1 << 4
    OVER_TEMPERATURE = 1 << 5
    OVER_VOLTAGE = 1 << 6
    OVER_CURRENT = 1 << 7


class ModuleFault(IntEnum):
    """Fault codes of input register 13 (other values are vendor codes, reported as-is)."""

    NONE = 0
    OVER_TEMPERATURE = 1
    OVER_VOLTAGE = 2
    OVER_CURRENT = 3
    COOLANT_FLOW = 4
    INTERNAL = 5


# --------------------------------------------------------------------------- contactor matrix


class MatrixInput(IntEnum):
    """Input registers of the contactor matrix."""

    MODULES = 0  # u16, M
    GUNS = 1  # u16, G
    FAULT_WORD = 2  # u16, MatrixFault bits


MATRIX_INPUT_COUNT: Final = 3


class MatrixFault(IntFlag):
    """Bits of the matrix fault word (input register 2)."""

    WELDED_CONTACT = 1 << 0
    INTERLOCK_REFUSED = 1 << 1


def coil_index(module: int, gun: int, guns: int) -> int:
    """Coil / discrete-input index of the contactor "module ``module`` to gun ``gun``"."""
    if not 0 <= gun < guns or module < 0:
        raise ValueError(f"no contactor for module {module}, gun {gun} (guns={guns})")
    return module * guns + gun


#: Exception code the matrix answers a refused (interlocked) coil write with.
INTERLOCK_EXCEPTION_CODE: Final = 0x03  # ILLEGAL DATA VALUE


# --------------------------------------------------------------------------- DC meter


class MeterInput(IntEnum):
    """Input registers of a DC meter (one per gun)."""

    VOLTAGE = 0  # f32, V
    CURRENT = 2  # f32, A
    POWER = 4  # f32, W
    ENERGY = 6  # f64 (four registers), Wh delivered


METER_INPUT_COUNT: Final = 10


# --------------------------------------------------------------------------- simulator layout

#: Gateway layout: unit ids on one port (modules use 1..M).
GATEWAY_MATRIX_UNIT: Final = 240
GATEWAY_METER_UNIT0: Final = 241  # meter g is unit 241 + g
MAX_GATEWAY_MODULES: Final = 239
MAX_GATEWAY_GUNS: Final = 6


def module_port(base_port: int, module: int) -> int:
    """Port layout: module ``i`` listens on ``base + i`` with unit id 1."""
    return base_port + module


def matrix_port(base_port: int, modules: int) -> int:
    """Port layout: the matrix listens on ``base + M`` with unit id 1."""
    return base_port + modules


def meter_port(base_port: int, modules: int) -> int:
    """Port layout: all meters share ``base + M + 1``; meter ``g`` is unit id ``g + 1``."""
    return base_port + modules + 1


def control_port(base_port: int, modules: int) -> int:
    """Port layout: the simulator's fault-injection device on ``base + M + 2`` (sim only)."""
    return base_port + modules + 2


def meter_unit(gun: int) -> int:
    """Unit id of gun ``gun``'s meter on the meter port."""
    return gun + 1


def gateway_module_unit(module: int) -> int:
    """Gateway layout: module ``i`` is unit ``i + 1``."""
    return module + 1


def gateway_meter_unit(gun: int) -> int:
    """Gateway layout: meter ``g`` is unit ``241 + g``."""
    return GATEWAY_METER_UNIT0 + gun


# --------------------------------------------------------------------------- sim control device
# Not part of the hardware contract: the simulator's own fault-injection device.


class SimCommand(IntEnum):
    """Commands of the simulator's control device (holding registers 0..2: command, target, value).

    Writing the three registers in one request executes the command; ``target`` 0xFFFF means
    "all" where that makes sense.
    """

    MODULE_COMM_LOSS = 1
    MODULE_COMM_RESTORE = 2
    MODULE_FAULT = 3  # value = fault code
    MODULE_FAULT_CLEAR = 4
    PUMP_FAILURE = 5
    PUMP_RESTORE = 6
    WELD_CONTACT = 7  # target = coil index m*G+g
    UNWELD_CONTACT = 8
    METER_OFFLINE = 9
    METER_ONLINE = 10
    LOAD_VOLTAGE = 11  # target = gun, value = volts
    CHILLER_TEMP = 12  # value = °C


SIM_TARGET_ALL: Final = 0xFFFF
