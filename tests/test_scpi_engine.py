"""The SCPI line engine against a scripted device: in memory, byte for byte.

FakeUs300 (tests.support.devices) is written from the interface document,
independently of the codec: its own header matching, checksum and reply
formatting. The tests about real time or a real port (silence, a reply in two
pieces, a peer that goes away) run over a pseudo-terminal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.profiles.loader import load_profile_file, resolve_profile, shipped_profile_paths
from protocols.errors import (
    CorruptReply,
    DeviceRefused,
    LinkLost,
    LinkTimeout,
    ProtocolViolation,
    ValueRejected,
)
from protocols.map_scpi import ScpiMap
from protocols.scpi import MAX_DRAIN_QUERIES, QueuedRefusal, ScpiEngine
from protocols.transport import SerialSettings, SerialTransport, Transport
from tests.pty_peer import PtyPeer, Responder, pty_peer
from tests.support.devices import FakeUs300, hh, req
from tests.support.ports import ScriptedPort
from tests.support.protocol import expected_protocol

PROFILE = resolve_profile("us-300").profile
assert isinstance(PROFILE.protocol, ScpiMap)
US300: ScpiMap = PROFILE.protocol
TIMEOUT = PROFILE.link.reply_timeout_s
RETRIES = PROFILE.safety.retry_budget
SETTINGS = SerialSettings(baudrate=115200)
# Generous bound on scheduling noise for the timing assertions.
SLACK_S = 0.3


@contextmanager
def engine_for(responder: Responder, pmap: ScpiMap = US300, timeout: float = TIMEOUT,
               retries: int = RETRIES) -> Iterator[tuple[ScpiEngine, ScriptedPort]]:
    """An engine on a port in memory, in virtual time."""
    with ScriptedPort(responder) as port:
        yield ScpiEngine(port, pmap, timeout, retries), port


@contextmanager
def engine_on_pty(responder: Responder, pmap: ScpiMap = US300, timeout: float = TIMEOUT,
                  retries: int = RETRIES) -> Iterator[tuple[ScpiEngine, PtyPeer]]:
    """An engine on a real pseudo-terminal, for the tests about real time and the port."""
    with pty_peer(responder) as peer:
        engine = ScpiEngine(SerialTransport(peer.port, SETTINGS), pmap, timeout, retries)
        try:
            yield engine, peer
        finally:
            engine.close()


def us300_engine(pmap: ScpiMap = US300) -> Callable[[Transport], ScpiEngine]:
    """An engine factory for expected_protocol."""
    return lambda port: ScpiEngine(port, pmap, TIMEOUT, RETRIES)


def short_form(pmap: ScpiMap) -> ScpiMap:
    return pmap.model_copy(update={"use_short_form": True})


# -- normal exchanges -----------------------------------------------------------------

def test_set_query_and_action_long_form() -> None:
    # Each line ends in *HH, the XOR of the bytes before the asterisk, and LF; the device
    # answers with its own *HH and CR LF.
    with expected_protocol(us300_engine(), [
        (b"SOURce:INTensity 1.5*62\n", b"OK*04\r\n"),
        (b"OUTPut ON*3E\n", b"OK*04\r\n"),
        (b"SOURce:INTensity?*57\n", b"1.5*2A\r\n"),
        (b"STATus?*2B\n", b"RUN,12,288,87,0*47\r\n"),
        (b"OUTPut?*20\n", b"ON*01\r\n"),
        (b"ABORt*6A\n", b"OK*04\r\n"),
    ]) as engine:
        assert engine.write("intensity", {"value": 1.5}) == {}
        assert engine.write("output", {"value": "ON"}) == {}
        got = engine.read(["intensity", "status", "output"])
        assert engine.write("abort", {}) == {}
    assert got == {"intensity.value": 1.5, "status.state": "RUN", "status.elapsed": 12,
                   "status.remaining": 288, "status.contact": 87, "status.fault": 0,
                   "output.value": "ON"}


def test_short_form() -> None:
    with expected_protocol(us300_engine(short_form(US300)), [
        (b"SOUR:INT 1.5*78\n", b"OK*04\r\n"),
        (b"SYST:SERV ON,4321*2C\n", b"OK*04\r\n"),
        (b"CAL:POW:GAIN 1.050*0D\n", b"OK*04\r\n"),
        (b"SYST:SERV OFF*4A\n", b"OK*04\r\n"),
        (b"*IDN?*56\n", b"Generic Therapy Devices,US-300,SN0042,1.2.0*45\r\n"),
        (b"CAL:POW:GAIN?*38\n", b"1.050*2A\r\n"),
        (b"*RST*7F\n", b"OK*04\r\n"),
    ]) as engine:
        engine.write("intensity", {"value": 1.5})
        engine.write("service", {"state": "ON", "pin": "4321"})
        engine.write("cal_gain", {"value": 1.05})
        engine.write("service", {"state": "OFF"})
        idn = engine.read(["idn", "cal_gain"])
        engine.write("reset", {})
    assert idn == {"idn.vendor": "Generic Therapy Devices", "idn.model": "US-300",
                   "idn.serial": "SN0042", "idn.firmware": "1.2.0", "cal_gain.value": 1.05}


def test_the_fake_us300_executes_what_the_engine_sends() -> None:
    fake = FakeUs300()
    with engine_for(fake) as (engine, port):
        engine.write("intensity", {"value": 1.5})
        engine.write("output", {"value": "ON"})
        assert engine.read(["status"])["status.state"] == "RUN"
        engine.write("abort", {})
        assert port.received == req("SOURce:INTensity 1.5") + req("OUTPut ON") + \
            req("STATus?") + req("ABORt")
    assert not fake.output


@pytest.mark.parametrize(("entry", "args", "match"), [
    ("intensity", {"value": 3.5}, r"intensity \(SOURce:INTensity\): value=3.5 refused: "
                                  r"outside the accepted range 0\.\.3, step 0\.1 W/cm2"),
    ("intensity", {"value": 1.55}, "at most 1 decimals"),
    ("frequency", {"value": 2}, "one of 1, 3"),
    ("time", {"value": 0}, r"1\.\.1800"),
    ("output", {"value": "on"}, "one of ON, OFF"),
    ("service", {"pin": "4321"}, "'state' is missing"),
    ("abort", {"value": 1}, "takes no arguments"),
    ("status", {}, "cannot be set"),
    ("nonsense", {}, "not an entry"),
])
def test_refused_host_side_nothing_sent(entry: str, args: dict[str, Any], match: str) -> None:
    with engine_for(FakeUs300()) as (engine, port):
        with pytest.raises(ValueRejected, match=match):
            engine.write(entry, args)
        with pytest.raises(ValueRejected):
            engine.read(["reset"])
        assert port.received == b""


def test_line_too_long_refused_host_side() -> None:
    with engine_for(FakeUs300()) as (engine, port):
        with pytest.raises(ValueRejected, match="at most 128"):
            engine.write("service", {"state": "ON", "pin": "9" * 120})
        assert port.received == b""


def test_stale_input_discarded_and_exchanges_logged(caplog: pytest.LogCaptureFixture) -> None:
    with engine_for(FakeUs300()) as (engine, port):
        port.send(b"OFF*" + hh("OFF").encode() + b"\r\n")  # a late reply to nothing
        with caplog.at_level(logging.DEBUG, logger="protocols.scpi"):
            assert engine.read(["frequency"]) == {"frequency.value": 1}
    assert any("frequency" in r.getMessage() and "SOURce:FREQuency?" in r.getMessage()
               for r in caplog.records)


def test_reply_split_across_chunks() -> None:
    peer_box: list[PtyPeer] = []

    def slow(data: bytes) -> bytes:
        reply = FakeUs300()(data)
        threading.Timer(0.03, peer_box[0].send, [reply[5:]]).start()
        return reply[:5]

    with engine_on_pty(slow) as (engine, peer):
        peer_box.append(peer)
        assert engine.read(["status"])["status.remaining"] == 288


# -- device errors --------------------------------------------------------------------

def test_err_raised_with_code_text_and_queue_drained() -> None:
    fake = FakeUs300()
    fake.errors.extend([(-113, "Undefined header"), (-102, "Syntax error")])  # stale
    with engine_for(fake, short_form(US300)) as (engine, port):
        with pytest.raises(DeviceRefused) as info:
            engine.write("output", {"value": "ON"})
        assert bytes(port.received) == req("OUTP ON") + 4 * req("SYST:ERR?")
    exc = info.value
    assert (exc.entry, exc.code, exc.text) == ("output", -221, "Settings conflict")
    assert isinstance(exc, QueuedRefusal)
    assert exc.queued == [(-113, "Undefined header"), (-102, "Syntax error"),
                          (-221, "Settings conflict")]
    assert not fake.errors
    assert fake.lines.count("OUTP ON*" + hh("OUTP ON")) == 1  # a refusal is never retried


def test_drain_is_bounded() -> None:
    fake = FakeUs300()
    fake.errors.extend([(-100, "Command error")] * 8)
    with engine_for(fake) as (engine, _), pytest.raises(QueuedRefusal) as info:
        engine.read(["power"])  # this fake does not know MEASure:POWer
    # The queue of 8 dropped its oldest for the new -113: 8 pops, one "No error".
    assert len(info.value.queued) == 8 and info.value.queued[-1] == (-113, "Undefined header")
    assert fake.lines.count("SYSTem:ERRor?*" + hh("SYSTem:ERRor?")) == MAX_DRAIN_QUERIES

    def always_error(data: bytes) -> bytes:
        text = "ERR -200,\"x\"" if data.startswith(b"STAT") else '-200,"x"'
        return f"{text}*{hh(text)}\r\n".encode()

    with engine_for(always_error) as (engine, port), pytest.raises(DeviceRefused):
        engine.read(["status"])
    assert port.received.count(b"SYSTem:ERRor?") == MAX_DRAIN_QUERIES


def test_checksum_error_answer_is_retried_and_drained() -> None:
    fake = FakeUs300()
    fake.checksum_error_next = 2
    with engine_for(fake) as (engine, _):
        engine.write("intensity", {"value": 2.0})
    assert fake.intensity == 2.0
    assert fake.lines.count("SOURce:INTensity 2.0*" + hh("SOURce:INTensity 2.0")) == 3
    assert not fake.errors

    fake = FakeUs300()
    fake.checksum_error_next = RETRIES + 1
    with engine_for(fake) as (engine, _), pytest.raises(QueuedRefusal) as info:
        engine.write("intensity", {"value": 2.0})
    assert info.value.code == -350
    assert info.value.queued == [(-350, "Checksum error")] * (RETRIES + 1)


def test_corrupt_reply_is_retried() -> None:
    fake = FakeUs300()
    fake.corrupt_next = RETRIES
    with engine_for(fake) as (engine, _):
        assert engine.read(["frequency"]) == {"frequency.value": 1}
    fake = FakeUs300()
    fake.corrupt_next = RETRIES + 1
    with engine_for(fake) as (engine, _), pytest.raises(CorruptReply, match="checksum"):
        engine.read(["frequency"])
    assert len(fake.lines) == RETRIES + 1


def test_runaway_reply_line_is_corrupt_not_buffered() -> None:
    fake = FakeUs300()
    fake.runaway_next = 1
    with engine_for(fake) as (engine, _):
        assert engine.read(["output"]) == {"output.value": "OFF"}
    fake = FakeUs300()
    fake.runaway_next = 1
    with engine_for(fake, retries=0) as (engine, _), \
            pytest.raises(CorruptReply, match="longer than 128"):
        engine.read(["output"])


def test_unknown_enum_answer_is_a_violation() -> None:
    def paused(data: bytes) -> bytes:
        text = "PAUSED,1,2,3,0"
        return f"{text}*{hh(text)}\r\n".encode()

    with engine_for(paused) as (engine, port), pytest.raises(ProtocolViolation):
        engine.read(["status"])
    assert port.received.count(b"\n") == 1


# -- link failures --------------------------------------------------------------------

def test_silence_is_link_timeout_in_bounded_time() -> None:
    fake = FakeUs300()
    fake.silent = True
    with engine_on_pty(fake, timeout=0.05, retries=2) as (engine, _):
        start = time.monotonic()
        with pytest.raises(LinkTimeout, match="3 attempt"):
            engine.read(["status"])
        elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 0.15 + SLACK_S
    assert len(fake.lines) == 3


def test_peer_closed_is_link_lost_without_retries() -> None:
    with engine_on_pty(FakeUs300()) as (engine, peer):
        engine.read(["status"])
        peer.close()
        start = time.monotonic()
        with pytest.raises(LinkLost):
            engine.read(["status"])
        assert time.monotonic() - start < TIMEOUT


# -- a device the code has never heard of ---------------------------------------------

def invented_profile(tmp_path: Path) -> ScpiMap:
    """US-300 operations over other spellings, scaling, words and framing."""
    doc = yaml.safe_load(shipped_profile_paths()["us-300"].read_text())
    doc["id"] = "us-900"
    proto = doc["protocol"]
    proto.update(use_checksum=False, use_short_form=True, request_terminator="\r\n",
                 ok_reply="DONE", error_prefix="FAIL", max_line_length=40)
    cmds = proto["commands"]
    cmds["error"]["header"] = "SYSTem:ERRor:NEXT"
    cmds["output"]["header"] = "OUTPut:STATe"
    cmds["intensity"] = {  # centi-W/cm² on the wire
        "header": "SOURce:POWer:DENSity",
        "set": [{"name": "value", "type": "int", "scale": 0.01, "min": 0, "max": 300,
                 "step": 10}],
        "query": [{"name": "value", "type": "int", "scale": 0.01}]}
    cmds["status"]["header"] = "STATus:OPERation:CONDition"
    cmds["cal_gain"]["set"][0]["decimals"] = 4
    path = tmp_path / "us-900.yaml"
    path.write_text(yaml.safe_dump(doc))
    pmap = load_profile_file(path).profile.protocol
    assert isinstance(pmap, ScpiMap)
    return pmap


def test_invented_device_byte_for_byte(tmp_path: Path) -> None:
    pmap = invented_profile(tmp_path)
    with expected_protocol(us300_engine(pmap), [
        (b"SOUR:POW:DENS 150\r\n", b"DONE\r\n"),
        (b"SOUR:POW:DENS?\r\n", b"150\r\n"),
        (b"OUTP:STAT ON\r\n", b'FAIL -241,"Hardware missing"\r\n'),
        (b"SYST:ERR:NEXT?\r\n", b'0,"No error"\r\n'),
        (b"STAT:OPER:COND?\r\n", b"HOLD,30,270,12,0\r\n"),
        (b"CAL:POW:GAIN 1.0125\r\n", b"DONE\r\n"),
    ]) as engine:
        engine.write("intensity", {"value": 1.5})
        assert engine.read(["intensity"]) == {"intensity.value": 1.5}
        with pytest.raises(QueuedRefusal) as info:
            engine.write("output", {"value": "ON"})
        assert (info.value.code, info.value.text, info.value.queued) == \
            (-241, "Hardware missing", [])
        status = engine.read(["status"])
        engine.write("cal_gain", {"value": 1.0125})
        with pytest.raises(ValueRejected, match=r"0\.\.3, step 0\.1"):
            engine.write("intensity", {"value": 3.1})
        with pytest.raises(ValueRejected, match="at most 40"):
            engine.write("service", {"state": "ON", "pin": "1" * 30})
    assert status == {"status.state": "HOLD", "status.elapsed": 30, "status.remaining": 270,
                      "status.contact": 12, "status.fault": 0}
