"""Modbus RTU codec: pure functions from map values to bytes and back.

No I/O of its own (`read_frame` is handed a read function). The engine
(protocols.modbus) owns the port and the retry loop; everything it puts on the
wire or takes off it goes through these functions, so they can be checked byte
for byte and fuzzed without a port.

An ADU is `unit, function, data..., crc_lo, crc_hi`. Every reply the host can
get is at least `MIN_REPLY_LEN` bytes (an exception reply is exactly that), so
`read_frame` reads that much, decides the length from the function code, then
reads the rest: the length never depends on timing (pyserial's
inter_byte_timeout does not work on Linux).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from protocols.crc import crc16_modbus
from protocols.errors import (
    CorruptReply,
    DeviceRefused,
    LinkTimeout,
    ProtocolViolation,
    ValueRejected,
)
from protocols.map_modbus import STANDARD_EXCEPTIONS, ModbusRegister

FC_READ_HOLDING = 0x03
FC_READ_INPUT = 0x04
FC_WRITE_SINGLE = 0x06
FC_WRITE_MULTIPLE = 0x10
EXCEPTION_FLAG = 0x80

EXCEPTION_REPLY_LEN = 5  # unit, function|0x80, code, crc(2)
MIN_REPLY_LEN = EXCEPTION_REPLY_LEN  # the shortest normal reply (one register read) is 7
WRITE_REPLY_LEN = 8  # 0x06 echoes the request; 0x10 echoes address and count
# Limits of the Modbus application protocol itself (PDU at most 253 bytes).
MAX_READ_COUNT = 125
MAX_WRITE_COUNT = 123

INT16_RANGE = (-0x8000, 0x7FFF)
UINT16_RANGE = (0, 0xFFFF)
# Slack when checking that an engineering value sits on the raw grid (relative).
GRID_SLACK = 1e-6
# Scales whose reciprocal is this close to an integer are treated as exact
# decimal steps (0.1, 0.01, 0.0001), so 371 * 0.1 decodes as 37.1, not 37.1000...01.
RECIPROCAL_SLACK = 1e-9

_HEADER = struct.Struct(">BBHH")  # unit, function, address, count-or-value
_CRC = struct.Struct("<H")  # CRC goes low byte first


@dataclass(frozen=True, slots=True)
class Request:
    """One encoded request and what its normal reply must look like."""

    unit: int
    function: int
    address: int
    count: int
    adu: bytes
    reply_len: int
    label: str
    """Register name(s) involved, for error messages."""
    layout: struct.Struct | None = None
    """Reads: how the reply's register data unpacks (">hH...", signed per register)."""


def with_crc(frame: bytes) -> bytes:
    return frame + _CRC.pack(crc16_modbus(frame))


def _check_unit(unit: int) -> None:
    if not 0 <= unit <= 0xFF:
        raise ValueRejected(f"unit address {unit} is outside 0..255")


def read_request(unit: int, function: int, address: int, count: int, label: str = "",
                 signed: Sequence[bool] | None = None) -> Request:
    """0x03 (holding) or 0x04 (input) for `count` registers from `address`.

    `signed` marks the int16 registers of the run; the reply's values come back
    as raw register values (two's complement applied), unsigned by default.
    """
    _check_unit(unit)
    if function not in (FC_READ_HOLDING, FC_READ_INPUT):
        raise ValueRejected(f"{label}: function 0x{function:02X} is not a register read")
    if not 1 <= count <= MAX_READ_COUNT or not 0 <= address <= 0xFFFF - count + 1:
        raise ValueRejected(f"{label}: cannot read {count} registers from address {address}")
    if signed is not None and len(signed) != count:
        raise ValueRejected(f"{label}: {len(signed)} signedness flags for {count} registers")
    codes = "".join("h" if s else "H" for s in signed) if signed is not None else "H" * count
    adu = with_crc(_HEADER.pack(unit, function, address, count))
    return Request(unit, function, address, count, adu, 5 + 2 * count, label,
                   struct.Struct(">" + codes))


def write_single_request(unit: int, address: int, word: int, label: str = "") -> Request:
    """0x06: one holding register; `word` is the 16-bit pattern (0..0xFFFF)."""
    _check_unit(unit)
    if not 0 <= address <= 0xFFFF or not 0 <= word <= 0xFFFF:
        raise ValueRejected(f"{label}: cannot write word {word} at address {address}")
    adu = with_crc(_HEADER.pack(unit, FC_WRITE_SINGLE, address, word))
    return Request(unit, FC_WRITE_SINGLE, address, 1, adu, WRITE_REPLY_LEN, label)


def write_multiple_request(unit: int, address: int, words: Sequence[int],
                           label: str = "") -> Request:
    """0x10: consecutive holding registers from `address`."""
    _check_unit(unit)
    count = len(words)
    if not 1 <= count <= MAX_WRITE_COUNT or not 0 <= address <= 0xFFFF - count + 1:
        raise ValueRejected(f"{label}: cannot write {count} registers at address {address}")
    if any(not 0 <= w <= 0xFFFF for w in words):
        raise ValueRejected(f"{label}: register words must be 0..65535")
    pdu = (_HEADER.pack(unit, FC_WRITE_MULTIPLE, address, count)
           + bytes((2 * count,)) + struct.pack(f">{count}H", *words))
    return Request(unit, FC_WRITE_MULTIPLE, address, count, with_crc(pdu),
                   WRITE_REPLY_LEN, label)


def reply_length(request: Request, head: bytes) -> int:
    """Total length of the reply that starts with `head` (its first bytes, at least 2).

    Decided by the function code byte alone; the address is checked later, once
    the whole frame is in and its CRC says the bytes are what the device sent.
    """
    if len(head) < 2:
        raise CorruptReply(f"{request.label}: reply of {len(head)} bytes is truncated")
    function = head[1]
    if function == request.function:
        return request.reply_len
    if function == request.function | EXCEPTION_FLAG:
        return EXCEPTION_REPLY_LEN
    raise ProtocolViolation(f"{request.label}: reply has function 0x{function:02X}, "
                            f"expected 0x{request.function:02X}: {head.hex(' ')}")


def read_frame(request: Request, read: Callable[[int, float], bytes], deadline: float,
               read_some: Callable[[int, float], bytes] | None = None) -> bytes:
    """One reply, framed by length; `read(n, deadline)` returns up to n bytes.

    `read` is a Transport's read: fewer bytes than asked means the deadline
    passed. Asks for exactly the reply's length and never more, so a following
    frame is never swallowed. LinkTimeout when nothing came at all. With a
    Transport's `read_some` a reply that arrives in one piece costs one select and
    one read instead of a read loop for its head and another for the rest.
    """
    if read_some is None:
        head = read(MIN_REPLY_LEN, deadline)
    else:
        head = read_some(request.reply_len, deadline)
        while 0 < len(head) < MIN_REPLY_LEN and (more := read_some(
                MIN_REPLY_LEN - len(head), deadline)):
            head += more
    if len(head) >= MIN_REPLY_LEN and head[1] == request.function:  # the usual case
        frame = head
        if read_some is None:
            frame += read(request.reply_len - len(frame), deadline)
        else:
            while len(frame) < request.reply_len and (more := read_some(
                    request.reply_len - len(frame), deadline)):
                frame += more
        if len(frame) == request.reply_len:
            return frame
        raise CorruptReply(f"{request.label}: reply truncated at {len(frame)} of "
                           f"{request.reply_len} bytes: {frame.hex(' ')}")
    if not head:
        raise LinkTimeout(f"{request.label}: no reply to {request.adu.hex(' ')}")
    total = reply_length(request, head)
    if len(head) < min(total, MIN_REPLY_LEN):
        raise CorruptReply(f"{request.label}: reply truncated at {len(head)} of "
                           f"{total} bytes: {head.hex(' ')}")
    if len(head) > MIN_REPLY_LEN:
        # Only read_some can get here: an exception reply with bytes after it.
        raise CorruptReply(f"{request.label}: {len(head)} bytes where an exception reply "
                           f"has {MIN_REPLY_LEN}: {head.hex(' ')}")
    return head  # an exception reply is exactly MIN_REPLY_LEN


def exception_text(code: int, texts: Mapping[int, str]) -> str:
    return texts.get(code) or STANDARD_EXCEPTIONS.get(code) or "unknown exception code"


def parse_reply(request: Request, frame: bytes,
                exception_texts: Mapping[int, str] = STANDARD_EXCEPTIONS) -> tuple[int, ...]:
    """Validate a complete reply frame; the register values of a read, () for a write.

    Raises CorruptReply (CRC, truncation), ProtocolViolation (a well-formed frame
    that does not answer this request) or DeviceRefused (an exception reply).
    """
    n = len(frame)
    if n < MIN_REPLY_LEN:
        raise CorruptReply(f"{request.label}: reply of {n} bytes is truncated: {frame.hex(' ')}")
    # A frame followed by its own CRC (low byte first) checks to zero.
    if crc16_modbus(frame):
        raise CorruptReply(f"{request.label}: bad CRC in reply {frame.hex(' ')}")
    if frame[0] != request.unit:
        raise ProtocolViolation(f"{request.label}: reply from unit {frame[0]}, "
                                f"expected {request.unit}: {frame.hex(' ')}")
    function = frame[1]
    if function == request.function and n == request.reply_len:
        layout = request.layout
        if layout is not None:
            if frame[2] != 2 * request.count:
                raise ProtocolViolation(f"{request.label}: byte count {frame[2]}, expected "
                                        f"{2 * request.count}: {frame.hex(' ')}")
            return layout.unpack_from(frame, 3)
        # 0x06 must echo the request; 0x10 echoes the address and count.
        if frame[:6] != request.adu[:6]:
            raise ProtocolViolation(f"{request.label}: reply does not echo the request "
                                    f"{request.adu.hex(' ')}: {frame.hex(' ')}")
        return ()
    if function == request.function | EXCEPTION_FLAG:
        if n != EXCEPTION_REPLY_LEN:
            raise ProtocolViolation(f"{request.label}: exception reply of {n} bytes: "
                                    f"{frame.hex(' ')}")
        code = frame[2]
        raise DeviceRefused(request.label, code, exception_text(code, exception_texts))
    if function != request.function:
        raise ProtocolViolation(f"{request.label}: reply has function 0x{function:02X}, "
                                f"expected 0x{request.function:02X}: {frame.hex(' ')}")
    raise ProtocolViolation(f"{request.label}: reply of {n} bytes, expected "
                            f"{request.reply_len}: {frame.hex(' ')}")


# --- register values -------------------------------------------------------


def exact_divisor(scale: float) -> int | None:
    """1/scale when that is a whole number above 1 (decimal steps), else None."""
    inv = 1.0 / scale
    near = round(inv)
    return near if near > 1 and abs(inv - near) <= RECIPROCAL_SLACK * inv else None


def raw_range(reg_type: str) -> tuple[int, int]:
    return INT16_RANGE if reg_type == "int16" else UINT16_RANGE


def raw_from_word(word: int, signed: bool) -> int:
    return word - 0x10000 if signed and word & 0x8000 else word


def scaled(raw: int, scale: float) -> int | float:
    """Engineering value of a raw value: int when scale is 1, else float."""
    if scale == 1:
        return raw
    divisor = exact_divisor(scale)
    return raw / divisor if divisor is not None else raw * scale


def decode_register(reg: ModbusRegister, word: int) -> int | float:
    return scaled(raw_from_word(word, reg.type == "int16"), reg.scale)


def decode_bits(reg: ModbusRegister, word: int) -> dict[str, bool]:
    return {bit_name: bool(word >> bit & 1) for bit_name, bit in (reg.bits or {}).items()}


def encode_register(name: str, reg: ModbusRegister, value: object) -> int:
    """The 16-bit word for an engineering value; ValueRejected if the device can't take it.

    Never clips or rounds to a neighbour: a value off the raw grid, outside the
    register's accepted values or outside its 16-bit type is refused.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueRejected(f"{name}: value {value!r} is not a number")
    try:
        quotient = value / reg.scale
    except OverflowError:  # an int beyond any float
        quotient = math.inf
    if not math.isfinite(quotient):
        raise ValueRejected(f"{name}: value {value!r:.40} is not a finite number a "
                            f"{reg.type} register can hold")
    raw = round(quotient)
    if abs(scaled(raw, reg.scale) - value) > GRID_SLACK * max(1.0, abs(value)):
        raise ValueRejected(f"{name}: value {value:g} is not a multiple of the register's "
                            f"step {reg.scale:g}")
    if not reg.raw_in_range(raw):
        unit = f" {reg.unit}" if reg.unit else ""
        raise ValueRejected(f"{name}: value {value:g}{unit} (raw {raw}) is outside the "
                            f"accepted raw values {reg.describe_range()}"
                            + (f" (scale {reg.scale:g})" if reg.scale != 1 else ""))
    low, high = raw_range(reg.type)
    if not low <= raw <= high:
        raise ValueRejected(f"{name}: value {value:g} (raw {raw}) is outside the {reg.type} "
                            f"range {low}..{high}")
    return raw & 0xFFFF
