"""Register map of the power-unit layout: one device in front of every module.

Pooling cabinets put a power-unit controller between the cabinet PC and the modules: it talks
to them on its own internal bus and exposes all of them as one Modbus device, so that a whole
control cycle is a handful of requests instead of a hundred (``docs/modbus-map.md``, "Power
unit"). Values are scaled integers so that twelve modules fit one read of 120 registers:

- volts and amperes in 0.1 units (u16, or s16 where a small negative reading is possible),
- temperatures in 0.1 °C (s16),
- the rating as f32 (read once per connection).

Both the driver (``power/power_unit.py``) and the simulator (``sim/power_unit.py``) import
this module, so they cannot drift. Pure data and pure functions: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import IntEnum, IntFlag
from typing import Final

# --------------------------------------------------------------------------- header (fc 4)


class UnitHeader(IntEnum):
    """Input registers 0..7: the unit's own state."""

    MODULES = 0  # u16, M
    GUNS = 1  # u16, G
    CYCLE = 2  # u16, +1 per internal-bus refresh of the module block, wraps
    MATRIX_FAULT = 3  # u16, MatrixFault bits (docs/modbus-map.md, contactor matrix)
    UNIT_STATUS = 4  # u16, UnitStatus bits
    LAYOUT_VERSION = 5  # u16, LAYOUT_VERSION


HEADER_START: Final = 0
HEADER_COUNT: Final = 8
LAYOUT_VERSION: Final = 1

#: Right after the header, the matrix image as packed words, so that one read returns the
#: header and the whole matrix: ``W = ceil(M·G / 16)`` words of coils (bit i of word k is
#: coil 16 k + i) from register 8, then ``W`` words of feedback (discrete inputs).
MATRIX_IMAGE_START: Final = HEADER_COUNT


def image_words(modules: int, guns: int) -> int:
    """``W``: words of one matrix image (coils or feedback)."""
    return (modules * guns + 15) // 16


def head_count(modules: int, guns: int) -> int:
    """Registers from 0 through the end of the feedback image."""
    return HEADER_COUNT + 2 * image_words(modules, guns)


def pack_bits(bits: Sequence[bool]) -> list[int]:
    """Bits to words, bit 0 of word 0 first."""
    words = [0] * ((len(bits) + 15) // 16)
    for i, b in enumerate(bits):
        if b:
            words[i // 16] |= 1 << (i % 16)
    return words


def unpack_bits(words: Sequence[int], n: int) -> list[bool]:
    return [bool(words[i // 16] >> (i % 16) & 1) for i in range(n)]


class UnitStatus(IntFlag):
    """Bits of the unit status word (input register 4)."""

    BUS_OK = 1 << 0  # the internal bus to the modules runs


# --------------------------------------------------------------------------- module block (fc 4)


class ModuleSlot(IntEnum):
    """Offsets inside one module's slot of the live block (stride ``MODULE_STRIDE``)."""

    VOLTAGE = 0  # u16, 0.1 V
    CURRENT = 1  # s16, 0.1 A (small negative = measurement offset)
    COOLANT_IN = 2  # s16, 0.1 °C
    COOLANT_OUT = 3  # s16, 0.1 °C
    INTERNAL_TEMP = 4  # s16, 0.1 °C
    AVAILABLE_CURRENT = 5  # u16, 0.1 A: thermally derated maximum now
    STATUS = 6  # u16, ModuleStatus bits (as the one-device-per-module map)
    FAULT_CODE = 7  # u16, ModuleFault code
    HEARTBEAT = 8  # u16, the module's own heartbeat
    LINK = 9  # u16, 0 = module answers on the internal bus; else the unit's error count


LIVE_START: Final = 200
MODULE_STRIDE: Final = 10
#: Largest read the Modbus specification allows is 125 registers: 12 whole slots per read.
MAX_READ: Final = 125
MODULES_PER_READ: Final = MAX_READ // MODULE_STRIDE

#: Ratings (f32, as the per-module map's 200..207): module m at RATING_START + 8 m.
RATING_START: Final = 5000
RATING_STRIDE: Final = 8
RATINGS_PER_READ: Final = MAX_READ // RATING_STRIDE

# --------------------------------------------------------------------------- holding (fc 3/16)

#: Output block: module m's voltage setpoint (0.1 V) at OUTPUT_START + 2 m, its current limit
#: (0.1 A) at OUTPUT_START + 2 m + 1. Writing a module's pair feeds its watchdog.
OUTPUT_START: Final = 1000
OUTPUT_STRIDE: Final = 2
#: Largest write (fc 16) is 123 registers: 61 modules' pairs per request.
MAX_WRITE: Final = 123
OUTPUTS_PER_WRITE: Final = MAX_WRITE // OUTPUT_STRIDE


class ControlSlot(IntEnum):
    """Control blocks, one register per module each: module m's at ``slot + m`` (u16).

    One block per field (not one slot per module), so that "disable every module" or
    "watchdog 500 ms everywhere" is one contiguous write of exactly the asked-for registers.
    """

    ENABLE = 3000  # 0/1
    WATCHDOG_MS = 3200  # 0 disables
    FAULT_RESET = 3400  # write 1 (reads 0)


CONTROL_BLOCK: Final = 200  # registers per control block (≥ MAX_MODULES)


def control_address(slot: ControlSlot, module: int) -> int:
    return int(slot) + module


# Coils (fc 1/5/15) and discrete inputs (fc 2) at m·G + g: as the contactor-matrix map.

MAX_MODULES: Final = 192  # 192 × 10 live registers end below RATING_START; header + images
#: (≤ 8 + 2 × 72 registers for 192 × 6 contactors) end below LIVE_START
MAX_COILS_PER_WRITE: Final = 1968  # Modbus limit of fc 15

# --------------------------------------------------------------------------- scaling


def _round(value: float, scale: float) -> int:
    return math.floor(value * scale + 0.5)


def to_u16(value: float, scale: float = 10.0) -> int:
    """Encode ``value`` as a scaled u16; ``ValueError`` when it does not fit."""
    if not math.isfinite(value):
        raise ValueError(f"{value} is not finite")
    raw = _round(value, scale)
    if not 0 <= raw <= 0xFFFF:
        raise ValueError(f"{value} does not fit a u16 at scale {scale}")
    return raw


def to_s16(value: float, scale: float = 10.0) -> int:
    """Encode ``value`` as a scaled two's-complement s16 register (clamped like a device)."""
    if not math.isfinite(value):
        return 0x8000  # the "not available" pattern: decodes as -3276.8
    raw = max(-0x8000, min(0x7FFF, _round(value, scale)))
    return raw & 0xFFFF


def from_u16(reg: int, scale: float = 10.0) -> float:
    return reg / scale


def from_s16(reg: int, scale: float = 10.0) -> float:
    return (reg - 0x10000 if reg & 0x8000 else reg) / scale


def head_reads(modules: int, guns: int) -> list[tuple[int, int]]:
    """The reads (address, count ≤ 125) of the header and both matrix images."""
    total = head_count(modules, guns)
    return [(a, min(MAX_READ, total - a)) for a in range(0, total, MAX_READ)]


def live_reads(modules: int) -> list[tuple[int, int, int]]:
    """The reads that cover the live block: (first module, address, count), each ≤ 125."""
    out = []
    for first in range(0, modules, MODULES_PER_READ):
        n = min(MODULES_PER_READ, modules - first)
        out.append((first, LIVE_START + first * MODULE_STRIDE, n * MODULE_STRIDE))
    return out


def rating_reads(modules: int) -> list[tuple[int, int, int]]:
    """The reads that cover the ratings: (first module, address, count), each ≤ 125."""
    out = []
    for first in range(0, modules, RATINGS_PER_READ):
        n = min(RATINGS_PER_READ, modules - first)
        out.append((first, RATING_START + first * RATING_STRIDE, n * RATING_STRIDE))
    return out


def output_registers(pairs: Sequence[tuple[float, float]]) -> list[int]:
    """Registers of consecutive modules' (voltage V, current A) pairs."""
    regs: list[int] = []
    for v, a in pairs:
        regs += [to_u16(v), to_u16(a)]
    return regs
