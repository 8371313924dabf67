"""The two CRCs of the manuals, one bit at a time, written from their definitions.

Independent of protocols.crc (table-driven): tests check the code under test and
build their literal frames with these.
"""

from __future__ import annotations

MODBUS_POLY_REFLECTED = 0xA001  # 0x8005 bit-reversed: CRC-16/MODBUS shifts right
CCITT_POLY = 0x1021
INIT = 0xFFFF                   # both start from all ones; neither has a final XOR


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS: reflected poly 0xA001, init 0xFFFF, no final XOR (HC-200 manual)."""
    crc = INIT
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ MODBUS_POLY_REFLECTED if crc & 1 else crc >> 1
    return crc


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, MSB first, no reflection, no final XOR."""
    crc = INIT
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CCITT_POLY if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def modbus_crc_bytes(data: bytes) -> bytes:
    """The CRC as a Modbus RTU frame carries it: low byte first."""
    return crc16_modbus(data).to_bytes(2, "little")


def ccitt_crc_bytes(data: bytes) -> bytes:
    """The CRC as an ES-4 frame carries it: high byte first."""
    return crc16_ccitt_false(data).to_bytes(2, "big")
