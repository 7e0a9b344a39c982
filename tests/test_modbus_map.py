"""Register encoding (float32/float64 ABCD) and the layout helpers."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from power.modbus_map import (
    RegisterDecodeError,
    coil_index,
    control_port,
    decode_f32,
    decode_f64,
    decode_u16,
    encode_f32,
    encode_f64,
    encode_u16,
    matrix_port,
    meter_port,
    meter_unit,
    module_port,
)


def test_f32_is_big_endian_word_order() -> None:
    assert encode_f32(1.0) == [0x3F80, 0x0000]
    assert encode_f32(-2.5) == [0xC020, 0x0000]
    # ABCD: the high word holds the sign/exponent bytes A B.
    raw = struct.pack(">f", 123.456)
    regs = encode_f32(123.456)
    assert regs == [int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:], "big")]
    assert decode_f32([0x43F7, 0x3A5E]) == pytest.approx(494.4559, rel=1e-6)


def test_f64_four_registers_msw_first() -> None:
    assert encode_f64(1.0) == [0x3FF0, 0, 0, 0]
    assert decode_f64([0x3FF0, 0, 0, 0]) == 1.0
    assert decode_f64([0, 0, *encode_f64(12345.678)], offset=2) == 12345.678


@given(st.floats(width=32, allow_nan=False))
def test_f32_round_trip(x: float) -> None:
    assert decode_f32(encode_f32(x)) == x


@given(st.floats(allow_nan=False))
def test_f64_round_trip(x: float) -> None:
    assert decode_f64(encode_f64(x)) == x


def test_nan_and_overflow() -> None:
    assert math.isnan(decode_f32(encode_f32(math.nan)))
    assert decode_f32(encode_f32(1e300)) == math.inf
    assert decode_f32(encode_f32(-1e300)) == -math.inf


def test_decode_errors_name_the_problem() -> None:
    with pytest.raises(RegisterDecodeError, match="need 2 registers"):
        decode_f32([1])
    with pytest.raises(RegisterDecodeError, match="need 4 registers at offset 2"):
        decode_f64([0, 0, 0, 0], offset=2)
    with pytest.raises(RegisterDecodeError, match="not a u16"):
        decode_f32([70000, 0])
    with pytest.raises(RegisterDecodeError, match="not a u16"):
        decode_u16([-1])
    assert decode_u16([7, 65535], 1) == 65535
    assert encode_u16(65535) == [65535]
    with pytest.raises(ValueError):
        encode_u16(65536)


def test_coil_index_and_layout() -> None:
    assert coil_index(0, 0, 2) == 0
    assert coil_index(5, 1, 2) == 11
    with pytest.raises(ValueError):
        coil_index(1, 2, 2)
    assert module_port(15020, 3) == 15023
    assert matrix_port(15020, 48) == 15068
    assert meter_port(15020, 48) == 15069
    assert control_port(15020, 48) == 15070
    assert meter_unit(0) == 1 and meter_unit(1) == 2
