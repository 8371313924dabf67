"""CRC functions of the Modbus RTU and framed binary families.

Pure functions, table-driven. The simulator may use them too: they are checked
against the published catalogue check values (CRC of b"123456789").
"""

from __future__ import annotations

import binascii

CRC16_MODBUS_CHECK = 0x4B37
CRC16_CCITT_FALSE_CHECK = 0x29B1


def _modbus_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


def _ccitt_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        table.append(crc)
    return table


_MODBUS = _modbus_table()
_CCITT = _ccitt_table()


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS: reflected poly 0xA001, init 0xFFFF. Sent low byte first."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _MODBUS[(crc ^ b) & 0xFF]
    return crc


def crc16_modbus_states(data: bytes | bytearray, crc: int = 0xFFFF) -> list[int]:
    """The CRC-16/MODBUS after each byte of `data`, continuing from `crc`.

    A receiver that frames by CRC extends these as bytes arrive instead of
    recomputing whole CRCs; a body followed by its own CRC ends at 0.
    """
    states = []
    for b in data:
        crc = (crc >> 8) ^ _MODBUS[(crc ^ b) & 0xFF]
        states.append(crc)
    return states


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, no final XOR.

    binascii.crc_hqx is this CRC in C (about 13x faster than the table loop, which
    stays as `crc16_ccitt_false_table` to check it against).
    """
    return binascii.crc_hqx(data, 0xFFFF)


def crc16_ccitt_false_table(data: bytes) -> int:
    """The same CRC, table-driven in Python: an independent check of crc_hqx."""
    crc = 0xFFFF
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CCITT[((crc >> 8) ^ b) & 0xFF]
    return crc
