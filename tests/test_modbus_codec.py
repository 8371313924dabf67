"""The Modbus RTU codec, byte for byte, without a port.

Frames are literals worked out from the HC-200 serial interface document (unit
1; input registers 0..9, holding registers 0..9); every literal's CRC is first
checked against a bit-by-bit CRC written here, independent of protocols.crc.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import (
    CorruptReply,
    DeviceRefused,
    LinkTimeout,
    ProtocolError,
    ProtocolViolation,
    ValueRejected,
)
from protocols.map_modbus import STANDARD_EXCEPTIONS, ModbusRegister
from protocols.modbus_codec import (
    EXCEPTION_REPLY_LEN,
    FC_READ_HOLDING,
    FC_READ_INPUT,
    Request,
    decode_bits,
    decode_register,
    encode_register,
    parse_reply,
    read_frame,
    read_request,
    reply_length,
    with_crc,
    write_multiple_request,
    write_single_request,
)
from tests.support.crc import modbus_crc_bytes as bitwise_crc


def frame(text: str) -> bytes:
    raw = bytes.fromhex(text)
    assert bitwise_crc(raw[:-2]) == raw[-2:], f"bad CRC in test literal {text}"
    return raw


# Read input registers 0..5 (pad_temp, drive, status, elapsed, remaining, fault_code):
# 37.2 degC, drive -25 %, output enabled + pad connected, 120 s, 480 s, no fault.
READ_INPUT_REQ = frame("01 04 00 00 00 06 70 08")
READ_INPUT_REP = frame("01 04 0C 01 74 FF E7 00 03 00 78 01 E0 00 00 9E 82")
READ_INPUT_WORDS = (0x0174, 0xFFE7, 0x0003, 0x0078, 0x01E0, 0x0000)
# Read holding registers 0..2: setpoint 37.0 degC, run_time 600 s, output_enable 0.
READ_HOLDING_REQ = frame("01 03 00 00 00 03 05 CB")
READ_HOLDING_REP = frame("01 03 06 01 72 02 58 00 00 98 C4")
# Write setpoint (holding 0) = 40.0 degC -> raw 400 = 0x0190; the reply echoes it.
WRITE_SETPOINT = frame("01 06 00 00 01 90 88 36")
# Write cal_offset (holding 6) = -1.5 degC -> raw -150 = 0xFF6A.
WRITE_CAL_OFFSET = frame("01 06 00 06 FF 6A A8 14")
# Write run_time 605, output_enable 0, watchdog 2 (holding 1..3) with 0x10.
WRITE_MANY_REQ = frame("01 10 00 01 00 03 06 02 5D 00 00 00 02 DA AB")
WRITE_MANY_REP = frame("01 10 00 01 00 03 D1 C8")
# Exception replies: 0x06 refused with 0x03 (illegal data value); 0x04 with 0x02.
EXC_WRITE_VALUE = frame("01 86 03 02 61")
EXC_READ_ADDRESS = frame("01 84 02 C2 C1")
EXC_UNKNOWN_CODE = frame("01 84 0C 43 05")


def hc_register(**kw: object) -> ModbusRegister:
    return ModbusRegister.model_validate({"address": 0, "type": "uint16", **kw})


SETPOINT = hc_register(type="int16", scale=0.1, unit="degC", min=50, max=450)
CAL_OFFSET = hc_register(address=6, type="int16", scale=0.01, min=-500, max=500)
CAL_MODE = hc_register(address=8, allowed=[0, 0xCA1B])
STATUS = hc_register(address=2, type="bits", bits={"output_enabled": 0, "pad_connected": 1,
                                                   "calibration_mode": 7})


def stream_reader(data: bytes) -> tuple[Callable[[int, float], bytes], list[int]]:
    """A read(n, deadline) over a byte stream (a port whose deadline passes when it runs dry)."""
    pos = [0]
    asked: list[int] = []

    def read(n: int, deadline: float) -> bytes:
        asked.append(n)
        chunk = data[pos[0]:pos[0] + n]
        pos[0] += len(chunk)
        return chunk

    return read, asked


# --- requests -----------------------------------------------------------------


def test_read_requests_byte_exact() -> None:
    req = read_request(1, FC_READ_INPUT, 0, 6, "telemetry")
    assert req.adu == READ_INPUT_REQ
    assert req.reply_len == len(READ_INPUT_REP) == 17
    assert read_request(1, FC_READ_HOLDING, 0, 3).adu == READ_HOLDING_REQ
    assert read_request(17, FC_READ_INPUT, 0, 1).adu == frame("11 04 00 00 00 01 33 5A")


def test_write_requests_byte_exact() -> None:
    assert write_single_request(1, 0, 0x0190).adu == WRITE_SETPOINT
    assert write_single_request(1, 6, 0xFF6A).adu == WRITE_CAL_OFFSET
    req = write_multiple_request(1, 1, [605, 0, 2])
    assert req.adu == WRITE_MANY_REQ
    assert req.reply_len == 8
    # The Modbus specification's own example.
    assert write_multiple_request(1, 1, [0x000A, 0x0102]).adu == frame(
        "01 10 00 01 00 02 04 00 0A 01 02 92 30")


@pytest.mark.parametrize("build", [
    lambda: read_request(1, FC_READ_INPUT, 0, 0),
    lambda: read_request(1, FC_READ_INPUT, 0, 126),
    lambda: read_request(1, FC_READ_INPUT, 0xFFFF, 2),
    lambda: read_request(1, 0x06, 0, 1),
    lambda: read_request(256, FC_READ_INPUT, 0, 1),
    lambda: write_single_request(1, 0, 0x10000),
    lambda: write_single_request(1, 0, -1),
    lambda: write_multiple_request(1, 0, []),
    lambda: write_multiple_request(1, 0, [0] * 124),
])
def test_impossible_requests_are_refused(build: Callable[[], Request]) -> None:
    with pytest.raises(ValueRejected):
        build()


# --- replies ------------------------------------------------------------------


def test_read_replies_parse_to_words() -> None:
    req = read_request(1, FC_READ_INPUT, 0, 6)
    assert parse_reply(req, READ_INPUT_REP) == READ_INPUT_WORDS
    assert parse_reply(read_request(1, FC_READ_HOLDING, 0, 3), READ_HOLDING_REP) == (
        370, 600, 0)
    assert parse_reply(read_request(17, FC_READ_INPUT, 0, 1),
                       frame("11 04 02 80 00 19 33")) == (0x8000,)
    # int16 registers of a run come back signed; the request bytes do not change.
    signed = read_request(1, FC_READ_INPUT, 0, 6, signed=[True, True, False, False, False,
                                                          False])
    assert signed.adu == READ_INPUT_REQ
    assert parse_reply(signed, READ_INPUT_REP) == (372, -25, 3, 120, 480, 0)
    with pytest.raises(ValueRejected, match="signedness"):
        read_request(1, FC_READ_INPUT, 0, 6, signed=[True])


def test_write_replies_check_the_echo() -> None:
    assert parse_reply(write_single_request(1, 0, 0x0190), WRITE_SETPOINT) == ()
    assert parse_reply(write_multiple_request(1, 1, [605, 0, 2]), WRITE_MANY_REP) == ()
    # A well-formed echo of another value or count does not answer this request.
    with pytest.raises(ProtocolViolation, match="echo"):
        parse_reply(write_single_request(1, 0, 0x0191), WRITE_SETPOINT)
    with pytest.raises(ProtocolViolation, match="echo"):
        parse_reply(write_multiple_request(1, 1, [605, 0]), WRITE_MANY_REP)


def test_exception_replies_become_device_refused() -> None:
    texts = {3: "illegal data value (out of range, or refused in the current state)"}
    with pytest.raises(DeviceRefused) as info:
        parse_reply(write_single_request(1, 2, 1, "output_enable"), EXC_WRITE_VALUE, texts)
    assert (info.value.entry, info.value.code) == ("output_enable", 3)
    assert info.value.text == texts[3]
    assert "output_enable" in str(info.value)
    with pytest.raises(DeviceRefused) as info:
        parse_reply(read_request(1, FC_READ_INPUT, 0, 6, "pad_temp,drive"), EXC_READ_ADDRESS)
    assert (info.value.code, info.value.text) == (2, STANDARD_EXCEPTIONS[2])
    assert info.value.entry == "pad_temp,drive"
    with pytest.raises(DeviceRefused, match="unknown exception code"):
        parse_reply(read_request(1, FC_READ_INPUT, 0, 6), EXC_UNKNOWN_CODE)


def test_reply_faults_are_classified() -> None:
    req = read_request(1, FC_READ_INPUT, 0, 6)
    flipped = bytearray(READ_INPUT_REP)
    flipped[4] ^= 0x01
    with pytest.raises(CorruptReply, match="CRC"):
        parse_reply(req, bytes(flipped))
    with pytest.raises(CorruptReply, match="truncated"):
        parse_reply(req, READ_INPUT_REP[:3])
    with pytest.raises(ProtocolViolation, match="unit 2"):
        parse_reply(req, with_crc(b"\x02" + READ_INPUT_REP[1:-2]))
    with pytest.raises(ProtocolViolation, match="function 0x03"):
        parse_reply(req, with_crc(b"\x01\x03" + READ_INPUT_REP[2:-2]))
    with pytest.raises(ProtocolViolation, match="byte count"):
        parse_reply(read_request(1, FC_READ_INPUT, 0, 1), with_crc(bytes.fromhex("01 04 04 01 74")))
    with pytest.raises(ProtocolViolation, match="expected 17"):
        parse_reply(req, frame("01 04 02 01 74 B8 87"))
    with pytest.raises(ProtocolViolation, match="exception reply of"):
        parse_reply(req, with_crc(bytes.fromhex("01 84 02 00")))


def test_reply_length_is_decided_by_the_function_code() -> None:
    req = read_request(1, FC_READ_INPUT, 0, 6)
    assert reply_length(req, READ_INPUT_REP[:2]) == 17
    assert reply_length(req, EXC_READ_ADDRESS[:2]) == EXCEPTION_REPLY_LEN
    with pytest.raises(ProtocolViolation):
        reply_length(req, b"\x01\x03")
    with pytest.raises(CorruptReply):
        reply_length(req, b"\x01")


def test_read_frame_takes_exactly_one_reply() -> None:
    req = read_request(1, FC_READ_INPUT, 0, 6)
    read, asked = stream_reader(READ_INPUT_REP + READ_INPUT_REP)
    assert read_frame(req, read, 0.0) == READ_INPUT_REP
    assert sum(asked) == 17
    read, asked = stream_reader(EXC_READ_ADDRESS + READ_INPUT_REP)
    assert read_frame(req, read, 0.0) == EXC_READ_ADDRESS
    assert asked == [5]  # an exception reply needs no second read
    with pytest.raises(LinkTimeout):
        read_frame(req, stream_reader(b"")[0], 0.0)
    with pytest.raises(CorruptReply, match="truncated"):
        read_frame(req, stream_reader(READ_INPUT_REP[:10])[0], 0.0)


def chunked_reader(data: bytes, sizes: list[int]) -> tuple[Callable[[int, float], bytes],
                                                          list[int]]:
    """A read_some(n, deadline) over a stream arriving in pieces of `sizes` bytes."""
    pos, piece = [0], [0]
    asked: list[int] = []

    def read_some(n: int, deadline: float) -> bytes:
        asked.append(n)
        size = sizes[piece[0]] if piece[0] < len(sizes) else len(data)
        piece[0] += 1
        chunk = data[pos[0]:pos[0] + min(n, size)]
        pos[0] += len(chunk)
        return chunk

    return read_some, asked


def _no_read(n: int, deadline: float) -> bytes:
    raise AssertionError("read() used although read_some was given")


def test_read_frame_with_read_some_takes_a_whole_reply_at_once() -> None:
    req = read_request(1, FC_READ_INPUT, 0, 6)
    read_some, asked = chunked_reader(READ_INPUT_REP + READ_INPUT_REP, [100])
    assert read_frame(req, _no_read, 0.0, read_some) == READ_INPUT_REP
    assert asked == [17]  # one call, never past this reply


@pytest.mark.parametrize("sizes", [[1] * 17, [2, 2, 13], [4, 1, 12], [5, 12], [16, 1]])
def test_read_frame_with_read_some_joins_pieces(sizes: list[int]) -> None:
    req = read_request(1, FC_READ_INPUT, 0, 6)
    read_some, asked = chunked_reader(READ_INPUT_REP + READ_INPUT_REP, sizes)
    assert read_frame(req, _no_read, 0.0, read_some) == READ_INPUT_REP
    # Nothing of the following reply was taken: it frames whole after this one.
    assert read_frame(req, _no_read, 0.0, read_some) == READ_INPUT_REP
    assert max(asked) <= 17


def test_read_frame_with_read_some_exception_and_errors() -> None:
    req = read_request(1, FC_READ_INPUT, 0, 6)
    read_some, _ = chunked_reader(EXC_READ_ADDRESS, [2, 3])
    assert read_frame(req, _no_read, 0.0, read_some) == EXC_READ_ADDRESS
    with pytest.raises(LinkTimeout):
        read_frame(req, _no_read, 0.0, chunked_reader(b"", [])[0])
    with pytest.raises(CorruptReply, match="truncated at 10 of 17"):
        read_frame(req, _no_read, 0.0, chunked_reader(READ_INPUT_REP[:10], [3, 7])[0])
    with pytest.raises(CorruptReply, match="truncated at 3 of 5"):
        read_frame(req, _no_read, 0.0, chunked_reader(EXC_READ_ADDRESS[:3], [3])[0])
    # An exception reply with bytes stuck to it is not a reply to trust.
    with pytest.raises(CorruptReply, match="7 bytes where an exception reply has 5"):
        read_frame(req, _no_read, 0.0, chunked_reader(EXC_READ_ADDRESS + b"\x00\x00", [7])[0])
    with pytest.raises(ProtocolViolation, match="function 0x03"):
        read_frame(req, _no_read, 0.0, chunked_reader(b"\x01\x03\x0c", [3])[0])


# --- property tests on arbitrary bytes -------------------------------------------

REQUESTS = st.one_of(
    st.builds(read_request, st.integers(1, 247), st.sampled_from([3, 4]),
              st.integers(0, 100), st.integers(1, 16)),
    st.builds(write_single_request, st.integers(1, 247), st.integers(0, 100),
              st.integers(0, 0xFFFF)),
    st.builds(write_multiple_request, st.integers(1, 247), st.integers(0, 100),
              st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=16)),
)


@settings(max_examples=400)
@given(REQUESTS, st.binary(max_size=300))
def test_parser_survives_arbitrary_bytes(req: Request, data: bytes) -> None:
    try:
        words = parse_reply(req, data)
    except (CorruptReply, ProtocolViolation, DeviceRefused):
        return
    assert len(words) == (req.count if req.function in (3, 4) else 0)


@settings(max_examples=400)
@given(REQUESTS, st.binary(max_size=300), st.booleans())
def test_framing_never_over_reads_arbitrary_bytes(req: Request, data: bytes,
                                                  valid_first: bool) -> None:
    if valid_first:  # a plausible start so the length branch is explored too
        data = bytes((req.unit, req.function)) + data
    read, asked = stream_reader(data)
    try:
        got = read_frame(req, read, 0.0)
    except ProtocolError as exc:
        assert isinstance(exc, (LinkTimeout, CorruptReply, ProtocolViolation))
        got = b""
    assert len(asked) <= 2  # bounded: never loops on a port
    assert sum(asked) <= max(req.reply_len, EXCEPTION_REPLY_LEN)
    assert got == data[:len(got)]


@settings(max_examples=300)
@given(REQUESTS, st.binary(max_size=300), st.lists(st.integers(1, 20), max_size=30))
def test_read_some_framing_never_over_reads(req: Request, data: bytes, sizes: list[int]) -> None:
    data = bytes((req.unit, req.function)) + data
    read_some, asked = chunked_reader(data, sizes)
    try:
        got = read_frame(req, _no_read, 0.0, read_some)
    except ProtocolError as exc:
        assert isinstance(exc, (LinkTimeout, CorruptReply, ProtocolViolation))
        got = b""
    assert len(asked) <= max(req.reply_len, EXCEPTION_REPLY_LEN)  # bounded: no spinning
    assert max(asked) <= max(req.reply_len, EXCEPTION_REPLY_LEN)
    assert got == data[:len(got)]


@given(REQUESTS, st.data())
def test_valid_replies_round_trip(req: Request, data: st.DataObject) -> None:
    if req.function in (3, 4):
        words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=req.count,
                                   max_size=req.count))
        body = bytes((req.unit, req.function, 2 * req.count)) + b"".join(
            w.to_bytes(2, "big") for w in words)
        reply = body + bitwise_crc(body)
        assert parse_reply(req, reply) == tuple(words)
    else:
        reply = req.adu[:6] + bitwise_crc(req.adu[:6])
        assert parse_reply(req, reply) == ()
    read, _ = stream_reader(reply + b"\x00trailing")
    assert read_frame(req, read, 0.0) == reply


# --- register values ----------------------------------------------------------


def test_decode_scaling_signedness_and_bits() -> None:
    assert decode_register(SETPOINT, 0x0174) == 37.2
    assert decode_register(SETPOINT, 0xFFE7) == -2.5
    assert decode_register(hc_register(), 0xFFE7) == 0xFFE7
    assert decode_register(hc_register(type="int16"), 0xFFE7) == -25
    assert isinstance(decode_register(hc_register(type="int16"), 5), int)
    assert decode_register(CAL_OFFSET, 0xFF6A) == -1.5
    assert decode_register(hc_register(scale=0.0001), 10000) == 1.0
    assert decode_bits(STATUS, 0x0083) == {"output_enabled": True, "pad_connected": True,
                                          "calibration_mode": True}
    assert decode_bits(STATUS, 0x0002) == {"output_enabled": False, "pad_connected": True,
                                          "calibration_mode": False}


def test_encode_engineering_values() -> None:
    assert encode_register("setpoint", SETPOINT, 40.0) == 0x0190
    assert encode_register("setpoint", SETPOINT, 37.1) == 371
    assert encode_register("setpoint", SETPOINT, 45) == 450
    assert encode_register("cal_offset", CAL_OFFSET, -1.5) == 0xFF6A
    assert encode_register("cal_mode", CAL_MODE, 0xCA1B) == 0xCA1B


@pytest.mark.parametrize(("reg", "value", "match"), [
    (SETPOINT, 46.0, r"setpoint: value 46 degC \(raw 460\) is outside .*50\.\.450"),
    (SETPOINT, 4.9, r"outside .*50\.\.450"),
    (SETPOINT, 37.05, "not a multiple of the register's step 0.1"),
    (CAL_MODE, 2, "one of 0, 51739"),
    (hc_register(), -1, "outside the uint16 range"),
    (hc_register(), 65536, "outside the uint16 range"),
    (hc_register(type="int16"), 32768, "outside the int16 range"),
    (SETPOINT, float("nan"), "not a finite number"),
    (SETPOINT, float("inf"), "not a finite number"),
    (SETPOINT, True, "not a number"),
    (SETPOINT, "40", "not a number"),
])
def test_encode_refuses_what_the_device_does_not_accept(reg: ModbusRegister, value: object,
                                                        match: str) -> None:
    with pytest.raises(ValueRejected, match=match) as info:
        encode_register("setpoint", reg, value)
    assert str(info.value).startswith("setpoint: ")


@given(st.sampled_from(["int16", "uint16", "bits"]), st.sampled_from([1.0, 0.1, 0.01, 0.3]),
       st.one_of(st.floats(), st.integers(min_value=-(10**400), max_value=10**400)))
def test_encode_only_ever_refuses(reg_type: str, scale: float, value: float) -> None:
    reg = hc_register(type=reg_type, scale=scale)
    try:
        word = encode_register("r", reg, value)
    except ValueRejected:
        return
    assert 0 <= word <= 0xFFFF
    assert decode_register(reg, word) == pytest.approx(value, rel=1e-6, abs=1e-6)


SCALES = [1.0, 0.1, 0.01, 0.001, 0.0001, 0.5, 0.25, 0.05, 0.3, 2.0, 10.0]


@given(st.sampled_from(["int16", "uint16", "bits"]), st.sampled_from(SCALES),
       st.integers(0, 0xFFFF))
def test_every_word_round_trips(reg_type: str, scale: float, word: int) -> None:
    reg = hc_register(type=reg_type, scale=scale)
    value = decode_register(reg, word)
    assert isinstance(value, int) == (scale == 1)
    assert encode_register("r", reg, value) == word
