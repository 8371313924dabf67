"""The SCPI line engine over a real pseudo-terminal, against a scripted device.

FakeUs300 is written from the interface document, independently of the codec:
its own header matching, checksum and reply formatting.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from functools import reduce
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
from protocols.transport import SerialSettings, SerialTransport
from tests.pty_peer import PtyPeer, Responder, pty_peer

PROFILE = resolve_profile("us-300").profile
assert isinstance(PROFILE.protocol, ScpiMap)
US300: ScpiMap = PROFILE.protocol
TIMEOUT = PROFILE.link.reply_timeout_s
RETRIES = PROFILE.safety.retry_budget
SETTINGS = SerialSettings(baudrate=115200)
# Generous bound on scheduling noise for the timing assertions.
SLACK_S = 0.3


def hh(text: str) -> str:
    return format(reduce(operator.xor, text.encode("ascii"), 0), "02X")


def req(text: str) -> bytes:
    return f"{text}*{hh(text)}\n".encode("ascii")


def keyword_matches(given: str, long: str) -> bool:
    short = "".join(c for c in long if c.isupper() or c.isdigit() or c == "*")
    return given.upper() in (long.upper(), short.upper())


def header_matches(given: str, long: str) -> bool:
    parts, wanted = given.split(":"), long.split(":")
    return len(parts) == len(wanted) and all(map(keyword_matches, parts, wanted))


class FakeUs300:
    """A US-300 with just enough behaviour, plus fault injection."""

    HEADERS = ("*IDN", "*RST", "SYSTem:ERRor", "SOURce:FREQuency", "SOURce:INTensity",
               "OUTPut", "ABORt", "STATus", "SYSTem:SERVice", "CALibration:POWer:GAIN")

    def __init__(self) -> None:
        self.buf = b""
        self.lines: list[str] = []
        self.errors: deque[tuple[int, str]] = deque(maxlen=8)
        self.freq, self.intensity, self.output, self.gain = 1, 0.0, False, 1.0
        self.service = False
        self.silent = False
        self.corrupt_next = 0       # replies to damage on the way back
        self.checksum_error_next = 0  # requests "damaged on the way in"
        self.runaway_next = 0       # replies replaced by a long line without LF

    def __call__(self, data: bytes) -> bytes:
        self.buf += data
        out = b""
        while b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            out += self.handle(line.rstrip(b"\r").decode("ascii"))
        return out

    def handle(self, line: str) -> bytes:
        self.lines.append(line)
        if self.silent:
            return b""
        if self.runaway_next:
            self.runaway_next -= 1
            return b"X" * 300
        checked = len(line) >= 3 and line[-3] == "*"
        if checked and (hh(line[:-3]) != line[-2:] or self.checksum_error_next):
            self.checksum_error_next = max(0, self.checksum_error_next - 1)
            answer = self.err(-350, "Checksum error")
        else:
            answer = self.execute(line[:-3] if checked else line)
        if checked:
            answer += "*" + hh(answer)
        wire = (answer + "\r\n").encode("ascii")
        if self.corrupt_next:
            self.corrupt_next -= 1
            wire = b"#" + wire[1:]
        return wire

    def err(self, code: int, text: str) -> str:
        self.errors.append((code, text))
        return f'ERR {code},"{text}"'

    def execute(self, body: str) -> str:
        head, _, arg = body.partition(" ")
        query = head.endswith("?")
        name = next((h for h in self.HEADERS if header_matches(head.rstrip("?"), h)), None)
        if name is None:
            return self.err(-113, "Undefined header")
        if query:
            return self.query(name)
        return self.command(name, arg.split(",") if arg else [])

    def query(self, name: str) -> str:
        if name == "SYSTem:ERRor":
            code, text = self.errors.popleft() if self.errors else (0, "No error")
            return f'{code},"{text}"'
        answers = {
            "*IDN": "Generic Therapy Devices,US-300,SN0042,1.2.0",
            "SOURce:FREQuency": str(self.freq),
            "SOURce:INTensity": f"{self.intensity:.1f}",
            "OUTPut": "ON" if self.output else "OFF",
            "STATus": f"{'RUN' if self.output else 'IDLE'},12,288,{87 if self.output else 0},0",
            "CALibration:POWer:GAIN": f"{self.gain:.3f}",
        }
        return answers.get(name) or self.err(-400, "Query error")

    def command(self, name: str, args: list[str]) -> str:
        if name in ("*RST", "ABORt"):
            self.output = False
            if name == "*RST":
                self.errors.clear()
            return "OK"
        if name == "SOURce:INTensity" and len(args) == 1:
            value = float(args[0])
            if not 0.0 <= value <= 3.0:
                return self.err(-222, "Data out of range")
            self.intensity = value
        elif name == "SOURce:FREQuency" and args in (["1"], ["3"]):
            self.freq = int(args[0])
        elif name == "OUTPut" and args in (["ON"], ["OFF"]):
            if args == ["ON"] and self.intensity == 0.0:
                return self.err(-221, "Settings conflict")
            self.output = args == ["ON"]
        elif name == "SYSTem:SERVice" and args in (["ON", "4321"], ["OFF"]):
            self.service = args[0] == "ON"
        elif name == "CALibration:POWer:GAIN" and len(args) == 1:
            if not self.service:
                return self.err(-221, "Settings conflict")
            self.gain = float(args[0])
        else:
            return self.err(-102, "Syntax error")
        return "OK"


@contextmanager
def engine_for(responder: Responder, pmap: ScpiMap = US300, timeout: float = TIMEOUT,
               retries: int = RETRIES) -> Iterator[tuple[ScpiEngine, PtyPeer]]:
    with pty_peer(responder) as peer:
        engine = ScpiEngine(SerialTransport(peer.port, SETTINGS), pmap, timeout, retries)
        try:
            yield engine, peer
        finally:
            engine.close()


def short_form(pmap: ScpiMap) -> ScpiMap:
    return pmap.model_copy(update={"use_short_form": True})


# -- normal exchanges -----------------------------------------------------------------

def test_set_query_and_action_long_form() -> None:
    fake = FakeUs300()
    with engine_for(fake) as (engine, peer):
        assert engine.write("intensity", {"value": 1.5}) == {}
        assert engine.write("output", {"value": "ON"}) == {}
        got = engine.read(["intensity", "status", "output"])
        engine.write("abort", {})
        assert bytes(peer.received) == b"".join([
            req("SOURce:INTensity 1.5"), req("OUTPut ON"), req("SOURce:INTensity?"),
            req("STATus?"), req("OUTPut?"), req("ABORt")])
    assert got == {"intensity.value": 1.5, "status.state": "RUN", "status.elapsed": 12,
                   "status.remaining": 288, "status.contact": 87, "status.fault": 0,
                   "output.value": "ON"}
    assert not fake.output


def test_short_form() -> None:
    fake = FakeUs300()
    with engine_for(fake, short_form(US300)) as (engine, peer):
        engine.write("intensity", {"value": 1.5})
        engine.write("service", {"state": "ON", "pin": "4321"})
        engine.write("cal_gain", {"value": 1.05})
        engine.write("service", {"state": "OFF"})
        idn = engine.read(["idn", "cal_gain"])
        engine.write("reset", {})
        assert bytes(peer.received) == b"".join([
            req("SOUR:INT 1.5"), req("SYST:SERV ON,4321"), req("CAL:POW:GAIN 1.050"),
            req("SYST:SERV OFF"), req("*IDN?"), req("CAL:POW:GAIN?"), req("*RST")])
    assert idn == {"idn.vendor": "Generic Therapy Devices", "idn.model": "US-300",
                   "idn.serial": "SN0042", "idn.firmware": "1.2.0", "cal_gain.value": 1.05}


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
    with engine_for(FakeUs300()) as (engine, peer):
        with pytest.raises(ValueRejected, match=match):
            engine.write(entry, args)
        with pytest.raises(ValueRejected):
            engine.read(["reset"])
        time.sleep(0.02)
        assert peer.received == b""


def test_line_too_long_refused_host_side() -> None:
    with engine_for(FakeUs300()) as (engine, peer):
        with pytest.raises(ValueRejected, match="at most 128"):
            engine.write("service", {"state": "ON", "pin": "9" * 120})
        time.sleep(0.02)
        assert peer.received == b""


def test_stale_input_discarded_and_exchanges_logged(caplog: pytest.LogCaptureFixture) -> None:
    with engine_for(FakeUs300()) as (engine, peer):
        peer.send(b"OFF*" + hh("OFF").encode() + b"\r\n")  # a late reply to nothing
        time.sleep(0.02)
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

    with engine_for(slow) as (engine, peer):
        peer_box.append(peer)
        assert engine.read(["status"])["status.remaining"] == 288


# -- device errors --------------------------------------------------------------------

def test_err_raised_with_code_text_and_queue_drained() -> None:
    fake = FakeUs300()
    fake.errors.extend([(-113, "Undefined header"), (-102, "Syntax error")])  # stale
    with engine_for(fake, short_form(US300)) as (engine, peer):
        with pytest.raises(DeviceRefused) as info:
            engine.write("output", {"value": "ON"})
        assert bytes(peer.received) == req("OUTP ON") + 4 * req("SYST:ERR?")
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

    with engine_for(always_error) as (engine, peer), pytest.raises(DeviceRefused):
        engine.read(["status"])
    assert peer.received.count(b"SYSTem:ERRor?") == MAX_DRAIN_QUERIES


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

    with engine_for(paused) as (engine, peer), pytest.raises(ProtocolViolation):
        engine.read(["status"])
    assert peer.received.count(b"\n") == 1


# -- link failures --------------------------------------------------------------------

def test_silence_is_link_timeout_in_bounded_time() -> None:
    fake = FakeUs300()
    fake.silent = True
    with engine_for(fake, timeout=0.05, retries=2) as (engine, _):
        start = time.monotonic()
        with pytest.raises(LinkTimeout, match="3 attempt"):
            engine.read(["status"])
        elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 0.15 + SLACK_S
    assert len(fake.lines) == 3


def test_peer_closed_is_link_lost_without_retries() -> None:
    with engine_for(FakeUs300()) as (engine, peer):
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
    script = {
        b"SOUR:POW:DENS 150\r\n": b"DONE\r\n",
        b"SOUR:POW:DENS?\r\n": b"150\r\n",
        b"OUTP:STAT ON\r\n": b'FAIL -241,"Hardware missing"\r\n',
        b"SYST:ERR:NEXT?\r\n": b'0,"No error"\r\n',
        b"STAT:OPER:COND?\r\n": b"HOLD,30,270,12,0\r\n",
        b"CAL:POW:GAIN 1.0125\r\n": b"DONE\r\n",
    }
    pmap = invented_profile(tmp_path)
    with engine_for(lambda data: script.get(data, b"?\r\n"), pmap) as (engine, peer):
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
        assert bytes(peer.received) == b"".join([
            b"SOUR:POW:DENS 150\r\n", b"SOUR:POW:DENS?\r\n", b"OUTP:STAT ON\r\n",
            b"SYST:ERR:NEXT?\r\n", b"STAT:OPER:COND?\r\n", b"CAL:POW:GAIN 1.0125\r\n"])
    assert status == {"status.state": "HOLD", "status.elapsed": 30, "status.remaining": 270,
                      "status.contact": 12, "status.fault": 0}
