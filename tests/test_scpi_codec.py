"""The SCPI line codec, byte for byte against the US-300 interface document.

Expected checksums are computed here by an independent implementation (one
functools.reduce) so a wrong XOR in the codec cannot agree with itself.
"""

from __future__ import annotations

import math
import operator
from contextlib import suppress
from datetime import date
from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.profiles.loader import resolve_profile
from protocols import scpi_codec as codec
from protocols.errors import CorruptReply, ProtocolError, ProtocolViolation, ValueRejected
from protocols.map_common import Scalar
from protocols.map_scpi import ScpiField, ScpiMap


def _us300() -> ScpiMap:
    pmap = resolve_profile("us-300").profile.protocol
    assert isinstance(pmap, ScpiMap)
    return pmap


US300 = _us300()


def hh(text: str) -> str:
    """Independent checksum: XOR of the bytes, two upper-case hex digits."""
    return format(reduce(operator.xor, text.encode("ascii"), 0), "02X")


def req(text: str) -> bytes:
    return f"{text}*{hh(text)}\n".encode("ascii")


def rep(text: str) -> bytes:
    return f"{text}*{hh(text)}\r\n".encode("ascii")


def frame(body: str) -> bytes:
    return codec.frame_request(body, use_checksum=True, max_line_length=128)


def set_line(entry: str, args: dict[str, Scalar], short: bool = False) -> bytes:
    cmd = US300.commands[entry]
    assert cmd.set is not None
    header = cmd.short_header if short else cmd.header
    return frame(codec.request_body(header, args=codec.encode_args(entry, cmd.set, args)))


def fields(entry: str) -> codec.FieldsParser:
    query = US300.commands[entry].query
    assert query is not None
    return codec.FieldsParser(query)


# -- requests -------------------------------------------------------------------------

def test_checksum_by_hand() -> None:
    # '*'^'I'^'D'^'N'^'?' = 0x2A^0x49^0x44^0x4E^0x3F = 0x56
    assert codec.checksum(b"*IDN?") == 0x56
    assert frame(codec.request_body("*IDN", query=True)) == b"*IDN?*56\n"


@pytest.mark.parametrize("body", ["*IDN?", "*RST", "STATus?", "STAT?", "SYSTem:ERRor?",
                                  "SYST:ERR?", "OUTPut ON", "ABORt"])
def test_request_lines(body: str) -> None:
    header, _, arg = body.partition(" ")
    built = codec.request_body(header.rstrip("?"), query=header.endswith("?"),
                               args=[arg] if arg else [])
    assert built == body
    assert frame(built) == req(body)


def test_set_long_and_short_form() -> None:
    assert set_line("intensity", {"value": 1.5}) == req("SOURce:INTensity 1.5")
    assert set_line("intensity", {"value": 1.5}, short=True) == req("SOUR:INT 1.5")
    assert req("SOUR:INT 1.5") != req("SOURce:INTensity 1.5")
    assert set_line("cal_gain", {"value": 1.0}, short=True) == req("CAL:POW:GAIN 1.000")
    assert set_line("cal_date", {"value": "2026-03-01"}) == req("CALibration:DATE 2026-03-01")
    assert set_line("frequency", {"value": 3}, short=True) == req("SOUR:FREQ 3")
    assert set_line("output", {"value": "OFF"}) == req("OUTPut OFF")


def test_optional_field_drops_its_comma() -> None:
    on = set_line("service", {"state": "ON", "pin": "4321"}, short=True)
    assert on == req("SYST:SERV ON,4321")
    assert set_line("service", {"state": "OFF"}, short=True) == req("SYST:SERV OFF")


def test_no_checksum_and_crlf_terminator() -> None:
    line = codec.frame_request("STAT?", use_checksum=False, terminator="\r\n")
    assert line == b"STAT?\r\n"


def test_too_long_request_refused() -> None:
    body = "SYST:SERV " + "A" * 115  # 125 characters + *HH = 128: the longest accepted
    assert len(frame(body)) == 129
    with pytest.raises(ValueRejected, match="129 characters long, the device takes at most"):
        frame(body + "A")


# -- arguments ------------------------------------------------------------------------

def fld(**kw: object) -> ScpiField:
    return ScpiField.model_validate({"name": "value", **kw})


@pytest.mark.parametrize(("field", "value", "token"), [
    (fld(type="float", decimals=1), 1.5, "1.5"),
    (fld(type="float", decimals=1, min=0, max=3, step=0.1), 0.3, "0.3"),
    (fld(type="float", decimals=3), 1, "1.000"),
    (fld(type="float", decimals=1), -0.0, "0.0"),
    (fld(type="float"), 0.00001, "0.00001"),
    (fld(type="float"), 2, "2.0"),
    (fld(type="int", allowed=[1, 3]), 3, "3"),
    (fld(type="int"), 7.0, "7"),
    (fld(type="int", scale=0.01, min=0, max=300, step=10), 1.5, "150"),
    (fld(type="int", scale=0.1, min=0, max=30), 0.3, "3"),
    (fld(type="enum", allowed=["ON", "OFF"]), "ON", "ON"),
    (fld(type="date"), "2026-03-01", "2026-03-01"),
    (fld(type="text"), "4321", "4321"),
    (fld(type="text"), 4321, "4321"),
    (fld(type="quoted"), 'a, "b"', '"a, ""b"""'),
])
def test_format_value(field: ScpiField, value: Scalar, token: str) -> None:
    assert codec.format_value("x", field, value) == token


@pytest.mark.parametrize(("field", "value", "why"), [
    (fld(type="float", decimals=1, min=0, max=3, step=0.1), 3.1, r"range 0\.\.3"),
    (fld(type="float", decimals=1, min=0, max=3, step=0.1), 1.55, "at most 1 decimals"),
    (fld(type="float", decimals=2, min=0, max=3, step=0.1), 1.55, "step"),
    (fld(type="float", decimals=3, min=0.8, max=1.2), 0.799, r"0\.8\.\.1\.2"),
    (fld(type="float"), math.nan, "finite"),
    (fld(type="float"), True, "needs a number"),
    (fld(type="float"), "1.5", "needs a number"),
    (fld(type="int", allowed=[1, 3]), 2, "one of 1, 3"),
    (fld(type="int", min=1, max=1800), 1800.5, "whole number"),
    (fld(type="int", scale=0.01, min=0, max=300), 3.5, r"range 0\.\.3$"),
    (fld(type="int", scale=0.01, min=0, max=300, unit="W"), 1.234, "whole number"),
    (fld(type="enum", allowed=["ON", "OFF"]), "on", "one of ON, OFF"),
    (fld(type="enum", allowed=["ON", "OFF"]), True, "needs text"),
    (fld(type="date"), "2026-02-30", "yyyy-mm-dd"),
    (fld(type="date"), "1.3.2026", "yyyy-mm-dd"),
    (fld(type="text"), "43,21", "without spaces, commas"),
    (fld(type="text"), "a b", "without spaces"),
    (fld(type="text"), "4321*00", "asterisks"),
    (fld(type="quoted"), "caf\u00e9", "printable ASCII"),
])
def test_format_value_refused(field: ScpiField, value: Scalar, why: str) -> None:
    with pytest.raises(ValueRejected, match=why) as info:
        codec.format_value("intensity (SOURce:INTensity)", field, value)
    # The message names the command, the field and the value.
    assert str(info.value).startswith(f"intensity (SOURce:INTensity): value={value!r} refused")


def test_scaled_range_is_stated_in_engineering_units() -> None:
    field = fld(type="int", scale=0.01, min=0, max=300, step=10, unit="W/cm2")
    assert codec.accepted_range(field) == "0..3, step 0.1 W/cm2"


def test_args_missing_unknown_and_gap() -> None:
    service = US300.commands["service"].set
    assert service is not None
    with pytest.raises(ValueRejected, match="'state' is missing"):
        codec.encode_args("service", service, {"pin": "4321"})
    with pytest.raises(ValueRejected, match="unknown argument"):
        codec.encode_args("service", service, {"state": "ON", "code": 1})
    two_optional = [fld(type="int"), ScpiField(name="a", type="int", optional=True),
                    ScpiField(name="b", type="int", optional=True)]
    assert codec.encode_args("x", two_optional, {"value": 1, "a": 2}) == ["1", "2"]
    with pytest.raises(ValueRejected, match="'b' given while the optional 'a'"):
        codec.encode_args("x", two_optional, {"value": 1, "b": 2})


# -- replies --------------------------------------------------------------------------

def unframe(line: bytes) -> str:
    return codec.unframe_reply(line, use_checksum=True)


def test_ok_reply() -> None:
    assert rep("OK") == f"OK*{hh('OK')}\r\n".encode()
    assert unframe(rep("OK")) == "OK"
    assert unframe(rep("OK")[:-2] + b"\n") == "OK"  # LF alone is fine too
    assert unframe(rep("OK")[:-2]) == "OK"  # the engine hands lines without LF
    assert codec.unframe_reply(b"OK\r\n", use_checksum=False) == "OK"


@pytest.mark.parametrize("line", [
    b"OK\r\n",                          # no checksum
    b"OK*00\r\n",                       # wrong checksum
    rep("OK").replace(b"*", b"#"),      # no asterisk
    rep("1.5").replace(b"*2A", b"*2a"),  # the spec says upper-case hex
    rep("OK")[:1] + b"X" + rep("OK")[2:],  # damaged payload
    b"*\r\n", b"\r\n", b"",
    b"\xff\xfe*01\r\n",                # right checksum (0xFF ^ 0xFE), not ASCII
])
def test_bad_reply_lines_are_corrupt(line: bytes) -> None:
    with pytest.raises(CorruptReply):
        unframe(line)


def test_error_answer() -> None:
    line = rep('ERR -222,"Data out of range"')
    assert line == b'ERR -222,"Data out of range"*' + hh('ERR -222,"Data out of range"') \
        .encode() + b"\r\n"
    text = unframe(line)
    assert codec.parse_error(text, "ERR") == (-222, "Data out of range")
    assert codec.parse_error('ERR -350,"Checksum error"', "ERR") == (-350, "Checksum error")
    assert codec.parse_error('ERR -100,"a, ""b"""', "ERR") == (-100, 'a, "b"')
    assert codec.parse_error("OK", "ERR") is None
    assert codec.parse_error("ERRATIC", "ERR") is None
    for bad in ("ERR", "ERR ", "ERR -222", 'ERR x,"t"', "ERR -222,text", 'ERR -2,"a"b"'):
        with pytest.raises(CorruptReply):
            codec.parse_error(bad, "ERR")


def test_status_answer_fields() -> None:
    text = unframe(rep("RUN,12,288,87,0"))
    assert fields("status").parse(text) == ["RUN", 12, 288, 87, 0]
    assert fields("idn").parse("Generic Therapy Devices,US-300,SN0001,1.2.0") == \
        ["Generic Therapy Devices", "US-300", "SN0001", "1.2.0"]
    assert fields("intensity").parse("1.5") == [1.5]
    assert fields("cal_date").parse("2026-03-01") == ["2026-03-01"]
    assert fields("output").parse("on") == ["ON"]  # keywords are case-insensitive


def test_quoted_field_may_hold_commas() -> None:
    assert fields("error").parse('0,"No error"') == [0, "No error"]
    assert fields("error").parse('-222,"Data, out of range"') == [-222, "Data, out of range"]
    assert fields("error").parse('-100,"say ""hi"", twice"') == [-100, 'say "hi", twice']
    assert codec.split_fields('a,"b,c",d') == ["a", '"b,c"', "d"]


@pytest.mark.parametrize(("entry", "text", "error"), [
    ("status", "RUN,12,288,87", CorruptReply),          # too few fields
    ("status", "RUN,12,288,87,0,9", CorruptReply),      # too many
    ("status", "RUN,12,2x8,87,0", CorruptReply),        # not an integer
    ("status", "PAUSED,12,288,87,0", ProtocolViolation),  # well-formed, unknown state
    ("contact", "9" * 5000, CorruptReply),             # beyond int()'s digit limit
    ("intensity", "nan", CorruptReply),
    ("intensity", "1e999", CorruptReply),
    ("intensity", "1_000", CorruptReply),
    ("cal_date", "2026-13-01", CorruptReply),
    ("error", "0,No error", CorruptReply),
    ("error", '0,"No error', CorruptReply),
])
def test_bad_answers(entry: str, text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        fields(entry).parse(text)


def test_scaled_answer() -> None:
    parser = codec.FieldsParser([fld(type="int", scale=0.1), ScpiField(
        name="b", type="float", scale=0.001), ScpiField(name="c", type="int", scale=10)])
    assert parser.parse("3,1500.0,7") == [0.3, 1.5, 70]


# -- properties -----------------------------------------------------------------------

ALL_PARSERS = [codec.FieldsParser(cmd.query) for cmd in US300.commands.values() if cmd.query]


@given(st.binary(max_size=200), st.booleans())
def test_parser_never_crashes_on_arbitrary_bytes(data: bytes, use_checksum: bool) -> None:
    try:
        text = codec.unframe_reply(data, use_checksum=use_checksum)
        codec.parse_error(text, "ERR")
        for parser in ALL_PARSERS:
            with suppress(ProtocolError):
                parser.parse(text)
    except ProtocolError:
        pass


@given(st.text(alphabet=' ,"0123456789.+-eERUNOKIDL', max_size=40))
def test_parser_never_crashes_on_reply_like_text(text: str) -> None:
    with suppress(ProtocolError):
        codec.parse_error(text, "ERR")
    for parser in ALL_PARSERS:
        with suppress(ProtocolError):
            parser.parse(text)


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
def test_checksummed_reply_round_trip(text: str) -> None:
    line = codec.frame_request(text, use_checksum=True, terminator="\r\n")
    assert line == rep(text)
    assert codec.unframe_reply(line, use_checksum=True) == text


def round_trip(field: ScpiField, value: Scalar) -> Scalar:
    token = codec.format_value("x", field, value)
    [back] = codec.FieldsParser([field]).parse(token)
    return back


@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_int_round_trip(value: int) -> None:
    assert round_trip(fld(type="int"), value) == value


@given(st.integers(min_value=0, max_value=300))
def test_scaled_int_round_trip(raw: int) -> None:
    value = raw / 100
    assert round_trip(fld(type="int", scale=0.01, min=0, max=300), value) == value


@given(st.integers(min_value=-(10**6), max_value=10**6), st.integers(min_value=0, max_value=6))
def test_float_round_trip(units: int, decimals: int) -> None:
    value = units / 10**decimals
    assert round_trip(fld(type="float", decimals=decimals), value) == value


@given(st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_float_without_decimals_round_trip(value: float) -> None:
    assert round_trip(fld(type="float"), value) == value


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
def test_quoted_round_trip(value: str) -> None:
    assert round_trip(fld(type="quoted"), value) == value
    pair = codec.FieldsParser([fld(type="int"), ScpiField(name="t", type="quoted")])
    assert pair.parse("5," + codec.quote(value)) == [5, value]


@given(st.dates(min_value=date(1000, 1, 1)))
def test_date_round_trip(value: date) -> None:
    assert round_trip(fld(type="date"), value.isoformat()) == value.isoformat()


@given(st.from_regex(r"[A-Za-z0-9.\-_:]{1,20}", fullmatch=True))
def test_text_round_trip(value: str) -> None:
    assert round_trip(fld(type="text"), value) == value
