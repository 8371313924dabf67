"""The framed binary codec: byte-exact frames from the ES-4 spec, payload layouts, re-sync."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.profiles.loader import resolve_profile
from protocols.crc import crc16_ccitt_false
from protocols.errors import ValueRejected
from protocols.framed_codec import (
    FRAME_OVERHEAD,
    Frame,
    FrameDecoder,
    PayloadLayout,
    encode_frame,
    frame_size,
    to_engineering,
    to_raw,
)
from protocols.map_framed import FramedMap, FrameField, FrameFieldType
from tests.support.crc import crc16_ccitt_false as bitwise_crc

SYNC = 0xA5


def _es4_map() -> FramedMap:
    pmap = resolve_profile("es-4").profile.protocol
    assert isinstance(pmap, FramedMap)
    return pmap


PMAP = _es4_map()
CMDS = PMAP.commands
MAX_BUFFERED = PMAP.max_len + FRAME_OVERHEAD - 1  # one incomplete candidate at most


def ref_frame(seq: int, cmd: int, payload: bytes = b"", sync: int = SYNC) -> bytes:
    """A frame built straight from the spec text, not from the codec."""
    body = bytes([2 + len(payload), seq, cmd]) + payload
    crc = bitwise_crc(body)
    return bytes([sync]) + body + bytes([crc >> 8, crc & 0xFF])


def decoder(pmap: FramedMap = PMAP) -> FrameDecoder:
    return FrameDecoder(pmap.sync, pmap.min_len, pmap.max_len)


def layout(name: str, reply: bool = False) -> PayloadLayout:
    cmd = CMDS[name]
    if reply:
        return PayloadLayout(cmd.reply, "little", lead="B", prefix=name + ".")
    return PayloadLayout(cmd.request, "little")


# -- frames to the byte ------------------------------------------------------------

def test_reference_crc_is_the_catalogue_one() -> None:
    assert bitwise_crc(b"123456789") == 0x29B1


def test_ping_with_seq_1() -> None:
    crc = bitwise_crc(bytes([0x02, 0x01, 0x01]))
    expected = bytes([0xA5, 0x02, 0x01, 0x01, crc >> 8, crc & 0xFF])
    assert expected == bytes.fromhex("a5 02 01 01 81 ec")  # CRC sent high byte first
    assert encode_frame(SYNC, 1, CMDS["ping"].code) == expected
    assert frame_size(0) == len(expected)


def test_configure_payload_is_little_endian() -> None:
    payload = layout("configure").pack(
        {"channel": 1, "waveform": 0, "mode": 2, "frequency_hz": 100, "pulse_width_us": 200},
        "configure")
    assert payload == bytes([0x01, 0x00, 0x02, 0x64, 0x00, 0xC8, 0x00])
    frame = encode_frame(SYNC, 0x42, 0x10, payload)
    assert frame == bytes.fromhex("a5 09 42 10 01 00 02 64 00 c8 00 90 01")
    assert frame == ref_frame(0x42, 0x10, payload)


def test_scaled_request_fields() -> None:
    payload = layout("set_amplitude").pack({"channel": 0, "amplitude": 25.5, "ramp_ms": 1.5},
                                           "set_amplitude")
    assert payload == bytes([0x00, 0xFF, 0x00, 0xDC, 0x05])  # 255 × 0.1 mA, 1500 ms
    cal = layout("set_cal").pack({"channel": 1, "gain": 1.0123, "offset": -1.5}, "set_cal")
    assert cal == bytes([0x01]) + (10123).to_bytes(2, "little") + (-150).to_bytes(2, "little",
                                                                                 signed=True)
    assert layout("service").pack({"key": 0x05E471CE}, "service") == bytes.fromhex("ce 71 e4 05")


def test_get_status_reply_layout() -> None:
    ch0 = bytes([2, 0xFA, 0x00, 0xB0, 0x04, 0x0A, 0x00, 0x32, 0x00])  # running, 25.0 mA
    ch1 = bytes([4, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00])  # lead off
    payload = bytes([0x00, 0b1001]) + ch0 + ch1
    lay = layout("get_status", reply=True)
    assert lay.size == len(payload) == 20
    assert lay.decode(payload) == {
        "get_status.flags": 9,
        "get_status.flags.estop_latched": True,
        "get_status.flags.watchdog_expired": False,
        "get_status.flags.service_mode": False,
        "get_status.flags.patient_stop": True,
        "get_status.ch0_state": 2, "get_status.ch0_amplitude": 25.0,
        "get_status.ch0_impedance": 1200, "get_status.ch0_elapsed": 10,
        "get_status.ch0_remaining": 50,
        "get_status.ch1_state": 4, "get_status.ch1_amplitude": 0.0,
        "get_status.ch1_impedance": 65535, "get_status.ch1_elapsed": 0,
        "get_status.ch1_remaining": 0,
    }


def test_get_info_ascii_and_get_cal_signed() -> None:
    info = b"\x00" + b"ES-4\0\0\0\0" + (123456).to_bytes(4, "little") + bytes([1, 7, 2])
    assert layout("get_info", reply=True).decode(info) == {
        "get_info.model": "ES-4", "get_info.serial": 123456, "get_info.fw_major": 1,
        "get_info.fw_minor": 7, "get_info.channels": 2}
    cal = b"\x00" + (9950).to_bytes(2, "little") + (-150).to_bytes(2, "little", signed=True)
    assert layout("get_cal", reply=True).decode(cal) == {"get_cal.gain": 0.995,
                                                         "get_cal.offset": -1.5}


def test_event_frame() -> None:
    assert PMAP.events is not None
    wire = ref_frame(0, 0x70, bytes([1, 0, 0xB0, 0x04]))
    assert wire == bytes.fromhex("a5 06 00 70 01 00 b0 04 65 50")
    (frame,) = decoder().feed(wire)
    assert frame == Frame(0, 0x70, bytes([1, 0, 0xB0, 0x04]))
    fields = PayloadLayout(PMAP.events.payload, "little").decode(frame.payload)
    assert fields == {"event": 1, "channel": 0, "value": 1200}


def test_big_endian_layout() -> None:
    fields = [FrameField(name="a", type="u16"), FrameField(name="b", type="i16"),
              FrameField(name="c", type="u32")]
    lay = PayloadLayout(fields, "big")
    assert lay.pack({"a": 0x1234, "b": -2, "c": 0x01020304}, "x") == \
        bytes.fromhex("12 34 ff fe 01 02 03 04")


def test_codec_crc_matches_protocols_crc() -> None:
    for data in (b"", b"\x00", b"123456789", bytes(range(256))):
        frame = encode_frame(SYNC, 1, 2, data[:200])
        crc = int.from_bytes(frame[-2:], "big")
        assert crc == crc16_ccitt_false(frame[1:-2]) == bitwise_crc(frame[1:-2])


# -- values refused, never clipped ------------------------------------------------------

@pytest.mark.parametrize(("entry", "field", "value", "words"), [
    ("configure", "frequency_hz", 300, ["configure", "frequency_hz", "300", "1..250"]),
    ("configure", "channel", 2, ["configure", "channel", "one of 0, 1"]),
    ("set_amplitude", "amplitude", 80.1, ["set_amplitude", "amplitude", "80.1", "0..800",
                                          "0.1 mA"]),
    ("set_amplitude", "amplitude", 2.55, ["not a whole number of steps of 0.1 mA"]),
    ("set_amplitude", "amplitude", -0.1, ["raw -1"]),
    ("stop", "ramp_down_ms", 70.0, ["raw 70000", "u16 holds 0..65535"]),
    ("set_watchdog", "timeout_ms", 0.05, ["one of 0 or 100..10000"]),
    ("set_amplitude", "amplitude", True, ["a number is expected"]),
    ("set_amplitude", "amplitude", "12", ["a number is expected"]),
    ("set_amplitude", "amplitude", math.nan, ["not a finite number"]),
    ("set_amplitude", "amplitude", -math.inf, ["not a finite number"]),
    pytest.param("set_amplitude", "amplitude", 10**400, ["not a finite number"], id="huge"),
    ("set_amplitude", "amplitude", 10**40, ["raw 1" + "0" * 41]),
    ("stop", "channel_mask", 2**32, ["u8 holds 0..255"]),
])
def test_values_outside_what_the_device_accepts_are_refused(
        entry: str, field: str, value: float | str, words: list[str]) -> None:
    spec = next(f for f in CMDS[entry].request if f.name == field)
    with pytest.raises(ValueRejected) as info:
        to_raw(spec, value, entry)
    for word in words:
        assert word in str(info.value)


def test_accepted_edges_and_float_noise() -> None:
    watchdog = CMDS["set_watchdog"].request[0]
    assert [to_raw(watchdog, v, "w") for v in (0, 0.1, 10.0, 0.3)] == [0, 100, 10000, 300]
    amp = CMDS["set_amplitude"].request[1]
    assert [to_raw(amp, v, "a") for v in (0.3, 80.0, 0.0)] == [3, 800, 0]  # 0.3/0.1 != 3.0


def test_ascii_fields() -> None:
    model = FrameField(name="model", type="ascii", length=4)
    assert to_raw(model, "ES", "x") == b"ES"
    assert PayloadLayout([model], "little").pack({"model": "ES"}, "x") == b"ES\0\0"
    for bad, why in (("ES-40", "longer than 4"), ("É", "not ASCII"), (4, "text expected")):
        with pytest.raises(ValueRejected, match=why):
            to_raw(model, bad, "x")
    assert to_engineering(model, b"ES\0\0") == "ES"
    assert to_engineering(model, b"\xff\0") == "\ufffd"  # a broken device must not crash us


def test_missing_argument_is_refused() -> None:
    with pytest.raises(ValueRejected, match=r"missing argument.*pulse_width_us"):
        layout("configure").pack({"channel": 0, "waveform": 0, "mode": 0, "frequency_hz": 5},
                                 "configure")


# -- decoder: re-sync, split chunks, bounded buffering --------------------------------------

def test_byte_by_byte_with_garbage_between() -> None:
    frames = [ref_frame(1, 0x81, b"\x00"), ref_frame(0, 0x70, bytes([2, 1, 0, 0])),
              ref_frame(2, 0xA0, bytes(20))]
    bad_crc = bytearray(ref_frame(3, 0x81, b"\x00"))
    bad_crc[-1] ^= 0x01
    # SYNCs with a LEN below min_len, above max_len, a bad CRC: each dropped, rescan.
    stream = (b"\x00\xa5\x01\xa5\xff" + frames[0] + bytes(bad_crc) + b"\xa5\x01" + frames[1]
              + b"garbage\xa5\x00" + frames[2])
    dec, out = decoder(), []
    for i in range(len(stream)):
        out += dec.feed(stream[i:i + 1])
    assert [ref_frame(f.seq, f.cmd, f.payload) for f in out] == frames
    assert dec.buffered == 0


def test_partial_frame_is_kept_not_over_read() -> None:
    dec = decoder()
    whole, nxt = ref_frame(7, 0xA0, bytes(20)), ref_frame(8, 0x81, b"\x00")
    assert dec.needed() == 0
    assert dec.feed(whole + nxt[:3]) == [Frame(7, 0xA0, bytes(20))]
    assert dec.buffered == 3
    assert dec.needed() == len(nxt) - 3
    assert dec.feed(nxt[3:]) == [Frame(8, 0x81, b"\x00")]
    assert dec.feed(b"\xa5") == []
    assert dec.needed() == 1


def test_corrupted_len_holds_frames_until_resync() -> None:
    """A LEN corrupted upwards swallows the frames behind it until enough bytes come;
    resync() gives up on it at once."""
    dec = decoder()
    real = ref_frame(4, 0x81, b"\x00")
    assert dec.feed(b"\xa5\xf0" + real) == []  # candidate of LEN 0xF0 still incomplete
    assert dec.resync() == [Frame(4, 0x81, b"\x00")]
    dec.clear()
    dec = decoder()
    assert dec.feed(b"\xa5\xf0" + real) == []
    assert dec.feed(bytes(0xF0)) == [Frame(4, 0x81, b"\x00")]  # CRC fails, rescan finds it
    assert dec.buffered == 0


def test_len_outside_the_map_is_garbage() -> None:
    small = FramedMap.model_validate({"family": "framed_binary", "max_len": 10,
                                      "status_codes": {0: "OK"},
                                      "commands": {"ping": {"code": 1}}})
    dec = decoder(small)
    too_long = ref_frame(1, 0x81, bytes(9))  # LEN 11 > 10
    good = ref_frame(2, 0x81, b"\x00")
    assert dec.feed(too_long + good) == [Frame(2, 0x81, b"\x00")]


def test_sync_flood_stays_bounded() -> None:
    dec = decoder()
    for _ in range(200):
        assert dec.feed(b"\xa5" * 1000) == []
        assert dec.buffered <= MAX_BUFFERED
    assert dec.feed(bytes(300) + ref_frame(9, 0x81, b"\x00")) == [Frame(9, 0x81, b"\x00")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=12))
def test_decoder_never_crashes_and_stays_bounded(chunks: list[bytes]) -> None:
    dec = decoder()
    stream = b"".join(chunks)
    for chunk in chunks:
        for frame in dec.feed(chunk):
            # Only CRC-valid frames that really are in the input come out.
            assert ref_frame(frame.seq, frame.cmd, frame.payload) in stream
        assert dec.buffered <= MAX_BUFFERED
        assert 0 <= dec.needed() <= MAX_BUFFERED + 1
    while dec.buffered:
        dec.resync()


FRAME = st.builds(lambda seq, cmd, payload: ref_frame(seq, cmd, payload),
                  st.integers(0, 255), st.integers(0, 255), st.binary(max_size=40))
NO_SYNC = st.binary(max_size=30).map(lambda b: b.replace(b"\xa5", b"\x5a"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NO_SYNC, FRAME), max_size=8), st.data())
def test_frames_come_out_in_order_whatever_the_chunking(
        parts: list[tuple[bytes, bytes]], data: st.DataObject) -> None:
    stream = b"".join(g + f for g, f in parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    dec, out = decoder(), []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += dec.feed(stream[a:b])
    assert [ref_frame(f.seq, f.cmd, f.payload) for f in out] == [f for _, f in parts]
    assert dec.buffered == 0


# -- round trips of every field type -----------------------------------------------------

FIELD_TYPES: list[FrameFieldType] = ["u8", "u16", "i16", "u32", "ascii"]
SCALES = [1.0, 0.1, 0.01, 0.001, 0.0001, 0.5, 2.0, 0.25]
TYPE_RANGES = {"u8": (0, 0xFF), "u16": (0, 0xFFFF), "i16": (-0x8000, 0x7FFF),
               "u32": (0, 0xFFFF_FFFF)}


@st.composite
def field_and_raw(draw: st.DrawFn) -> tuple[FrameField, int | bytes]:
    ftype = draw(st.sampled_from(FIELD_TYPES))
    name = draw(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True))
    if ftype == "ascii":
        length = draw(st.integers(1, 16))
        text = draw(st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=length))
        return FrameField(name=name, type="ascii", length=length), text.encode()
    lo, hi = TYPE_RANGES[ftype]
    field = FrameField(name=name, type=ftype, scale=draw(st.sampled_from(SCALES)))
    return field, draw(st.integers(lo, hi))


@given(st.lists(field_and_raw(), min_size=1, max_size=6, unique_by=lambda p: p[0].name),
       st.sampled_from(["little", "big"]))
def test_round_trip_of_every_field_type(pairs: list[tuple[FrameField, int | bytes]],
                                        order: str) -> None:
    fields = [f for f, _ in pairs]
    lay = PayloadLayout(fields, order, prefix="e.")
    values = {f.name: to_engineering(f, raw) for f, raw in pairs}
    payload = lay.pack(values, "e")
    assert len(payload) == lay.size == sum(f.size for f in fields)
    codes = "".join(f"{f.length}s" if f.type == "ascii" else
                    {"u8": "B", "u16": "H", "i16": "h", "u32": "I"}[f.type] for f in fields)
    expected_raw = [raw.ljust(f.size, b"\0") if isinstance(raw, bytes) else raw
                    for f, raw in pairs]
    assert list(struct.unpack(("<" if order == "little" else ">") + codes, payload)) == \
        expected_raw
    assert lay.decode(payload) == {f"e.{k}": v for k, v in values.items()}
    for f, raw in pairs:
        assert to_raw(f, values[f.name], "e") == raw


def test_bits_of_a_field() -> None:
    flags = FrameField(name="f", type="u16", bits={"low": 0, "high": 15})
    assert PayloadLayout([flags], "little").decode(b"\x01\x80") == {
        "f": 0x8001, "f.low": True, "f.high": True}
