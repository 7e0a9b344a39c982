"""The SECC bridge register map: the contract between the vehicle link and the SECC board.

In a cabinet the SECC (ISO 15118 / DIN 70121 / MCS communication controller) is its own
board; a common integration is a Modbus TCP bridge with one unit per gun. This module is what
both sides (``controller/vehicle_modbus.py`` and ``sim/secc_server.py``) import, so they never
drift; ``docs/modbus-map.md`` documents the same table for people. Pure data and pure
functions, no I/O.

Scaling: currents in 0.1 A and voltages in 0.1 V as signed 32-bit integers, high word first
(1500 A × 10 does not fit 16 bits; signed so that a bridge sending a negative value is caught,
not read as 429 million amperes). ``0x7FFFFFFF`` and ``0x80000000`` are "not available"
sentinels, which a live vehicle status must never carry. State of charge in 0.1 %, one
register, ``0xFFFF`` = unknown. The id token is ASCII, two characters per register (high byte
first), NUL-padded; all NUL = no token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final


class SeccDecodeError(ValueError):
    """A register block of the SECC bridge is malformed; the message names the register."""


class SeccInput(IntEnum):
    """Input registers (function code 4) of one gun's SECC bridge unit."""

    STATUS = 0  # u16, SeccStatus bits
    HEARTBEAT = 1  # u16, +1 on every bridge tick (a frozen value = a hung bridge), wraps
    EV_MAX_CURRENT = 2  # s32, 0.1 A
    EV_MAX_VOLTAGE = 4  # s32, 0.1 V
    TARGET_VOLTAGE = 6  # s32, 0.1 V
    PRESENT_VOLTAGE = 8  # s32, 0.1 V (battery voltage the EV reports)
    REQUEST_CURRENT = 10  # s32, 0.1 A
    SOC = 12  # u16, 0.1 %, 0xFFFF unknown
    ID_TOKEN = 13  # 10 registers, 20 ASCII characters, NUL-padded


SECC_INPUT_START: Final = 0
SECC_INPUT_COUNT: Final = 23  # one read covers every live value
ID_TOKEN_REGS: Final = 10
ID_TOKEN_CHARS: Final = 2 * ID_TOKEN_REGS


class SeccHolding(IntEnum):
    """Holding registers (function codes 3/6/16) of one gun's SECC bridge unit."""

    COMMAND = 100  # u16, write SeccCommand (edge: each write is one command); reads the last
    AVAILABLE_CURRENT = 101  # s32, 0.1 A: what the station can give now
    AVAILABLE_VOLTAGE = 103  # s32, 0.1 V


SECC_HOLDING_START: Final = 100
SECC_HOLDING_COUNT: Final = 5


class SeccStatus(IntFlag):
    """Bits of the status word (input register 0); other bits are reserved and must be 0."""

    PLUGGED = 1 << 0
    STOP_REQUESTED = 1 << 1
    ENERGY_TRANSFER = 1 << 2  # the bridge accepted START and has not stopped since


class SeccCommand(IntEnum):
    """Values of holding register 100."""

    NONE = 0
    START = 1  # the station is ready to deliver energy (after cable check and pre-charge)
    STOP = 2  # the station ends the energy transfer


class SeccSimCommand(IntEnum):
    """Simulator control-device commands for the SECC bridges (not part of the hardware
    contract); same (command, target = gun, value) write as ``power.modbus_map.SimCommand``."""

    VEHICLE_PLUG = 20
    VEHICLE_UNPLUG = 21
    VEHICLE_STOP_REQUEST = 22
    SECC_FREEZE = 23  # the bridge keeps answering but its heartbeat stops
    SECC_RESUME = 24


#: Simulator layout: the SECC bridges of all guns share ``base + M + 3``, gun g is unit g + 1.
def secc_port(base_port: int, modules: int) -> int:
    return base_port + modules + 3


def secc_unit(gun: int) -> int:
    return gun + 1


NA_HIGH: Final = 0x7FFFFFFF
NA_LOW: Final = -0x80000000
SOC_UNKNOWN: Final = 0xFFFF
MAX_CURRENT_A: Final = 6000.0  # beyond any MCS cable (3000 A): garbage
MAX_VOLTAGE_V: Final = 2000.0  # beyond MCS (1250 V): garbage
_KNOWN_BITS: Final = int(SeccStatus.PLUGGED | SeccStatus.STOP_REQUESTED
                         | SeccStatus.ENERGY_TRANSFER)

_FIELDS: Final = (
    ("ev_max_current_a", SeccInput.EV_MAX_CURRENT, MAX_CURRENT_A, "A"),
    ("ev_max_voltage_v", SeccInput.EV_MAX_VOLTAGE, MAX_VOLTAGE_V, "V"),
    ("target_voltage_v", SeccInput.TARGET_VOLTAGE, MAX_VOLTAGE_V, "V"),
    ("present_voltage_v", SeccInput.PRESENT_VOLTAGE, MAX_VOLTAGE_V, "V"),
    ("request_a", SeccInput.REQUEST_CURRENT, MAX_CURRENT_A, "A"),
)


@dataclass(frozen=True, slots=True)
class SeccReading:
    """One gun's live SECC values (``controller.vehicle.VehicleStatus`` fields plus the
    bridge's own heartbeat and energy-transfer flag; power/ does not import controller/)."""

    plugged: bool = False
    ev_max_current_a: float = 0.0
    ev_max_voltage_v: float = 0.0
    target_voltage_v: float = 0.0
    present_voltage_v: float = 0.0
    request_a: float = 0.0
    soc_pct: float | None = None
    stop_requested: bool = False
    id_token: str | None = None
    heartbeat: int = 0
    energy_transfer: bool = False


# --------------------------------------------------------------------------- scalars


def encode_s32(value: int) -> list[int]:
    """A signed 32-bit integer as two registers, high word first."""
    if not -0x80000000 <= value <= 0x7FFFFFFF:
        raise ValueError(f"s32 out of range: {value}")
    raw = value & 0xFFFFFFFF
    return [raw >> 16, raw & 0xFFFF]


def decode_s32(regs: Sequence[int], offset: int = 0) -> int:
    raw = (regs[offset] << 16) | regs[offset + 1]
    return raw - (1 << 32) if raw & 0x80000000 else raw


def encode_deci(value: float, what: str = "value") -> list[int]:
    """A non-negative quantity in 0.1 units as s32 (raises for negative / non-finite)."""
    if not value >= 0.0 or value * 10 >= NA_HIGH:
        raise ValueError(f"{what} = {value!r}: not encodable (0 … {NA_HIGH / 10:.0f})")
    return encode_s32(round(value * 10))


def _check_u16(regs: Sequence[int]) -> None:
    for i, value in enumerate(regs):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
            raise SeccDecodeError(f"SECC register {i} holds {value!r}, not a u16")


def _deci(regs: Sequence[int], name: str, reg: int, limit: float, unit: str) -> float:
    raw = decode_s32(regs, reg)
    where = f"SECC input register {reg}..{reg + 1} ({name})"
    if raw in (NA_HIGH, NA_LOW):
        raise SeccDecodeError(f"{where}: 'not available' sentinel 0x{raw & 0xFFFFFFFF:08X}")
    value = raw / 10.0
    if value < 0:
        raise SeccDecodeError(f"{where}: {value} {unit} is negative")
    if value > limit:
        raise SeccDecodeError(f"{where}: {value} {unit} exceeds the plausible {limit} {unit}")
    return value


# --------------------------------------------------------------------------- id token


def encode_token(token: str | None) -> list[int]:
    """The id token as 10 registers (raises for non-ASCII or more than 20 characters)."""
    text = token or ""
    if len(text) > ID_TOKEN_CHARS or not all(0x20 <= ord(c) <= 0x7E for c in text):
        raise ValueError(f"id token {text!r}: need at most {ID_TOKEN_CHARS} printable ASCII")
    raw = text.encode("ascii").ljust(ID_TOKEN_CHARS, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, ID_TOKEN_CHARS, 2)]


def decode_token(regs: Sequence[int], offset: int = SeccInput.ID_TOKEN) -> str | None:
    """Printable ASCII up to the first NUL; everything after it must be NUL too."""
    raw = b"".join(int(r).to_bytes(2, "big") for r in regs[offset : offset + ID_TOKEN_REGS])
    text, _, pad = raw.partition(b"\0")
    bad = next((i for i, b in enumerate(text) if not 0x20 <= b <= 0x7E), None)
    if bad is None and pad.strip(b"\0"):
        bad = len(text) + 1 + next(i for i, b in enumerate(pad) if b)
    if bad is not None:
        reg = offset + bad // 2
        raise SeccDecodeError(f"SECC input register {reg} (id_token): byte 0x{raw[bad]:02X} is "
                              "not printable ASCII (or follows the NUL terminator)")
    return text.decode("ascii") or None


# --------------------------------------------------------------------------- status block


def encode_status(r: SeccReading) -> list[int]:
    """Input registers 0..22 for ``r`` (what a bridge serves)."""
    word = SeccStatus(0)
    if r.plugged:
        word |= SeccStatus.PLUGGED
    if r.stop_requested:
        word |= SeccStatus.STOP_REQUESTED
    if r.energy_transfer:
        word |= SeccStatus.ENERGY_TRANSFER
    regs = [int(word), r.heartbeat & 0xFFFF]
    for name, _reg, _limit, _unit in _FIELDS:
        regs += encode_deci(float(getattr(r, name)), name)
    soc = r.soc_pct
    regs.append(SOC_UNKNOWN if soc is None else round(min(max(soc, 0.0), 100.0) * 10))
    regs += encode_token(r.id_token)
    return regs


def decode_status(regs: Sequence[int]) -> SeccReading:
    """Input registers 0..22 decoded; ``SeccDecodeError`` names the malformed field."""
    if len(regs) != SECC_INPUT_COUNT:
        raise SeccDecodeError(f"SECC input registers: expected {SECC_INPUT_COUNT}, "
                              f"got {len(regs)}")
    _check_u16(regs)
    word = regs[SeccInput.STATUS]
    if word & ~_KNOWN_BITS:
        raise SeccDecodeError(f"SECC input register 0 (status): reserved bits set in "
                              f"0x{word:04X}")
    values = {name: _deci(regs, name, reg, limit, unit) for name, reg, limit, unit in _FIELDS}
    soc_raw = regs[SeccInput.SOC]
    if soc_raw != SOC_UNKNOWN and soc_raw > 1000:
        raise SeccDecodeError(f"SECC input register {int(SeccInput.SOC)} (soc_pct): "
                              f"{soc_raw / 10} % is over 100 %")
    return SeccReading(
        plugged=bool(word & SeccStatus.PLUGGED),
        stop_requested=bool(word & SeccStatus.STOP_REQUESTED),
        soc_pct=None if soc_raw == SOC_UNKNOWN else soc_raw / 10.0,
        id_token=decode_token(regs),
        heartbeat=regs[SeccInput.HEARTBEAT],
        energy_transfer=bool(word & SeccStatus.ENERGY_TRANSFER),
        **values,
    )


# --------------------------------------------------------------------------- holding block


def encode_available(current_a: float, voltage_v: float) -> list[int]:
    """Holding registers 101..104 (negative or non-finite inputs are clamped to 0)."""
    a = current_a if current_a == current_a and current_a > 0 else 0.0
    v = voltage_v if voltage_v == voltage_v and voltage_v > 0 else 0.0
    return (encode_deci(min(a, MAX_CURRENT_A), "available current")
            + encode_deci(min(v, MAX_VOLTAGE_V), "available voltage"))


def decode_available(regs: Sequence[int], offset: int = 0) -> tuple[float, float]:
    """(current A, voltage V) from four registers; ``SeccDecodeError`` when out of range."""
    if len(regs) < offset + 4:
        raise SeccDecodeError(f"SECC available current/voltage: need 4 registers, "
                              f"got {len(regs) - offset}")
    _check_u16(regs)
    out = []
    for i, (name, limit) in enumerate((("available current", MAX_CURRENT_A),
                                       ("available voltage", MAX_VOLTAGE_V))):
        value = decode_s32(regs, offset + 2 * i) / 10.0
        if not 0.0 <= value <= limit:
            reg = SeccHolding.AVAILABLE_CURRENT + 2 * i
            raise SeccDecodeError(f"SECC holding register {reg} ({name}): {value} outside "
                                  f"0 … {limit}")
        out.append(value)
    return out[0], out[1]
