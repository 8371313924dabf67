"""CRC functions against catalogue check values, known frames and bitwise references."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.crc import (
    CRC16_CCITT_FALSE_CHECK,
    CRC16_MODBUS_CHECK,
    crc16_ccitt_false,
    crc16_modbus,
    crc16_modbus_states,
)
from tests.support.crc import crc16_ccitt_false as bitwise_ccitt_false
from tests.support.crc import crc16_modbus as bitwise_modbus

CHECK_INPUT = b"123456789"  # the input of every CRC catalogue's "check" value


def test_catalogue_check_values() -> None:
    assert crc16_modbus(CHECK_INPUT) == 0x4B37 == CRC16_MODBUS_CHECK
    assert crc16_ccitt_false(CHECK_INPUT) == 0x29B1 == CRC16_CCITT_FALSE_CHECK


def test_empty_input_is_the_initial_value() -> None:
    assert crc16_modbus(b"") == 0xFFFF
    assert crc16_ccitt_false(b"") == 0xFFFF


@pytest.mark.parametrize("frame", [
    "01 04 00 00 00 06 70 08",  # read input registers 0..5 of unit 1
    "01 03 00 00 00 0A C5 CD",  # read holding registers 0..9 of unit 1
    "11 03 00 6B 00 03 76 87",  # Modbus application protocol spec example (unit 17)
    "01 06 00 01 00 03 98 0B",  # write single register 1 = 3
    "01 10 00 01 00 02 04 00 0A 01 02 92 30",  # spec example: write 2 registers from 1
])
def test_known_modbus_frames(frame: str) -> None:
    raw = bytes.fromhex(frame)
    body, crc = raw[:-2], raw[-2:]
    assert crc16_modbus(body).to_bytes(2, "little") == crc  # low byte first on the wire
    # A frame with its CRC appended checks to zero: the usual receiver shortcut.
    assert crc16_modbus(raw) == 0


def test_known_ccitt_false_value() -> None:
    assert crc16_ccitt_false(b"A") == 0xB915


@given(st.binary(max_size=300))
def test_tables_match_bitwise_references(data: bytes) -> None:
    assert crc16_modbus(data) == bitwise_modbus(data)
    assert crc16_ccitt_false(data) == bitwise_ccitt_false(data)


def test_c_and_table_ccitt_agree_on_the_check_value() -> None:
    from protocols.crc import CRC16_CCITT_FALSE_CHECK, crc16_ccitt_false, crc16_ccitt_false_table
    assert crc16_ccitt_false(b"123456789") == crc16_ccitt_false_table(b"123456789") \
        == CRC16_CCITT_FALSE_CHECK
    for n in range(64):
        data = bytes(range(n))
        assert crc16_ccitt_false(data) == crc16_ccitt_false_table(data)


@given(st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_running_modbus_crc_continues_the_whole_crc(head: int, tail: bytes) -> None:
    data = head.to_bytes(2, "little") + tail
    states = crc16_modbus_states(data)
    assert states == [bitwise_modbus(data[:n]) for n in range(1, len(data) + 1)]
    middle = len(data) // 2
    assert crc16_modbus_states(data[middle:], crc16_modbus(data[:middle])) == states[middle:]
    # A body followed by its own CRC (low byte first) ends at 0.
    assert crc16_modbus_states(data + crc16_modbus(data).to_bytes(2, "little"))[-1] == 0
