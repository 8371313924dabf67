"""Fuzzing: every decoder, the profile and plan loaders and the command-line parsers.

Issue 6, part 3. Hypothesis drives each input surface with random and
structure-aware input and checks four things:

- no crash: only the documented exception types come out (ProtocolError
  subclasses from the host codecs and engines, nothing at all from the device
  side, ProfileError / PlanError from the loaders, DurationError, SettingsError,
  PrescriptionRejected and FaultError from the parameter parsers), and `main()`
  ends with an exit status, never a traceback or an "internal error";
- no hang: every example runs under a hypothesis deadline (slow but finite) and a
  SIGALRM watchdog (stuck: HANG_S);
- no unbounded memory: long garbage streams leave every receive buffer under
  the bound its module states (MAX_BUFFER, max_line_length, max_len + overhead,
  EVENT_QUEUE_MAX);
- every rejection is a clear error: a non-empty, single-line message that names
  the file, field, register, command or parameter involved.

Input here is generated, never a fixed list, so a run explores new cases; the
example counts keep the whole file to well under a minute on two cores
(MODCTL_FUZZ_SCALE=20 multiplies them for a long run). The
properties of tests/test_*_codec.py (arbitrary bytes into parse_reply,
read_frame, unframe_reply and FrameDecoder) are not repeated: these go
further in (CRC-valid frames, checksummed lines, whole engines on a scripted
port, the device side, files and command lines).

A bug found in code this file does not own gets a regression test of its own
here; while it is open that test is a strict xfail, and the marker goes with the fix.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import itertools
import json
import logging
import math
import os
import random
import re
import signal
import string
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from controller.cli import simulate_cmd
from controller.cli.main import main
from controller.modality.limits import effective_bound
from controller.modality.prescription import (
    DurationError,
    PrescriptionRejected,
    SettingsError,
    build_prescription,
    parse_duration,
    parse_settings,
)
from controller.profiles.loader import (
    ProfileError,
    load_profile_file,
    resolve_profile,
    shipped_profile_paths,
)
from controller.profiles.model import DURATION, Profile, on_step
from protocols import modbus_codec
from protocols import scpi_codec as scpi
from protocols.crc import crc16_ccitt_false, crc16_modbus
from protocols.errors import (
    CorruptReply,
    DeviceRefused,
    LinkTimeout,
    ProtocolError,
    ProtocolViolation,
)
from protocols.framed import EVENT_QUEUE_MAX, FramedEngine
from protocols.framed_codec import FRAME_OVERHEAD, FrameDecoder, PayloadLayout
from protocols.map_framed import FramedMap
from protocols.map_modbus import ModbusMap
from protocols.map_scpi import ScpiMap
from protocols.modbus import ModbusEngine
from protocols.scpi import ScpiEngine
from simulator import modbus_device
from simulator.faults import FAULT_NAMES, LINK_FAULTS, MODALITY_FAULTS, FaultError, parse_faults
from simulator.framed_device import FramedEndpoint
from simulator.modbus_device import MAX_BUFFER, ModbusEndpoint
from simulator.scpi_device import LINE_SLACK, ScpiEndpoint
from simulator.server import build_endpoint, build_model
from tests.support.ports import PORT_BUFFER, ScriptedPort, ScriptedPortReadSome

PROFILE_IDS = ("hc-200", "us-300", "es-4")
# Messages may carry a hex dump of a whole frame; anything longer is not "clear".
MAX_MESSAGE = 4000
# Deadlines: an example normally takes 1-100 ms; these leave room for a loaded CI box
# and still flag a decoder that has gone quadratic. A deadline is only checked once an
# example returns, so a stuck one is interrupted by HANG_S (SIGALRM) instead.
FAST = timedelta(seconds=3)
SLOW = timedelta(seconds=10)
HANG_S = 60.0


# MODCTL_FUZZ_SCALE=20 multiplies every example count: a long run, same properties.
FUZZ_SCALE = float(os.environ.get("MODCTL_FUZZ_SCALE", "1"))


class Hang(Exception):
    """An example ran past HANG_S: the code under test is stuck."""


def guarded(test: Callable[..., Any]) -> Callable[..., Any]:
    """Run `test` with a SIGALRM watchdog (main thread only, which is where pytest runs)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        seconds = HANG_S

        def on_alarm(signum: int, frame: Any) -> None:
            raise Hang(f"{test.__name__}: one example still running after {seconds:g} s")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return test(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return run


def fuzz(max_examples: int = 150, deadline: timedelta | None = FAST
         ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Settings for a @given test, and a watchdog around each of its examples."""
    config = settings(max_examples=max(1, round(max_examples * FUZZ_SCALE)),
                      deadline=deadline,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.filter_too_much])

    def decorate(test: Callable[..., Any]) -> Callable[..., Any]:
        # Hypothesis runs each example through `.hypothesis.inner_test`, which it
        # documents as replaceable for custom execution.
        test.hypothesis.inner_test = guarded(  # type: ignore[attr-defined]
            test.hypothesis.inner_test)  # type: ignore[attr-defined]
        return config(test)  # type: ignore[no-any-return]
    return decorate


@cache
def profile(pid: str) -> Profile:
    return resolve_profile(pid).profile


def assert_clear(message: str, *names: str, single_line: bool = True, echoed: int = 0) -> None:
    """A rejection a person can act on: non-empty, one line, bounded, naming something.

    `echoed`: characters of input the message may quote back (an operator's own text).
    """
    assert message.strip(), "empty error message"
    assert "Traceback" not in message
    if single_line:
        assert "\n" not in message and "\r" not in message, f"multi-line message: {message!r}"
    assert len(message) <= MAX_MESSAGE + 2 * echoed, f"message of {len(message)} characters"
    if names:
        assert any(n in message for n in names), f"{message!r} names none of {names}"


class ExceptionLog(logging.Handler):
    """Collects log records carrying a traceback: a decoder that logs one has crashed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.crashes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.crashes.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def no_logged_crash(*loggers: str) -> Iterator[ExceptionLog]:
    handler = ExceptionLog()
    targets = [logging.getLogger(name) for name in loggers]
    for lg in targets:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in targets:
            lg.removeHandler(handler)
    assert not handler.crashes, f"exceptions logged by the decoder: {handler.crashes}"


def chunked(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    edges = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def modbus_crc(body: bytes) -> bytes:
    return body + crc16_modbus(body).to_bytes(2, "little")


def framed(sync: int, seq: int, cmd: int, payload: bytes) -> bytes:
    body = bytes((len(payload) + 2, seq & 0xFF, cmd & 0xFF)) + payload
    crc = crc16_ccitt_false(body)
    return bytes((sync,)) + body + bytes((crc >> 8, crc & 0xFF))


def scpi_checksummed(text: bytes) -> bytes:
    return text + b"*%02X" % scpi.checksum(text)


# =====================================================================================
# Host side: the codecs below the engines
# =====================================================================================

def _modbus_requests() -> list[modbus_codec.Request]:
    pmap = profile("hc-200").protocol
    assert isinstance(pmap, ModbusMap)
    unit = pmap.unit_address
    out = []
    for name, reg in pmap.input_registers.items():
        out.append(modbus_codec.read_request(unit, 4, reg.address, 1, name,
                                             [reg.type == "int16"]))
    for name, reg in pmap.holding_registers.items():
        out.append(modbus_codec.read_request(unit, 3, reg.address, 1, name,
                                             [reg.type == "int16"]))
        out.append(modbus_codec.write_single_request(unit, reg.address, 0, name))
    out.append(modbus_codec.read_request(unit, 4, 0, 10, "block", [False] * 10))
    out.append(modbus_codec.write_multiple_request(unit, 0, [1, 2, 3], "many"))
    return out


MODBUS_REQUESTS = _modbus_requests()


@st.composite
def modbus_reply_for(draw: st.DrawFn, req: modbus_codec.Request) -> bytes:
    """A reply with a correct CRC around a body that is right, nearly right or random."""
    unit = draw(st.sampled_from([req.unit, req.unit, 0, draw(st.integers(0, 255))]))
    function = draw(st.sampled_from([req.function, req.function, req.function | 0x80,
                                     draw(st.integers(0, 255))]))
    shape = draw(st.sampled_from(["right", "count", "random", "echo"]))
    if shape == "right":
        data = draw(st.binary(min_size=req.reply_len - 4, max_size=req.reply_len - 4))
        if req.layout is not None:
            data = bytes((2 * req.count,)) + data[1:]
    elif shape == "count":
        n = draw(st.integers(0, 130))
        data = bytes((draw(st.sampled_from([2 * n, 2 * req.count, n])) & 0xFF,)) + draw(
            st.binary(min_size=2 * n, max_size=2 * n))
    elif shape == "echo":
        data = req.adu[2:6] if draw(st.booleans()) else draw(st.binary(min_size=4, max_size=4))
    else:
        data = draw(st.binary(max_size=260))
    frame = modbus_crc(bytes((unit, function)) + data)
    if draw(st.integers(0, 9)) == 0:  # now and then a flipped bit: the CRC catches it
        i = draw(st.integers(0, len(frame) - 1))
        frame = frame[:i] + bytes((frame[i] ^ 1 << draw(st.integers(0, 7)),)) + frame[i + 1:]
    return frame


@fuzz(300)
@given(st.sampled_from(MODBUS_REQUESTS), st.data())
def test_modbus_crc_valid_replies_are_parsed_or_refused_by_name(
        req: modbus_codec.Request, data: st.DataObject) -> None:
    frame = data.draw(modbus_reply_for(req))
    try:
        words = modbus_codec.parse_reply(req, frame, {1: "illegal function"})
    except DeviceRefused as exc:
        assert frame[1] == req.function | 0x80 and len(frame) == 5
        assert exc.entry == req.label and exc.text
        assert_clear(str(exc), req.label)
        return
    except (CorruptReply, ProtocolViolation) as exc:
        assert_clear(str(exc), req.label)
        return
    assert crc16_modbus(frame) == 0 and frame[0] == req.unit and frame[1] == req.function
    if req.layout is not None:
        assert len(words) == req.count
        assert all(-0x8000 <= w <= 0xFFFF for w in words)
    else:
        assert words == () and frame[:6] == req.adu[:6]


# -- SCPI line codec ----------------------------------------------------------------
def _scpi_map() -> ScpiMap:
    pmap = profile("us-300").protocol
    assert isinstance(pmap, ScpiMap)
    return pmap


SCPI_QUERY_FIELDS = [(name, cmd.query) for name, cmd in _scpi_map().commands.items()
                     if cmd.query]
ALL_FIELDS = [f for _, fields in SCPI_QUERY_FIELDS for f in fields] + [
    f for cmd in _scpi_map().commands.values() for f in cmd.set or []]

SCPI_TOKEN = st.one_of(
    st.from_regex(r"\A[+-]?[0-9]{0,12}(\.[0-9]{0,6})?([eE][+-]?[0-9]{1,4})?\Z"),
    st.sampled_from(["ON", "OFF", "on", "IDLE", "RUN", "FAULT", "US-300", "2024-02-30",
                     "2024-02-29", "nan", "inf", "-0", "1e999", '""', '"a""b"', '"x', "",
                     " 1 ", "9" * 5000]),
    st.text(alphabet=string.printable, max_size=12),
)


@fuzz(200)
@given(st.sampled_from(SCPI_QUERY_FIELDS), st.lists(SCPI_TOKEN, max_size=7),
       st.booleans(), st.sampled_from([b"\n", b"\r\n", b""]))
def test_scpi_checksummed_answers_are_parsed_or_refused_by_name(
        query: tuple[str, list[Any]], tokens: list[str], prefix_err: bool,
        end: bytes) -> None:
    """Lines whose checksum is right get past the framing: the field parsers are reached."""
    _, fields = query
    text = ",".join(tokens)
    if prefix_err:
        text = "ERR " + text
    raw = text.encode("ascii", errors="replace")
    # The engine refuses longer lines before they reach the codec.
    assume(len(raw) + len(b"*HH") <= _scpi_map().max_line_length)
    line = scpi_checksummed(raw) + end
    try:
        body = scpi.unframe_reply(line, use_checksum=True)
        assert body == raw.decode("ascii")
        error = scpi.parse_error(body, "ERR")
        if error is not None:
            code, msg = error
            assert isinstance(code, int) and isinstance(msg, str)
            return
        values = scpi.FieldsParser(fields).parse(body)
    except (CorruptReply, ProtocolViolation) as exc:
        assert_clear(str(exc))
        return
    assert len(values) <= len(fields)
    for field, value in zip(fields, values, strict=False):
        if field.type in ("int", "float"):
            assert isinstance(value, (int, float)) and math.isfinite(value)
        elif field.type == "enum":
            assert value in (field.allowed or [])
        else:
            assert isinstance(value, str)


@fuzz(400)
@given(st.sampled_from(ALL_FIELDS), SCPI_TOKEN)
def test_every_scpi_field_parser_converts_or_names_the_field(field: Any, token: str) -> None:
    if len(token) > _scpi_map().max_line_length:  # only int() sees these: it must cope
        assume(field.type == "int")
    try:
        value = scpi.field_parser(field)(token)
    except (CorruptReply, ProtocolViolation) as exc:
        if field.type != "quoted":  # unquote's message shows the token, not the field
            assert_clear(str(exc), f"'{field.name}'")
        else:
            assert_clear(str(exc))
        return
    if field.type in ("int", "float"):
        assert isinstance(value, (int, float)) and math.isfinite(value)


# -- framed payload layouts ------------------------------------------------------------
def _framed_map() -> FramedMap:
    pmap = profile("es-4").protocol
    assert isinstance(pmap, FramedMap)
    return pmap


FRAMED_LAYOUTS = [(name, PayloadLayout(cmd.reply, "little", lead="B", prefix=name + "."))
                  for name, cmd in _framed_map().commands.items()]


@fuzz(300)
@given(st.sampled_from(FRAMED_LAYOUTS), st.data())
def test_framed_reply_payloads_decode_to_every_field(
        named: tuple[str, PayloadLayout], data: st.DataObject) -> None:
    name, layout = named
    payload = data.draw(st.binary(min_size=layout.size, max_size=layout.size))
    out = layout.decode(payload)
    for f in layout.fields:
        assert f"{name}.{f.name}" in out
        for bit in f.bits or {}:
            assert isinstance(out[f"{name}.{f.name}.{bit}"], bool)
    wrong = data.draw(st.binary(max_size=40).filter(lambda b: len(b) != layout.size))
    with pytest.raises(Exception) as info:  # the documented struct.error: callers check size
        layout.decode(wrong)
    assert type(info.value).__name__ == "error"


# =====================================================================================
# Host side: whole engines on a scripted port
# =====================================================================================

HC_READS = [tuple(profile("hc-200").protocol.input_registers)[:n]  # type: ignore[union-attr]
            for n in (1, 3, 10)] + [("setpoint",), ("status", "setpoint", "model")]


@fuzz(150)
@given(st.sampled_from(HC_READS), st.data())
def test_modbus_engine_reads_values_or_raises_a_protocol_error(
        entries: tuple[str, ...], data: st.DataObject) -> None:
    pmap = profile("hc-200").protocol
    assert isinstance(pmap, ModbusMap)
    by_adu = {r.adu: r for r in MODBUS_REQUESTS}

    def device(adu: bytes) -> bytes:
        req = by_adu.get(adu)
        if req is None:  # a request built by the engine's own plan: answer its shape
            unit, function, address, count = adu[0], adu[1], adu[2:4], adu[4:6]
            n = int.from_bytes(count, "big")
            req = modbus_codec.read_request(unit, function, int.from_bytes(address, "big"),
                                            n, "x", [False] * n)
        return data.draw(st.one_of(modbus_reply_for(req), st.binary(max_size=40)))

    # Both ways of reading: SerialTransport offers read_some, which the engine prefers.
    kind = data.draw(st.sampled_from([ScriptedPort, ScriptedPortReadSome]))
    try:
        with kind(device) as port:
            values = ModbusEngine(port, pmap, 0.05, 2).read(entries)
    except DeviceRefused as exc:
        assert_clear(str(exc), *entries)
        return
    except ProtocolError as exc:
        assert isinstance(exc, (LinkTimeout, CorruptReply, ProtocolViolation))
        assert_clear(str(exc), *entries)
        return
    assert set(entries) <= set(values)


SCPI_ENTRIES = [name for name, _ in SCPI_QUERY_FIELDS]


@st.composite
def scpi_answer(draw: st.DrawFn) -> bytes:
    """An answer line: checksum right, wrong or missing; terminated or runaway."""
    text = ",".join(draw(st.lists(SCPI_TOKEN, max_size=6)))
    if draw(st.integers(0, 4)) == 0:
        text = "ERR " + draw(st.sampled_from(["-350", "-222", "x", "-102"])) + ',"' + text + '"'
    raw = text.encode("ascii", errors="replace")
    how = draw(st.sampled_from(["sum", "sum", "bad", "none"]))
    if how == "sum":
        raw = scpi_checksummed(raw)
    elif how == "bad":
        raw += b"*" + draw(st.binary(min_size=2, max_size=2))
    end = draw(st.sampled_from([b"\r\n", b"\n", b"", b"\r"]))
    return raw + end


@fuzz(150)
@given(st.sampled_from(SCPI_ENTRIES), st.data())
def test_scpi_engine_reads_values_or_raises_a_protocol_error(
        entry: str, data: st.DataObject) -> None:
    pmap = _scpi_map()
    kind = data.draw(st.sampled_from([ScriptedPort, ScriptedPortReadSome]))
    port = kind(lambda line: data.draw(st.one_of(scpi_answer(), st.binary(max_size=300))))
    engine = ScpiEngine(port, pmap, 0.05, 2)
    try:
        with port:
            values = engine.read([entry])
    except ProtocolViolation as exc:
        # Names the entry: test_scpi_engine_violation_names_the_entry.
        assert_clear(str(exc), entry)
        return
    except DeviceRefused as exc:
        # The device's own text, control characters removed: see
        # test_scpi_device_text_with_control_characters_is_not_passed_on.
        assert_clear(str(exc), entry)
        return
    except ProtocolError as exc:
        assert isinstance(exc, (LinkTimeout, CorruptReply))
        assert_clear(str(exc), entry)
        return
    finally:
        # Kept between exchanges: at most a line and one read's worth (cleared before
        # the next request is written).
        assert len(engine._buf) <= pmap.max_line_length + 2 + PORT_BUFFER
    assert {k.partition(".")[0] for k in values} == {entry}


def test_scpi_engine_violation_names_the_entry() -> None:
    text = b"PAUSED"
    port = ScriptedPort(lambda line: scpi_checksummed(text) + b"\r\n")
    engine = ScpiEngine(port, _scpi_map(), 0.05, 0)
    with port, pytest.raises(ProtocolViolation) as info:
        engine.read(["output"])
    assert "output" in str(info.value)


def test_scpi_device_text_with_control_characters_is_not_passed_on() -> None:
    text = b'ERR -222,"bad\rvalue\x1b[2J"'
    port = ScriptedPort(lambda line: scpi_checksummed(text) + b"\r\n")
    engine = ScpiEngine(port, _scpi_map(), 0.05, 0)
    with port, pytest.raises(ProtocolError) as info:
        engine.read(["idn"])
    message = str(info.value)
    assert not re.search(r"[\x00-\x1f\x7f]", message), repr(message)


@pytest.mark.parametrize("kind", [ScriptedPort, ScriptedPortReadSome])
def test_scpi_engine_stops_reading_a_runaway_line(kind: type[ScriptedPort]) -> None:
    """A device that streams without a terminator costs one bounded read, not memory."""
    pmap = _scpi_map()
    chunk = b"A" * 1024
    port = kind(lambda line: chunk * 1000)  # 1 MB, no LF anywhere
    engine = ScpiEngine(port, pmap, 0.05, 0)
    with port, pytest.raises(CorruptReply, match="longer than"):
        engine.read(["status"])
    assert port.read_bytes <= pmap.max_line_length + 1 + PORT_BUFFER
    assert len(engine._buf) == 0


FRAMED_ENTRIES = [name for name, cmd in _framed_map().commands.items() if not cmd.request]


@st.composite
def framed_answer(draw: st.DrawFn, request: bytes) -> bytes:
    """What an ES-4-like device might send back: garbage, events, the reply (or not)."""
    pmap = _framed_map()
    seq, cmd = request[2], request[3]
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["garbage", "event", "reply", "other", "sync"]))
        if kind == "garbage":
            parts.append(draw(st.binary(max_size=30)))
        elif kind == "sync":
            parts.append(bytes((pmap.sync, draw(st.integers(0, 255)))))
        elif kind == "event":
            assert pmap.events is not None
            parts.append(framed(pmap.sync, pmap.events.seq, pmap.events.code,
                                draw(st.binary(max_size=8))))
        else:
            code = (cmd + pmap.reply_code_offset) & 0xFF if kind == "reply" else draw(
                st.integers(0, 255))
            status = draw(st.sampled_from([pmap.ok_status, pmap.ok_status, 1, 7, 200]))
            payload = bytes((status,)) + draw(st.binary(max_size=40))
            parts.append(framed(pmap.sync, draw(st.sampled_from([seq, seq, 0, seq ^ 1])),
                                code, payload[:draw(st.integers(0, len(payload)))]))
    return b"".join(parts)


@fuzz(150)
@given(st.sampled_from(FRAMED_ENTRIES), st.data())
def test_framed_engine_reads_values_or_raises_a_protocol_error(
        entry: str, data: st.DataObject) -> None:
    pmap = _framed_map()
    kind = data.draw(st.sampled_from([ScriptedPort, ScriptedPortReadSome]))
    port = kind(lambda frame: data.draw(framed_answer(frame)))
    engine = FramedEngine(port, pmap, 0.05, 2, first_seq=1)
    events: list[Any] = []
    with port:
        try:
            values: dict[str, Any] | None = engine.read([entry])
        except ProtocolError as exc:
            assert isinstance(exc, (LinkTimeout, CorruptReply, ProtocolViolation,
                                    DeviceRefused))
            assert_clear(str(exc), entry)
            values = None
        assert engine._decoder.buffered <= pmap.max_len + FRAME_OVERHEAD - 1
        assert len(engine._queue) <= EVENT_QUEUE_MAX
        engine.set_event_handler(events.append)
        engine.poll_events()
    assert all(isinstance(e.kind, str) and e.kind for e in events)
    if values is not None:
        assert all(k.startswith(entry + ".") for k in values)


def test_framed_engine_event_queue_stays_bounded_without_a_handler() -> None:
    pmap = _framed_map()
    assert pmap.events is not None
    flood = b"".join(framed(pmap.sync, pmap.events.seq, pmap.events.code,
                            bytes((i % 7, 0xFF, 0, 0))) for i in range(5 * EVENT_QUEUE_MAX))
    port = ScriptedPort(lambda frame: b"")
    engine = FramedEngine(port, pmap, 0.05, 0, first_seq=1)
    with port:
        for i in range(0, len(flood), 4096):
            port.inbox += flood[i:i + 4096]
            engine.poll_events()
            assert len(engine._queue) <= EVENT_QUEUE_MAX
            assert engine._decoder.buffered <= pmap.max_len + FRAME_OVERHEAD - 1
    assert len(engine._queue) == EVENT_QUEUE_MAX


@fuzz(10, deadline=SLOW)
@given(st.binary(min_size=1, max_size=64), st.integers(1, 8))
def test_framed_decoder_stays_bounded_on_a_long_garbage_stream(
        seed: bytes, chunks_k: int) -> None:
    """128 kB of garbage built around SYNC bytes: memory stays at one candidate."""
    pmap = _framed_map()
    dec = FrameDecoder(pmap.sync, pmap.min_len, pmap.max_len)
    block = (seed + bytes((pmap.sync, 250))) * (4096 // (len(seed) + 2) + 1)
    step = 512 * chunks_k
    for _ in range(0, 128 * 1024, len(block)):
        for j in range(0, len(block), step):
            dec.feed(block[j:j + step])
            assert dec.buffered <= pmap.max_len + FRAME_OVERHEAD - 1


# =====================================================================================
# Device side: the simulator's decoders (endpoint.receive)
# =====================================================================================

class Device:
    """One shipped profile's model and endpoint on a clock the test moves."""

    def __init__(self, pid: str) -> None:
        self.profile = profile(pid)
        self.now = 1000.0
        self.model = build_model(self.profile, parse_faults([]), clock=lambda: self.now)
        self.endpoint = build_endpoint(self.profile, self.model)
        self.endpoint.tick(self.now)

    def feed(self, chunks: Sequence[bytes], dt: float = 0.001) -> list[bytes]:
        out: list[bytes] = []
        for chunk in chunks:
            self.now += dt
            with self.model.lock:
                out += self.endpoint.receive(chunk, self.now)
            assert self.buffered() <= self.bound(), f"buffer {self.buffered()} > {self.bound()}"
        return out

    def buffered(self) -> int:
        ep = self.endpoint
        if isinstance(ep, ModbusEndpoint):
            return len(ep._rx.buf)
        if isinstance(ep, ScpiEndpoint):
            return len(ep._buf)
        assert isinstance(ep, FramedEndpoint)
        return len(ep.scanner._buf)

    def bound(self) -> int:
        """The bound each module states for what it keeps between calls."""
        ep = self.endpoint
        if isinstance(ep, ModbusEndpoint):
            return MAX_BUFFER
        if isinstance(ep, ScpiEndpoint):
            return ep.map.max_line_length + LINE_SLACK
        assert isinstance(ep, FramedEndpoint)
        return ep.map.max_len + FRAME_OVERHEAD - 1


def check_modbus_replies(dev: Device, replies: list[bytes]) -> None:
    pmap = dev.profile.protocol
    assert isinstance(pmap, ModbusMap)
    for reply in replies:
        assert len(reply) >= 5 and crc16_modbus(reply) == 0, reply.hex(" ")
        assert reply[0] == pmap.unit_address


def check_scpi_replies(dev: Device, stream: bytes, replies: list[bytes]) -> None:
    pmap = dev.profile.protocol
    assert isinstance(pmap, ScpiMap)
    # One line in, exactly one line out: never silence, never two answers.
    assert len(replies) == stream.count(pmap.request_terminator[-1].encode())
    end = pmap.reply_terminator.encode()
    for reply in replies:
        assert reply.endswith(end)
        body = reply[:-len(end)]
        assert re.fullmatch(rb"[ -~]*", body), reply
        assert b"\n" not in body and b"\r" not in body


def check_framed_replies(dev: Device, replies: list[bytes]) -> None:
    pmap = dev.profile.protocol
    assert isinstance(pmap, FramedMap)
    for reply in replies:
        dec = FrameDecoder(pmap.sync, pmap.min_len, pmap.max_len)
        frames = dec.feed(reply)
        assert len(frames) == 1 and dec.buffered == 0, reply.hex(" ")


def check_replies(dev: Device, stream: bytes, replies: list[bytes]) -> None:
    family = dev.profile.protocol.family
    if family == "modbus_rtu":
        check_modbus_replies(dev, replies)
    elif family == "scpi_line":
        check_scpi_replies(dev, stream, replies)
    else:
        check_framed_replies(dev, replies)


SIM_LOGGERS = ("simulator",)


# -- structure-aware requests ---------------------------------------------------------
@st.composite
def modbus_request(draw: st.DrawFn) -> bytes:
    pmap = profile("hc-200").protocol
    assert isinstance(pmap, ModbusMap)
    unit = draw(st.sampled_from([pmap.unit_address] * 4 + [0, 2, 255]))
    function = draw(st.one_of(st.sampled_from([3, 4, 6, 16, 3, 4, 6, 16, 1, 5, 15, 0x2B, 0x83]),
                              st.integers(0, 255)))
    address = draw(st.one_of(st.integers(0, 12), st.integers(0, 0xFFFF)))
    count = draw(st.one_of(st.integers(0, 20), st.integers(0, 0xFFFF)))
    if function in (3, 4):
        data = address.to_bytes(2, "big") + count.to_bytes(2, "big")
    elif function == 6:
        holding = [r.address for r in pmap.holding_registers.values()]
        address = draw(st.sampled_from([*holding, address]))
        word = draw(st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 1, 0xCA1B, 400])))
        data = address.to_bytes(2, "big") + word.to_bytes(2, "big")
    elif function == 16:
        n = draw(st.integers(0, 12))
        words = draw(st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n))
        nbytes = draw(st.sampled_from([2 * n, 2 * n, (2 * n + 1) & 0xFF, 0]))
        data = (address.to_bytes(2, "big") + n.to_bytes(2, "big") + bytes((nbytes,))
                + b"".join(w.to_bytes(2, "big") for w in words))
    else:
        data = draw(st.binary(max_size=24))
    return modbus_crc(bytes((unit, function)) + data)


def _scpi_headers() -> list[str]:
    out = []
    for cmd in _scpi_map().commands.values():
        words = cmd.header.lstrip("*").split(":")
        short = ":".join("".join(c for c in w if c.isupper() or c.isdigit()) for w in words)
        star = "*" if cmd.header.startswith("*") else ""
        out += [cmd.header, cmd.header.lower(), star + short, ":" + cmd.header]
    return out


SCPI_HEADERS = _scpi_headers()


@st.composite
def scpi_request(draw: st.DrawFn) -> bytes:
    header = draw(st.one_of(st.sampled_from(SCPI_HEADERS),
                            st.text(alphabet=string.ascii_letters + ":*?", max_size=12)))
    form = draw(st.sampled_from(["query", "set", "bare"]))
    text = header + "?" if form == "query" else header
    if form == "set" or draw(st.integers(0, 5)) == 0:
        text += " " + ",".join(draw(st.lists(SCPI_TOKEN, max_size=3)))
    raw = text.encode("ascii", errors="replace")
    how = draw(st.sampled_from(["sum", "sum", "bad", "none"]))
    if how == "sum":
        raw = scpi_checksummed(raw)
    elif how == "bad":
        raw += b"*" + draw(st.sampled_from([b"00", b"ZZ", b"7f", b"4"]))
    return raw + draw(st.sampled_from([b"\n", b"\r\n", b"\n", b""]))


@st.composite
def framed_request(draw: st.DrawFn) -> bytes:
    pmap = _framed_map()
    codes = [c.code for c in pmap.commands.values()]
    code = draw(st.one_of(st.sampled_from(codes), st.integers(0, 255)))
    cmd = next((c for c in pmap.commands.values() if c.code == code), None)
    size = sum(f.size for f in cmd.request) if cmd is not None else 0
    if draw(st.booleans()):
        payload = draw(st.binary(min_size=size, max_size=size))
    else:
        payload = draw(st.binary(max_size=min(pmap.max_len - 2, 64)))
    seq = draw(st.one_of(st.integers(pmap.seq_min, pmap.seq_max), st.just(0)))
    return framed(pmap.sync, seq, code, payload)


def garbage(sync_like: int | None = None) -> st.SearchStrategy[bytes]:
    alphabet = st.binary(max_size=40)
    if sync_like is None:
        return alphabet
    return st.one_of(alphabet, st.just(bytes((sync_like,))),
                     st.builds(lambda n: bytes((sync_like, n)), st.integers(0, 255)))


REQUEST_STRATEGIES = {
    "hc-200": modbus_request(),
    "us-300": scpi_request(),
    "es-4": framed_request(),
}


@fuzz(120, deadline=SLOW)
@given(st.sampled_from(PROFILE_IDS), st.data())
def test_device_side_decoders_answer_well_formed_frames_and_never_crash(
        pid: str, data: st.DataObject) -> None:
    """Requests (valid, corrupted, truncated) mixed with garbage, in any chunking."""
    sync = _framed_map().sync if pid == "es-4" else None
    parts = data.draw(st.lists(st.one_of(REQUEST_STRATEGIES[pid], garbage(sync)),
                               max_size=8))
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    dev = Device(pid)
    with no_logged_crash(*SIM_LOGGERS):
        replies = dev.feed(chunked(stream, cuts))
        dev.now += 1.0
        dev.endpoint.tick(dev.now)
    check_replies(dev, stream, replies)


@fuzz(60, deadline=SLOW)
@given(st.sampled_from(["us-300", "es-4"]), st.binary(min_size=1, max_size=4096),
       st.integers(1, 4096))
def test_device_side_buffers_stay_bounded_on_a_long_garbage_stream(
        pid: str, block: bytes, step: int) -> None:
    """64 kB of garbage, in pieces up to the pty server's read size: memory stays bounded."""
    dev = Device(pid)
    stream = (block * (65536 // len(block) + 1))[:65536]
    with no_logged_crash(*SIM_LOGGERS):
        replies = dev.feed([stream[i:i + step] for i in range(0, len(stream), step)], dt=0.0)
    check_replies(dev, stream, replies)


def test_modbus_device_buffer_stays_bounded_on_a_garbage_stream() -> None:
    """Memory: the Modbus device keeps at most MAX_BUFFER bytes, whatever arrives.

    64 kB in the pty server's 4 kB reads. Not in the test above: a few pathological
    blocks fed a byte at a time cost the Modbus scan ~0.2 ms per byte, over its deadline
    on a loaded box (the work per byte is bounded: see the test below).
    """
    dev = Device("hc-200")
    rng = random.Random(6)
    stream = bytes(rng.randrange(256) for _ in range(65536))
    with no_logged_crash(*SIM_LOGGERS):
        replies = dev.feed([stream[i:i + 4096] for i in range(0, len(stream), 4096)], dt=0.0)
    check_modbus_replies(dev, replies)
    assert dev.buffered() <= MAX_BUFFER


class CrcBudget:
    """Counts the bytes the Modbus device runs through its CRC, whole (`crc16_modbus`)
    or running (`_crc_states`); fails past the budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.hashed = 0
        self._states = modbus_device._crc_states

    def count(self, data: bytes | bytearray) -> None:
        self.hashed += len(data)
        if self.hashed > self.budget:
            raise AssertionError(f"CRC work {self.hashed} bytes exceeds the budget "
                                 f"{self.budget}")

    def crc16(self, data: bytes) -> int:
        self.count(data)
        return crc16_modbus(data)

    def states(self, data: bytes | bytearray, crc: int) -> list[int]:
        self.count(data)
        return self._states(data, crc)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(modbus_device, "crc16_modbus", self.crc16)
        monkeypatch.setattr(modbus_device, "_crc_states", self.states)


# Work a linear scan may do per received byte: every start offset checked once
# against every candidate length of an unknown function is ~ UNKNOWN_SCAN_MAX^2 / 2.
CRC_BYTES_PER_INPUT_BYTE = 2 * modbus_device.UNKNOWN_SCAN_MAX ** 2


def test_modbus_device_scan_work_per_byte_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbage in small pieces: the scan must not redo its work on every read (it once
    rescanned its whole buffer per call, ~30 ms of CPU per byte under the model lock)."""
    rng = random.Random(6)
    stream = bytes(rng.randrange(256) for _ in range(600))
    budget = CrcBudget(CRC_BYTES_PER_INPUT_BYTE * len(stream))
    budget.install(monkeypatch)
    dev = Device("hc-200")
    for i in range(0, len(stream), 3):       # a slow line: a few bytes per read
        dev.feed([stream[i:i + 3]], dt=0.0)  # no time passes: nothing goes stale
    # After a pause the garbage is dropped and a real request is answered.
    dev.now += 1.0
    dev.endpoint.tick(dev.now)
    assert dev.feed([modbus_crc(bytes((1, 4, 0, 9, 0, 1)))], dt=0.0)


# =====================================================================================
# The profile loader
# =====================================================================================

@pytest.fixture(scope="module")
def fuzz_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="modctl-fuzz-") as d:
        yield Path(d)


_counter = iter(range(10**9))


def write_case(directory: Path, content: str | bytes, suffix: str = ".yaml") -> Path:
    path = directory / f"case-{next(_counter)}{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@cache
def shipped_text(pid: str) -> str:
    return shipped_profile_paths()[pid].read_text(encoding="utf-8")


def dump_yaml(data: Any) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True)


def tree_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out += tree_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out += tree_paths(v, (*prefix, i))
    return out


@cache
def shipped_tree(kind: str, name: str) -> tuple[Any, tuple[tuple[Any, ...], ...]]:
    text = shipped_text(name) if kind == "profile" else plan_text(name)
    data = yaml.safe_load(text)
    return data, tuple(tree_paths(data))


def get_at(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


# Text without control characters or line breaks (those have their own tests:
# test_problem_lines_stay_single_with_a_line_break_in_a_value and
# test_control_character_in_yaml_is_one_line_with_its_line); integers up to 1e300
# (larger: test_huge_integer_settings_are_rejected_not_a_crash).
TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cs", "Zl", "Zp"]),
               max_size=20)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.integers(-10**300, 10**300),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT, st.sampled_from(["", "hc-200", "thermal", "$temperature_c", "15m",
                                           "modbus_rtu", "x" * 5000]),
)


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=4),
                     st.dictionaries(st.text(string.ascii_lowercase + "_", min_size=1,
                                             max_size=10), inner, max_size=4))


YAML_VALUES = st.recursive(SCALARS, _nested, max_leaves=12)


@st.composite
def mutated_tree_text(draw: st.DrawFn, kind: str, name: str) -> tuple[str, str]:
    """(mutation, YAML text): the shipped document with one to three tree edits."""
    data = copy.deepcopy(shipped_tree(kind, name)[0])
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        paths = tree_paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = get_at(data, path[:-1])
        op = draw(st.sampled_from(["delete", "retype", "swap", "rename", "extra"]))
        ops.append(op)
        if op == "delete":
            del parent[path[-1]]
        elif op == "retype":
            parent[path[-1]] = draw(YAML_VALUES)
            ops[-1] += "@" + "/".join(str(k) for k in path if isinstance(k, str))
        elif op == "swap":
            other = draw(st.sampled_from(paths))
            with contextlib.suppress(KeyError, IndexError, TypeError):
                other_parent = get_at(data, other[:-1])
                a, b = parent[path[-1]], other_parent[other[-1]]
                parent[path[-1]], other_parent[other[-1]] = b, a
        elif op == "rename" and isinstance(parent, dict):
            value = parent.pop(path[-1])
            parent[draw(st.text(string.ascii_lowercase + "_", min_size=1, max_size=12))] = value
        elif isinstance(parent, dict):
            parent[draw(st.text(string.ascii_lowercase, min_size=1, max_size=8))] = draw(
                YAML_VALUES)
        else:
            parent.append(draw(YAML_VALUES))
    try:
        text = dump_yaml(data)
    except (yaml.YAMLError, RecursionError):  # a swap made a cycle
        assume(False)
    return "+".join(ops), text


@st.composite
def mutated_text(draw: st.DrawFn, text: str) -> tuple[str, str]:
    """(mutation, text): line-level edits that keep the comments and the layout."""
    lines = text.splitlines(keepends=True)
    op = draw(st.sampled_from(["duplicate", "truncate", "delete_line", "indent", "insert"]))
    i = draw(st.integers(0, len(lines) - 1))
    if op == "duplicate":     # a repeated key, or a repeated list item
        lines.insert(i, lines[i])
    elif op == "truncate":
        return op, text[:draw(st.integers(0, len(text)))]
    elif op == "delete_line":
        del lines[i]
    elif op == "indent":
        lines[i] = draw(st.sampled_from([" ", "  ", "\t", "    "])) + lines[i]
    else:
        junk = draw(st.text(alphabet=":-{}[]&*!|>'\"#%@ ,?abc01\t", max_size=20))
        lines.insert(i, junk + "\n")
    return op, "".join(lines)


YAMLISH = st.text(alphabet=string.ascii_lowercase[:6] + "0123456789:-{}[]&*!|>'\"#%@ ,?\n\t_.",
                  max_size=200)


def check_problem_line(problem: str) -> None:
    assert_clear(problem)


def retyped_keys(mutation: str) -> list[str]:
    """The keys on the path of a lone retype: a refusal must name one of them."""
    if "+" in mutation or not mutation.startswith("retype@"):
        return []
    return [k for k in mutation.removeprefix("retype@").split("/") if k]


def assert_names_the_edit(problems: list[str], mutation: str) -> None:
    keys = retyped_keys(mutation)
    assert not keys or any(k in p for p in problems for k in keys), (mutation, problems)


def check_profile_result(path: Path, mutation: str = "") -> bool:
    """Load `path`: a profile or a ProfileError whose every line names the file."""
    try:
        loaded = load_profile_file(path)
    except ProfileError as exc:
        assert exc.problems, "ProfileError without problems"
        assert exc.path == str(path)
        for problem in exc.problems:
            check_problem_line(problem)
            assert problem.startswith(f"{path}:") or problem.startswith(f"{path} "), problem
            # FILE[:LINE]: something, never a bare path
            assert re.match(re.escape(str(path)) + r"(:\d+)?: \S", problem), problem
        assert_names_the_edit(exc.problems, mutation)
        return False
    assert isinstance(loaded.profile, Profile)
    return True


@fuzz(50, deadline=SLOW)
@given(st.sampled_from(PROFILE_IDS), st.data())
def test_profile_loader_on_mutated_shipped_profiles(fuzz_dir: Path, pid: str,
                                                    data: st.DataObject) -> None:
    mutation, text = data.draw(st.one_of(mutated_tree_text("profile", pid),
                                         mutated_text(shipped_text(pid))))
    path = write_case(fuzz_dir, text)
    check_profile_result(path, mutation)


@fuzz(150)
@given(st.one_of(YAMLISH, st.text(max_size=100),
                 st.builds(dump_yaml, YAML_VALUES),
                 st.binary(max_size=100)))
def test_profile_loader_on_random_text(fuzz_dir: Path, content: str | bytes) -> None:
    path = write_case(fuzz_dir, content)
    assert not check_profile_result(path)


@fuzz(12, deadline=SLOW)
@given(st.sampled_from(PROFILE_IDS), st.sampled_from(
    ["profile_format", "id", "modality", "protocol", "parameters", "limits", "operations",
     "telemetry", "safety"]), st.integers(2, 9))
def test_profile_loader_on_alias_bombs(fuzz_dir: Path, pid: str, key: str,
                                       width: int) -> None:
    """Billion-laughs YAML under any section: a quick, bounded refusal."""
    data = yaml.safe_load(shipped_text(pid))
    assume(key in data)
    data[key] = "__BOMB__"
    bomb = f"x-b0: &a0 [{', '.join(['lol'] * width)}]\n" + "".join(
        f"x-b{i}: &a{i} {{{', '.join(f'k{j}: *a{i - 1}' for j in range(width))}}}\n"
        if i % 2 else f"x-b{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]\n"
        for i in range(1, 9))
    text = bomb + yaml.safe_dump(data, sort_keys=False).replace("__BOMB__", "*a8")
    assert not check_profile_result(write_case(fuzz_dir, text))


def test_control_character_in_yaml_is_one_line_with_its_line(fuzz_dir: Path) -> None:
    text = shipped_text("hc-200").replace("model: HC-200", "model: HC-200\x0c", 1)
    path = write_case(fuzz_dir, text)
    with pytest.raises(ProfileError) as info:
        load_profile_file(path)
    [problem] = info.value.problems
    line = text[:text.index("\x0c")].count("\n") + 1
    assert "\n" not in problem and problem.startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("kind", ["profile", "plan"])
def test_problem_lines_stay_single_with_a_line_break_in_a_value(fuzz_dir: Path,
                                                                kind: str) -> None:
    if kind == "profile":
        data = copy.deepcopy(shipped_tree("profile", "es-4")[0])
        data["parameters"]["waveform"]["default"] = "symmetric\nbiphasic"
        loader: Callable[[Path], Any] = load_profile_file
        error: type[Exception] = ProfileError
    else:
        if PLAN_LOADER is not None:
            pytest.skip(PLAN_LOADER)
        data = copy.deepcopy(shipped_tree("plan", preset_names()[0])[0])
        data["steps"][0]["duration"] = "15\nm"
        loader, error = load_plan_file, PlanError
    with pytest.raises(error) as info:
        loader(write_case(fuzz_dir, dump_yaml(data)))
    for problem in info.value.problems:  # type: ignore[attr-defined]
        assert "\n" not in problem, problem


LONG_NAME = "x" * 300  # longer than NAME_MAX (255): stat() fails with ENAMETOOLONG


@pytest.mark.parametrize("where", ["resolve_profile", "load_plan", "plan file"])
def test_overlong_profile_or_plan_names_are_refused_not_a_crash(fuzz_dir: Path,
                                                                where: str) -> None:
    if where == "resolve_profile":
        with pytest.raises(ProfileError):
            resolve_profile(LONG_NAME)
        return
    if PLAN_LOADER is not None:
        pytest.skip(PLAN_LOADER)
    from controller.plans.plan import load_plan
    if where == "load_plan":
        with pytest.raises(PlanError):
            load_plan(LONG_NAME)
        return
    data = copy.deepcopy(shipped_tree("plan", preset_names()[0])[0])
    next(iter(data["devices"].values()))["profile"] = LONG_NAME
    with pytest.raises(PlanError):
        load_plan_file(write_case(fuzz_dir, dump_yaml(data)))


def test_profile_loader_on_an_oversized_file(fuzz_dir: Path) -> None:
    path = write_case(fuzz_dir, "a: " + "x" * 1_100_000 + "\n")
    assert not check_profile_result(path)


# =====================================================================================
# The plan loader
# =====================================================================================

try:
    from controller.plans.plan import PlanError, load_plan_file, preset_paths
    PLAN_LOADER: str | None = None
except ImportError as exc:  # another helper may still be writing it
    PLAN_LOADER = f"controller.plans.plan is not available yet: {exc}"

needs_plans = pytest.mark.skipif(PLAN_LOADER is not None, reason=PLAN_LOADER or "")


def preset_names() -> list[str]:
    return list(preset_paths()) if PLAN_LOADER is None else []


@cache
def plan_text(name: str) -> str:
    return preset_paths()[name].read_text(encoding="utf-8")


@cache
def _shipped_loaded(pid: str) -> Any:
    return resolve_profile(pid)


def _resolve_cached(ref: str) -> Any:
    """Shipped profiles parsed once: the plan fuzz is about the plan's own parsing."""
    return _shipped_loaded(ref) if ref in PROFILE_IDS else resolve_profile(ref)


def check_plan_result(path: Path, mutation: str = "") -> bool:
    import controller.plans.plan as plan_module
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(plan_module, "resolve_profile", _resolve_cached)
            plan = load_plan_file(path)
    except PlanError as exc:
        assert exc.problems, "PlanError without problems"
        for problem in exc.problems:
            check_problem_line(problem)
            line = problem.strip()
            # FILE[:LINE]: ... ; a profile's own problems follow, indented, naming theirs
            assert re.match(r"\S+?(:\d+)?: \S", line), problem
            assert problem.startswith((str(path), "  ")), problem
        assert_names_the_edit(exc.problems, mutation)
        return False
    assert plan.steps and plan.treatment_s() > 0
    return True


PLAN_STRATEGY = st.sampled_from(preset_names() or ["-"])


@needs_plans
@fuzz(100, deadline=SLOW)
@given(PLAN_STRATEGY, st.data())
def test_plan_loader_on_mutated_presets(fuzz_dir: Path, name: str,
                                        data: st.DataObject) -> None:
    mutation, text = data.draw(st.one_of(mutated_tree_text("plan", name),
                                         mutated_text(plan_text(name))))
    check_plan_result(write_case(fuzz_dir, text), mutation)


@st.composite
def random_plan(draw: st.DrawFn) -> str:
    """A plan-shaped document: right keys, random values."""
    roles = draw(st.lists(st.sampled_from(["heat", "ultrasound", "tens", "x"]), min_size=1,
                          max_size=3, unique=True))
    params = ["temperature_c", "intensity_w_cm2", "frequency_mhz", "duty_pct", "amplitude_ma",
              "frequency_hz", "pulse_width_us", "electrode_area_cm2", "bogus"]
    value = st.one_of(st.integers(-5, 500), st.floats(allow_nan=True), TEXT,
                      st.sampled_from(["40", "1.5", "continuous", "1e9"]))
    duration = st.one_of(st.sampled_from(["15m", "90s", "1m30s", "0", "-1", "1h", "15h", "",
                                          "2.5", "1e3", "nan"]),
                         st.integers(-10, 10**6), st.floats(allow_nan=True), TEXT)
    doc = {
        "plan_format": draw(st.sampled_from([1, 1, 1, 2, "1"])),
        "name": draw(st.one_of(TEXT, st.text(string.ascii_letters, min_size=75,
                                              max_size=90))),
        "devices": {r: {"profile": draw(st.sampled_from([*PROFILE_IDS, "nope", "",
                                                         "../x.yaml", "/etc"]))}
                    for r in roles},
        "steps": [{"name": draw(st.one_of(TEXT, st.sampled_from(["a; b", " ", "x" * 61]))),
                   "device": draw(st.sampled_from(
            [*roles, "other"])), "duration": draw(duration),
            "set": draw(st.dictionaries(st.sampled_from(params), value, max_size=4)),
            "pause_after": draw(st.one_of(st.just(0), duration))}
            for _ in range(draw(st.integers(0, 14)))],
    }
    for key in draw(st.lists(st.sampled_from(list(doc)), max_size=2, unique=True)):
        del doc[key]
    return dump_yaml(doc)


@needs_plans
@fuzz(80, deadline=SLOW)
@given(st.one_of(random_plan(), YAMLISH, st.binary(max_size=60)))
def test_plan_loader_on_random_plans(fuzz_dir: Path, content: str | bytes) -> None:
    check_plan_result(write_case(fuzz_dir, content))


# =====================================================================================
# Command-line parameter parsers
# =====================================================================================

DURATION_TEXT = st.one_of(
    st.from_regex(r"\A\s?[+-]?([0-9]{0,4}(\.[0-9]{0,3})?[hms]?){1,3}\s?\Z"),
    st.builds(lambda n, unit: "9" * n + unit, st.integers(300, 400),
              st.sampled_from(["", "h", "m", "s"])),
    st.text(alphabet="0123456789.hmsHMS+-eE :", max_size=12),
    st.text(max_size=10),
)


@fuzz(400)
@given(DURATION_TEXT)
def test_parse_duration_gives_positive_seconds_or_names_the_text(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except DurationError as exc:
        assert_clear(str(exc), f"'{text}'", single_line="\n" not in text and "\r" not in text,
                     echoed=len(text))
        assert str(exc).startswith("duration ")
        return
    assert math.isfinite(seconds) and seconds > 0


NAME_VALUE = st.one_of(
    st.builds(lambda n, v: f"{n}={v}", st.sampled_from(
        ["temperature_c", "intensity_w_cm2", "frequency_mhz", "duty_pct", "amplitude_ma",
         "frequency_hz", "pulse_width_us", "electrode_area_cm2", "channel", "waveform", "mode",
         "bogus", " temperature_c", ""]),
        st.one_of(st.from_regex(r"\A[+-]?[0-9]{0,4}(\.[0-9]{0,4})?([eE][+-]?[0-9]{1,3})?\Z"),
                  st.sampled_from(["", " ", "nan", "inf", "-0", "1e309", "continuous", "burst",
                                   "symmetric", "9" * 300, "40", "1.5", "3"]),
                  st.text(max_size=6))),
    st.text(max_size=12),
)


@fuzz(300)
@given(st.lists(NAME_VALUE, max_size=6))
def test_parse_settings_reads_every_pair_or_lists_every_bad_one(pairs: list[str]) -> None:
    try:
        out = parse_settings(pairs)
    except SettingsError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert_clear(problem, single_line=not any("\n" in p or "\r" in p for p in pairs),
                         echoed=sum(map(len, pairs)))
            assert "'" in problem  # quotes the pair or the name
        return
    assert len(out) <= len(pairs)
    for name, value in out.items():
        assert name == name.strip() and value == value.strip() and name and value


def numeric_limits_hold(prof: Profile, rx: Any) -> None:
    """An accepted prescription obeys every limit: the oracle for build_prescription."""
    for name, value in rx.values.items():
        if isinstance(value, str):
            assert value in (prof.parameters[name].choices or {})
            continue
        bound = effective_bound(prof, name, list(rx.regimes))
        assert bound is None or bound.admits(value), (name, value, bound)
        param = prof.parameters[name]
        if param.allowed is not None:
            assert any(math.isclose(value, a, rel_tol=1e-9) for a in param.allowed)
        if param.step is not None:
            base = prof.limits.absolute.get(name)
            origin = base.min if base is not None and base.min is not None else 0.0
            assert on_step(value, origin, param.step)
    bound = effective_bound(prof, DURATION, list(rx.regimes))
    assert bound is None or bound.admits(rx.duration_s)


@fuzz(300)
@given(st.sampled_from(PROFILE_IDS), st.lists(NAME_VALUE, max_size=6),
       st.one_of(st.floats(min_value=-10, max_value=5000), st.floats(),
                 st.sampled_from([0.5, 1.0, 60.0, 600.0, 1800.0, 3600.0])))
def test_build_prescription_accepts_only_what_the_limits_allow(
        pid: str, pairs: list[str], duration: float) -> None:
    prof = profile(pid)
    try:
        settings_ = parse_settings(pairs)
    except SettingsError:
        return
    try:
        rx = build_prescription(prof, settings_, duration)
    except PrescriptionRejected as exc:
        assert exc.problems and exc.profile_id == prof.id
        known = {*settings_, *prof.parameters, DURATION, *prof.limits.derived}
        for p in exc.problems:
            assert p.name in known or p.name, p
            assert_clear(p.message, p.name, single_line=not any(
                "\n" in v or "\r" in v for v in settings_.values()), echoed=sum(map(len, pairs)))
        return
    numeric_limits_hold(prof, rx)


@pytest.mark.parametrize("digits", [400, 5000])
def test_huge_integer_settings_are_rejected_not_a_crash(digits: int) -> None:
    settings_ = {"frequency_hz": "9" * digits, "amplitude_ma": "10"}
    with pytest.raises(PrescriptionRejected) as info:
        build_prescription(profile("es-4"), settings_, 60.0)
    assert any(p.name == "frequency_hz" for p in info.value.problems)


@needs_plans
def test_huge_integer_in_a_plan_is_a_plan_error(fuzz_dir: Path) -> None:
    data = next(d for d in (copy.deepcopy(shipped_tree("plan", n)[0]) for n in preset_names())
                if any(r["profile"] == "es-4" for r in d["devices"].values()))
    tens = {role for role, r in data["devices"].items() if r["profile"] == "es-4"}
    step = next(s for s in data["steps"] if s["device"] in tens)
    step["set"]["frequency_hz"] = int("9" * 400)
    with pytest.raises(PlanError) as info:
        load_plan_file(write_case(fuzz_dir, dump_yaml(data)))
    assert any("frequency_hz" in p for p in info.value.problems)


FAULT_VALUE = st.one_of(
    st.from_regex(r"\A[+-]?[0-9]{0,3}(\.[0-9]{0,3})?\Z"),
    st.sampled_from(["1", "0", "true", "no", "0.5", "2", "1,2", "2,1", "0,0", "-1,3", "nan",
                     "inf", "1e309", "-0", "9" * 5000, "1,2,3", "x"]),
    st.text(max_size=6),
)
FAULT_OPTION = st.one_of(
    st.builds(lambda n, v: f"{n}={v}", st.sampled_from([*FAULT_NAMES, "bogus", ""]),
              FAULT_VALUE),
    st.text(max_size=10),
)


@fuzz(300)
@given(st.lists(FAULT_OPTION, max_size=4), st.sampled_from(PROFILE_IDS))
def test_parse_faults_builds_a_plan_the_simulator_can_run_or_names_the_fault(
        options: list[str], pid: str) -> None:
    try:
        plan = parse_faults(options)
    except FaultError as exc:
        names = [o.partition("=")[0].strip() for o in options] + [f"'{o}'" for o in options]
        assert_clear(str(exc), *[n for n in names if n],
                     single_line=not any("\n" in o or "\r" in o for o in options),
                     echoed=sum(map(len, options)))
        return
    for name in plan.names_set():
        value = getattr(plan, name)
        numbers = value if isinstance(value, tuple) else (value,)
        assert all(math.isfinite(float(v)) for v in numbers), (name, value)
    assert 0.0 <= plan.garble <= 1.0 and 0.5 <= plan.miscal_gain <= 2.0
    prof = profile(pid)
    try:
        plan.check_applies(prof.modality)
    except FaultError as exc:
        assert_clear(str(exc), prof.modality)
        bad = plan.names_set() - LINK_FAULTS - MODALITY_FAULTS[prof.modality]
        assert bad and all(b in str(exc) for b in bad)
        return
    # A plan that applies must give a device that runs: build it and let time pass.
    now = [0.0]
    model = build_model(prof, plan, clock=lambda: now[0])
    endpoint = build_endpoint(prof, model)
    with no_logged_crash(*SIM_LOGGERS):
        for _ in range(5):
            now[0] += 0.5
            endpoint.tick(now[0])


# =====================================================================================
# main(argv): random command lines that never reach a device
# =====================================================================================

NO_PORT = "/nonexistent/modctl-fuzz/ttyFUZZ"
OK_EXITS = {0, 1, 2, 3, 4, 5}


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse: --help, usage errors
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return status, out.getvalue(), err.getvalue()


def assert_clean_exit(status: int, err: str, allowed: set[int] = OK_EXITS) -> None:
    assert isinstance(status, int)
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    assert status in allowed, (status, err)
    if status in (1, 2, 3):
        assert err.strip(), "a refusal printed nothing on stderr"


TEXT_ARG = st.text(alphabet=st.characters(blacklist_categories=["Cs"],
                                          blacklist_characters="\x00"), max_size=12)


@st.composite
def session_argv(draw: st.DrawFn, db: Path) -> list[str]:
    pid = draw(st.one_of(st.sampled_from(PROFILE_IDS), st.just("no-such-profile"), TEXT_ARG))
    argv = ["session", "run", pid]
    if draw(st.integers(0, 9)):
        argv += ["--port", draw(st.sampled_from([NO_PORT, NO_PORT + "2", "/nonexistent/"]))]
    if draw(st.integers(0, 9)):
        argv += ["--duration", draw(DURATION_TEXT.filter(lambda t: not t.startswith("-")))]
    for pair in draw(st.lists(NAME_VALUE.filter(lambda t: not t.startswith("-")), max_size=4)):
        argv += ["--set", pair]
    if draw(st.booleans()):
        argv.append("--json")
    if draw(st.integers(0, 4)) == 0:
        argv += ["--operator", draw(TEXT_ARG.filter(lambda t: not t.startswith("-")))]
    if draw(st.integers(0, 4)) == 0:
        argv += ["--patient", draw(TEXT_ARG.filter(lambda t: not t.startswith("-")))]
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(2, len(argv))), draw(st.sampled_from(
            ["--bogus", "-x", "--", "--set", "--port"])))
    return [*argv, "--db", str(db)]


@pytest.fixture(scope="module")
def records_db(fuzz_dir: Path) -> Path:
    return fuzz_dir / "records.sqlite"


@fuzz(40, deadline=SLOW)
@given(st.data())
def test_main_session_run_never_crashes_and_never_reaches_a_device(
        records_db: Path, data: st.DataObject) -> None:
    argv = data.draw(session_argv(records_db))
    status, out, err = run_main(argv)
    # 0 and 4 need a device that ran: there is none on these ports. 1: no such profile.
    assert_clean_exit(status, err, {1, 2, 3, 5})
    if status == 5:  # a valid prescription: the session ends naming the missing port
        ports = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--port"]
        assert any(p in out + err for p in ports), (out, err)
    if "--json" in argv and status in (3, 5) and out.strip():
        report = json.loads(out.strip().splitlines()[-1])
        assert report["outcome"] in ("rejected", "fault")


@fuzz(25, deadline=SLOW)
@given(st.lists(st.one_of(
    st.tuples(st.just("ok"), st.sampled_from(PROFILE_IDS)),
    st.tuples(st.just("mutated"), st.sampled_from(PROFILE_IDS)),
    st.tuples(st.just("missing"), TEXT)), min_size=1, max_size=2), st.data())
def test_main_profiles_validate_exits_0_or_1_with_every_problem_named(
        fuzz_dir: Path, files: list[tuple[str, str]], data: st.DataObject) -> None:
    paths: list[str] = []
    for kind, ref in files:
        if kind == "ok":
            paths.append(str(shipped_profile_paths()[ref]))
        elif kind == "mutated":
            _, text = data.draw(st.one_of(mutated_tree_text("profile", ref),
                                          mutated_text(shipped_text(ref))))
            paths.append(str(write_case(fuzz_dir, text)))
        else:
            paths.append(str(fuzz_dir / "absent" / (ref.replace("/", "_") or "x")))
    assume(not any(p.startswith("-") for p in paths))
    status, out, err = run_main(["profiles", "validate", *paths])
    assert_clean_exit(status, err, {0, 1})
    valid = [p for p in paths if f"{p}: ok (" in out]
    assert (status == 0) == (len(valid) == len(paths))
    for line in err.split("\n"):  # not splitlines(): a path may hold \x1c..\x1e
        if line:
            assert any(line.startswith(p) for p in paths), line


class _ServedAtOnce:
    """simulate_cmd's stop event, already set: a valid command serves, then returns."""

    def set(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        return True


@fuzz(40, deadline=SLOW)
@given(st.one_of(st.sampled_from(PROFILE_IDS), TEXT_ARG.filter(lambda t: not t.startswith("-"))),
       st.lists(FAULT_OPTION.filter(lambda t: not t.startswith("-")), max_size=3))
def test_main_simulate_exits_cleanly_and_only_serves_valid_faults(
        pid: str, faults: list[str]) -> None:
    argv = ["simulate", pid]
    for fault in faults:
        argv += ["--fault", fault]
    with pytest.MonkeyPatch.context() as mp:
        # The real device and pty; only the wait for Ctrl-C is cut short.
        mp.setattr(simulate_cmd, "threading", SimpleNamespace(Event=_ServedAtOnce))
        mp.setattr(simulate_cmd, "signal", SimpleNamespace(
            signal=lambda *a: None, SIGINT=signal.SIGINT, SIGTERM=signal.SIGTERM))
        status, out, err = run_main(argv)
    assert_clean_exit(status, err, {0, 1, 2})
    expected_ok = pid in PROFILE_IDS
    if expected_ok:
        try:
            parse_faults(faults).check_applies(profile(pid).modality)
        except FaultError:
            expected_ok = False
    assert (status == 0) == expected_ok, (status, err)
    if status == 0:
        assert re.search(r"^port: /dev/pts/\d+$", out, re.M), out


try:
    from controller.cli.plan_cmd import parse_devices
    PLAN_CLI: str | None = None
except ImportError as exc:
    PLAN_CLI = f"controller.cli.plan_cmd is not available yet: {exc}"

needs_plan_cli = pytest.mark.skipif(PLAN_CLI is not None or PLAN_LOADER is not None,
                                    reason=PLAN_CLI or PLAN_LOADER or "")


@needs_plan_cli
@fuzz(25, deadline=SLOW)
@given(PLAN_STRATEGY, st.data())
def test_main_plan_validate_exits_0_or_1_with_every_problem_named(
        fuzz_dir: Path, name: str, data: st.DataObject) -> None:
    _, text = data.draw(st.one_of(mutated_tree_text("plan", name),
                                  mutated_text(plan_text(name))))
    path = str(write_case(fuzz_dir, text))
    status, _, err = run_main(["plan", "validate", path])
    assert_clean_exit(status, err, {0, 1})
    assert (status == 0) == (not err.strip())


@needs_plan_cli
@fuzz(200)
@given(st.lists(st.one_of(
    st.builds(lambda r, p: f"{r}={p}", st.sampled_from(["heat", "tens", "", " x "]),
              st.sampled_from(["/dev/pts/3", "", "=", " /dev/ttyUSB0 "])),
    TEXT), max_size=4))
def test_parse_devices_reads_every_role_or_names_every_bad_pair(pairs: list[str]) -> None:
    from controller.cli.common import UsageError
    try:
        out = parse_devices(pairs)
    except UsageError as exc:
        assert_clear(str(exc), "--device", echoed=sum(map(len, pairs)))
        return
    assert all(role and port and role == role.strip() for role, port in out.items())
