"""The framed binary engine against a small scripted ES-4-like device, in memory.

Both read paths are exercised (plain reads, and the `read_some` SerialTransport
offers). The tests about real time or a real port (silence, lost replies, a
peer that goes away, events that trickle in) run over a pseudo-terminal.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from controller.profiles.loader import load_profile_file, resolve_profile
from protocols.engine import DeviceEvent
from protocols.errors import (
    DeviceRefused,
    LinkLost,
    LinkTimeout,
    ProtocolViolation,
    ValueRejected,
)
from protocols.framed import EVENT_QUEUE_MAX, FramedEngine
from protocols.map_framed import FramedMap
from protocols.transport import SerialSettings, SerialTransport, Transport
from tests.pty_peer import PtyPeer
from tests.support.crc import ccitt_crc_bytes
from tests.support.devices import (
    CONFIGURE,
    EVENT,
    GET_STATUS,
    PING,
    STATUS_PAYLOAD,
    STOP,
    ScriptedDevice,
    es4_event,
    ref_frame,
)
from tests.support.ports import ScriptedPort, ScriptedPortReadSome
from tests.support.protocol import expected_protocol

ES4 = resolve_profile("es-4").profile


def _es4_map() -> FramedMap:
    assert isinstance(ES4.protocol, FramedMap)
    return ES4.protocol


ES4_MAP = _es4_map()
SETTINGS = SerialSettings(baudrate=115200)
TIMEOUT_S = 0.5  # generous: these tests share the machine; timeout tests set their own


class ReadSomeTransport(SerialTransport):
    """SerialTransport plus the optional `read_some` the engine uses when offered."""

    def read_some(self, n: int, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b""
        fd = self._port.fileno()  # test-only peek at the pyserial port
        try:
            ready, _, _ = select.select([fd], [], [], remaining)
            data = os.read(fd, n) if ready else b""
        except OSError as exc:
            raise LinkLost(str(exc)) from None
        if ready and not data:
            raise LinkLost("device disconnected")
        return data


Port = ScriptedPort | PtyPeer
Opener = Callable[..., tuple[FramedEngine, Port]]


def seq_before(pmap: FramedMap, seq: int) -> int:
    """The request SEQ the engine uses just before `seq` (skipping the events' SEQ)."""
    event_seq = pmap.events.seq if pmap.events else None
    seqs = [s for s in range(pmap.seq_min, pmap.seq_max + 1) if s != event_seq]
    return seqs[seqs.index(seq) - 1]


def make_opener(stack: ExitStack, connect: Callable[[Callable[[bytes], bytes]],
                                                    tuple[Transport, Port]]) -> Opener:
    """Engine and port for a device; see open_engine."""
    def opener(device: Callable[[bytes], bytes], pmap: FramedMap = ES4_MAP,
               timeout: float = TIMEOUT_S, retries: int = 2,
               first_seq: int | None = None, opened: bool = True,
               sync_command: str = "ping") -> tuple[FramedEngine, Port]:
        transport, port = connect(device)
        if opened and first_seq is not None:
            first_seq = seq_before(pmap, first_seq)
        engine = FramedEngine(transport, pmap, timeout, retries,
                              first_seq=first_seq, sync_command=sync_command)
        stack.callback(engine.close)
        if opened:
            engine.open_link()
            if isinstance(port, ScriptedPort):
                port.writes.clear()
            else:
                port.received.clear()
            if isinstance(device, ScriptedDevice):
                device.requests.clear()
                device.executed.clear()
        return engine, port
    return opener


@pytest.fixture(params=["read", "read_some"])
def open_engine(request: pytest.FixtureRequest) -> Iterator[Opener]:
    """Engine and port in memory, in virtual time; both read paths are exercised.

    With `opened` (the default) the engine has made its opening exchange
    (FramedEngine.open_link) and the device's log is cleared, so a test sees only
    its own requests, the first of them under `first_seq`.
    """
    cls = ScriptedPort if request.param == "read" else ScriptedPortReadSome
    with ExitStack() as stack:
        def connect(device: Callable[[bytes], bytes]) -> tuple[Transport, Port]:
            port = stack.enter_context(cls(device))
            return port, port
        yield make_opener(stack, connect)


@pytest.fixture(params=["read", "read_some"])
def pty_engine(request: pytest.FixtureRequest) -> Iterator[Opener]:
    """As open_engine, over a real pty: for the tests about real time and the port."""
    cls = SerialTransport if request.param == "read" else ReadSomeTransport
    with ExitStack() as stack:
        def connect(device: Callable[[bytes], bytes]) -> tuple[Transport, Port]:
            peer = PtyPeer(device)
            stack.callback(peer.close)
            return cls(peer.port, SETTINGS), peer
        yield make_opener(stack, connect)


def wait_for(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def poll_until(engine: FramedEngine, cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    """poll_events() until `cond` holds (events in flight on the pty need a moment)."""
    def step() -> bool:
        engine.poll_events()
        return cond()
    return wait_for(step, timeout)


# -- request and reply -------------------------------------------------------------------

def test_request_reply(open_engine: Opener) -> None:
    device = ScriptedDevice()
    engine, _ = open_engine(device, first_seq=1)
    assert engine.write("ping", {}) == {}
    assert device.requests == [bytes.fromhex("a5 02 01 01 81 ec")]
    status = engine.read(["get_status", "get_info"])
    assert status["get_status.flags.estop_latched"] is True
    assert status["get_status.flags.patient_stop"] is False
    assert status["get_status.ch0_amplitude"] == 25.0
    assert status["get_status.ch0_impedance"] == 1200
    assert status["get_status.ch1_impedance"] == 1000
    assert status["get_info.model"] == "ES-4"
    assert status["get_info.serial"] == 4242
    engine.write("configure", {"channel": 1, "waveform": 0, "mode": 2, "frequency_hz": 100,
                               "pulse_width_us": 200})
    engine.write("set_amplitude", {"channel": 1, "amplitude": 25.5, "ramp_ms": 1.5})
    assert device.executed[-2:] == [
        (4, CONFIGURE, bytes.fromhex("01 00 02 64 00 c8 00")),
        (5, 0x11, bytes.fromhex("01 ff 00 dc 05"))]
    assert [seq for seq, _, _ in device.executed] == [1, 2, 3, 4, 5]


def test_seq_cycles_and_skips_zero(open_engine: Opener) -> None:
    device = ScriptedDevice()
    engine, _ = open_engine(device, first_seq=254)
    for _ in range(4):
        engine.write("ping", {})
    assert [seq for seq, _, _ in device.executed] == [254, 255, 1, 2]


def small_map(seq_min: int, seq_max: int, event_seq: int) -> FramedMap:
    """A map with only a PING (code 1) and events."""
    return FramedMap.model_validate({
        "family": "framed_binary", "seq_min": seq_min, "seq_max": seq_max,
        "status_codes": {0: "OK"}, "commands": {"ping": {"code": 1}},
        "events": {"code": 0x70, "seq": event_seq, "payload": [{"name": "kind", "type": "u8"}],
                   "kind_field": "kind", "kinds": {1: {"name": "alarm"}}}})


def test_requests_never_use_the_event_seq(open_engine: Opener) -> None:
    device = ScriptedDevice()
    engine, _ = open_engine(device, pmap=small_map(1, 3, event_seq=2), first_seq=1)
    for _ in range(4):
        engine.write("ping", {})
    assert [seq for seq, _, _ in device.executed] == [1, 3, 1, 3]


def test_engine_refuses_maps_and_settings_it_cannot_use() -> None:
    with ScriptedPort(ScriptedDevice()) as transport:
        with pytest.raises(ValueError, match="fewer than two request SEQ values"):
            FramedEngine(transport, small_map(4, 5, event_seq=5), TIMEOUT_S, 1)
        with pytest.raises(ValueError, match="first_seq 0"):
            FramedEngine(transport, ES4_MAP, TIMEOUT_S, 1, first_seq=0)
        with pytest.raises(ValueError, match="retries"):
            FramedEngine(transport, ES4_MAP, TIMEOUT_S, -1)


def test_status_is_device_refused(pty_engine: Opener) -> None:
    device = ScriptedDevice()
    device.status[GET_STATUS] = 7
    device.status[CONFIGURE] = 3
    engine, _ = pty_engine(device)
    with pytest.raises(DeviceRefused) as info:
        engine.write("configure", {"channel": 0, "waveform": 0, "mode": 0,
                                   "frequency_hz": 100, "pulse_width_us": 200})
    assert (info.value.entry, info.value.code, info.value.text) == \
        ("configure", 3, "out of range")
    start = time.monotonic()
    with pytest.raises(DeviceRefused, match="busy"):
        engine.read(["get_status"])  # a status-only reply where fields were expected
    assert time.monotonic() - start < TIMEOUT_S / 2  # not mistaken for a lost reply
    device.status[PING] = 0x99
    with pytest.raises(DeviceRefused, match=r"code 153 \(status not in the map\)"):
        engine.write("ping", {})


def test_reply_of_the_wrong_length_is_a_violation(open_engine: Opener) -> None:
    device = ScriptedDevice()
    device.replies[GET_STATUS] = STATUS_PAYLOAD[:-1]
    engine, _ = open_engine(device, timeout=0.1)
    with pytest.raises(ProtocolViolation, match="get_status: reply payload of 19 bytes"):
        engine.read(["get_status"])


# -- lost replies, remembered replies, stale and garbage ---------------------------------

def test_lost_reply_is_resent_with_the_same_seq(pty_engine: Opener) -> None:
    device = ScriptedDevice()
    engine, _ = pty_engine(device, timeout=0.15)
    device.drop_replies = 1
    start = time.monotonic()
    result = engine.read(["get_status"])
    assert time.monotonic() - start >= 0.15
    assert result["get_status.ch0_state"] == 2
    assert len(device.requests) == 2 and device.requests[0] == device.requests[1]
    assert len(device.executed) == 1


def test_remembered_reply_of_another_command_resends_with_a_new_seq(
        open_engine: Opener) -> None:
    device = ScriptedDevice()
    engine, _ = open_engine(device, first_seq=77)
    # Only a device that broke the spec can do this after the opening PING (seq 76):
    # it claims to remember seq 77 and a STOP reply.
    device.remembered = (77, ref_frame(77, STOP + 0x80, b"\x00"))
    result = engine.read(["get_status"])
    assert result["get_status.ch0_amplitude"] == 25.0
    assert [(f[2], f[3]) for f in device.requests] == [(77, GET_STATUS), (78, GET_STATUS)]
    assert [(seq, cmd) for seq, cmd, _ in device.executed] == [(78, GET_STATUS)]


def test_fresh_engines_start_at_random_seqs() -> None:
    starts = set()
    for _ in range(40):
        device = ScriptedDevice()
        with ScriptedPort(device) as port:
            FramedEngine(port, ES4_MAP, TIMEOUT_S, 0).write("ping", {})
        starts.add(device.executed[0][0])
        # The opening PING, then ours under the next SEQ.
        assert [(seq, cmd) for seq, cmd, _ in device.executed] == \
            [(starts_at := device.executed[0][0], PING), (starts_at % 255 + 1, PING)]
    assert len(starts) > 20
    assert all(1 <= s <= 255 for s in starts)


def test_stale_reply_and_garbage_are_skipped(open_engine: Opener) -> None:
    device = ScriptedDevice()
    engine, _ = open_engine(device, first_seq=10)
    bad_crc = bytearray(ref_frame(10, GET_STATUS + 0x80, b"\x00" + STATUS_PAYLOAD))
    bad_crc[5] ^= 0xFF
    device.before = [
        b"\x00\xff\xa5\x01noise",                            # LEN below min_len
        ref_frame(9, GET_STATUS + 0x80, b"\x00" + bytes(19)),  # late reply to seq 9
        bytes(bad_crc) + b"\xa5\x00",                       # corrupt copy of the reply
    ]
    for _ in range(3):
        assert engine.read(["get_status"])["get_status.ch0_amplitude"] == 25.0
    assert len(device.requests) == 3


def test_stray_sync_before_a_reply_costs_one_timeout_not_the_reply(
        pty_engine: Opener) -> None:
    device = ScriptedDevice()
    engine, _ = pty_engine(device, timeout=0.15)
    device.before = [b"\xa5"]  # the reply's SYNC is read as a LEN of 165
    start = time.monotonic()
    assert engine.read(["get_status"])["get_status.ch0_state"] == 2
    assert time.monotonic() - start < 0.5
    assert len(device.requests) == 1  # recovered from the buffer, not by resending


# -- events ---------------------------------------------------------------------------------

def test_events_between_replies_reach_the_handler_in_order(pty_engine: Opener) -> None:
    device = ScriptedDevice()
    engine, peer = pty_engine(device)
    seen: list[DeviceEvent] = []
    engine.set_event_handler(seen.append)
    device.before = [es4_event(1, 0, 12000), b""]
    device.after = [es4_event(2, 1, 0) + es4_event(9, 0xFF, 7), es4_event(3, 0xFF, 0)]
    engine.read(["get_status"])
    assert seen[0].kind == "lead_off"  # came before the reply: delivered while waiting
    # Those after the reply come with the reply's chunk or with the next read.
    assert poll_until(engine, lambda: len(seen) == 3)
    assert [e.kind for e in seen] == ["lead_off", "session_complete", "unknown_9"]
    engine.write("ping", {})
    assert poll_until(engine, lambda: len(seen) == 4)
    assert seen[3].kind == "watchdog_expired"
    assert seen[0].fields == {"event": 1, "channel": 0, "value": 12000}
    assert seen[2].fields == {"event": 9, "channel": 0xFF, "value": 7}
    times = [e.received_at for e in seen]
    assert times == sorted(times) and times[-1] <= time.monotonic()
    peer.send(es4_event(5, 0xFF, 0) + es4_event(4, 1, 850)[:5])
    assert poll_until(engine, lambda: len(seen) == 5)
    peer.send(es4_event(4, 1, 850)[5:])
    assert poll_until(engine, lambda: len(seen) == 6)
    assert [(e.kind, e.fields["value"]) for e in seen[4:]] == [("patient_stop", 0),
                                                              ("over_current", 850)]


def test_events_wait_for_a_handler(open_engine: Opener) -> None:
    device = ScriptedDevice()
    engine, port = open_engine(device)
    device.before = [es4_event(1, 1, 15000)]
    engine.read(["get_status"])
    port.send(es4_event(2, 1, 0))
    time.sleep(0.05)
    engine.poll_events()
    seen: list[DeviceEvent] = []
    engine.set_event_handler(seen.append)
    assert [e.kind for e in seen] == ["lead_off", "session_complete"]


def test_malformed_events_are_delivered_and_the_queue_is_bounded(open_engine: Opener) -> None:
    engine, port = open_engine(ScriptedDevice())
    port.send(ref_frame(0, EVENT, b"\x01\x00"))  # two bytes short
    port.send(b"".join(es4_event(2, 0, n) for n in range(EVENT_QUEUE_MAX + 10)))
    time.sleep(0.1)
    engine.poll_events()
    seen: list[DeviceEvent] = []
    engine.set_event_handler(seen.append)
    assert len(seen) == EVENT_QUEUE_MAX  # the oldest went first, the malformed one with them
    assert seen[-1].fields["value"] == EVENT_QUEUE_MAX + 9
    port.send(ref_frame(0, EVENT, b"\x01\x00"))
    assert poll_until(engine, lambda: len(seen) == EVENT_QUEUE_MAX + 1)
    assert (seen[-1].kind, seen[-1].fields) == ("malformed", {"payload": "01 00"})


def test_a_failing_handler_does_not_break_the_exchange(
        open_engine: Opener, caplog: pytest.LogCaptureFixture) -> None:
    device = ScriptedDevice()
    engine, _ = open_engine(device)

    def broken(event: DeviceEvent) -> None:
        raise RuntimeError("handler bug")

    engine.set_event_handler(broken)
    device.before = [es4_event(1, 0, 12000)]
    assert engine.read(["get_status"])["get_status.ch0_state"] == 2
    assert "event handler failed" in caplog.text


def test_a_stray_sync_does_not_hold_events_forever(pty_engine: Opener) -> None:
    device = ScriptedDevice()
    engine, peer = pty_engine(device, timeout=0.05)
    seen: list[DeviceEvent] = []
    engine.set_event_handler(seen.append)
    peer.send(b"\xa5" + es4_event(1, 0, 11000))
    assert poll_until(engine, lambda: len(seen) == 1, timeout=1.0)


# -- failures that must stay bounded ----------------------------------------------------------

def test_silence_is_link_timeout_after_the_same_frame_each_time(pty_engine: Opener) -> None:
    device = ScriptedDevice()
    engine, _ = pty_engine(device, timeout=0.05, retries=3)
    device.silent = True
    start = time.monotonic()
    with pytest.raises(LinkTimeout, match=r"no reply from the device on .* after 4 attempts"):
        engine.read(["get_status"])
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 1.0
    assert wait_for(lambda: len(device.requests) == 4)
    assert len(set(device.requests)) == 1 and len(device.executed) == 1


def test_peer_gone_is_link_lost(pty_engine: Opener) -> None:
    engine, peer = pty_engine(ScriptedDevice())
    engine.write("ping", {})
    peer.close()
    start = time.monotonic()
    with pytest.raises(LinkLost):
        engine.read(["get_status"])
    assert time.monotonic() - start < 1.0


def test_peer_gone_while_waiting_is_link_lost_at_once(pty_engine: Opener) -> None:
    device = ScriptedDevice()
    engine, peer = pty_engine(device, timeout=2.0, retries=3)
    device.silent = True
    threading.Timer(0.1, peer.close).start()
    start = time.monotonic()
    with pytest.raises(LinkLost):
        engine.read(["get_status"])
    assert time.monotonic() - start < 1.5  # not the 8 s retry budget


@pytest.mark.parametrize(("entry", "args", "words"), [
    ("configure", {"channel": 0, "waveform": 0, "mode": 0, "frequency_hz": 300,
                   "pulse_width_us": 200}, ["configure", "frequency_hz", "300", "1..250"]),
    ("set_amplitude", {"channel": 0, "amplitude": 80.5, "ramp_ms": 0},
     ["set_amplitude", "amplitude", "80.5", "raw 805", "0..800"]),
    ("set_amplitude", {"channel": 0, "amplitude": 12.34, "ramp_ms": 0},
     ["amplitude", "12.34", "steps of 0.1 mA"]),
    ("stop", {"channel_mask": 1, "ramp_down_ms": 65.536}, ["ramp_down_ms", "u16"]),
    ("set_watchdog", {"timeout_ms": 0.05}, ["timeout_ms", "one of 0 or 100..10000"]),
    ("configure", {"channel": 0}, ["missing argument", "frequency_hz"]),
    ("ping", {"channel": 0}, ["unknown argument", "channel"]),
    ("selfdestruct", {}, ["'selfdestruct' is not a command"]),
])
def test_values_refused_before_anything_is_sent(
        open_engine: Opener, entry: str, args: dict[str, float], words: list[str]) -> None:
    device = ScriptedDevice()
    engine, port = open_engine(device)
    with pytest.raises(ValueRejected) as info:
        engine.write(entry, args)
    for word in words:
        assert word in str(info.value)
    with pytest.raises(ValueRejected):  # a bad value in any entry refuses the whole read
        engine.read(["get_status", "get_cal"], {"channel": 5})
    time.sleep(0.05)
    assert port.received == b""


def es4_engine(first_seq: int) -> Callable[[Transport], FramedEngine]:
    """An engine factory for expected_protocol; its opening PING goes under `first_seq`."""
    return lambda port: FramedEngine(port, ES4_MAP, TIMEOUT_S, 2, first_seq=first_seq)


def test_ping_status_info_and_a_refusal_byte_for_byte() -> None:
    # SYNC LEN SEQ CMD PAYLOAD CRC_HI CRC_LO; a reply's CMD is the request's + 0x80 and its
    # payload starts with a status. The link opens with a PING whose reply is dropped.
    with expected_protocol(es4_engine(255), [
        (bytes.fromhex("a5 02 ff 01 b1 22"), bytes.fromhex("a5 03 ff 81 00 f8 d6")),
        (bytes.fromhex("a5 02 01 01 81 ec"), bytes.fromhex("a5 03 01 81 00 00 85")),
        (bytes.fromhex("a5 02 02 20 e0 fc"),
         bytes.fromhex("a5 16 02 a0 00 01 02 fa 00 b0 04 0a 00 32 00 00 00 00 e8 03"
                       " 00 00 00 00 b6 b2")),
        (bytes.fromhex("a5 02 03 02 d7 ed"),
         bytes.fromhex("a5 12 03 82 00 45 53 2d 34 00 00 00 00 92 10 00 00 01 02 02 24 1c")),
        (bytes.fromhex("a5 09 04 10 01 00 02 64 00 c8 00 95 50"),
         bytes.fromhex("a5 03 04 90 03 eb 54")),
    ]) as engine:
        assert engine.write("ping", {}) == {}
        status = engine.read(["get_status"])
        info = engine.read(["get_info"])
        with pytest.raises(DeviceRefused) as refused:
            engine.write("configure", {"channel": 1, "waveform": 0, "mode": 2,
                                       "frequency_hz": 100, "pulse_width_us": 200})
    assert status["get_status.flags.estop_latched"] is True
    assert (status["get_status.ch0_state"], status["get_status.ch0_amplitude"],
            status["get_status.ch1_impedance"]) == (2, 25.0, 1000)
    assert (info["get_info.model"], info["get_info.serial"]) == ("ES-4", 4242)
    assert (refused.value.code, refused.value.text) == (3, "out of range")


def test_exchanges_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with expected_protocol(es4_engine(255), [
        (bytes.fromhex("a5 02 ff 01 b1 22"), bytes.fromhex("a5 03 ff 81 00 f8 d6")),
        (bytes.fromhex("a5 02 01 01 81 ec"), bytes.fromhex("a5 03 01 81 00 00 85")),
    ]) as engine, caplog.at_level(logging.DEBUG, logger="protocols.framed"):
        engine.write("ping", {})
    assert "ping: send seq 1: a5 02 01 01 81 ec" in caplog.text
    assert "ping: reply seq 1: 00" in caplog.text


# -- a framed device nobody shipped, driven from its profile alone ----------------------------

NT7_YAML = """\
profile_format: 1
spec_version: "NT-7 bench interface (invented for the framed engine tests)"
id: nt-7
vendor: Nowhere Medical
model: NT-7
modality: tens
link: {baudrate: 38400, reply_timeout_s: 0.5}
protocol:
  family: framed_binary
  sync: 0x7E
  open_with: hello
  payload_byte_order: big
  reply_code_offset: 0x40
  max_len: 40
  seq_min: 10
  seq_max: 60
  ok_status: 0x55
  status_codes: {0x55: accepted, 0x01: busy, 0x02: out of range, 0x03: wrong state}
  events:
    code: 0x0E
    seq: 0xFF
    payload:
      - {name: level, type: u16, scale: 0.01, unit: mA}
      - {name: what, type: u8}
    kind_field: what
    kinds:
      7: {name: lead_off}
      8: {name: session_complete}
  commands:
    hello:
      code: 0x05
      reply:
        - {name: fw, type: u16}
        - {name: name, type: ascii, length: 6}
    program:
      code: 0x21
      request:
        - {name: amplitude, type: u16, scale: 0.01, unit: mA, min: 0, max: 6000}
        - {name: pulse_width_us, type: u16, min: 50, max: 300}
        - {name: frequency_hz, type: u8, min: 1, max: 200}
        - {name: shape, type: u8, allowed: [0, 1]}
    run:
      code: 0x22
      request:
        - {name: duration_s, type: u32, min: 1, max: 86400}
        - {name: ramp_s, type: u8, max: 20}
    halt: {code: 0x23}
    panic: {code: 0x24}
    dog:
      code: 0x25
      request:
        - {name: timeout_s, type: u16, scale: 0.01, min: 10, max: 500}
    state:
      code: 0x26
      reply:
        - {name: remaining, type: u32}
        - {name: amplitude, type: u16, scale: 0.01, unit: mA}
        - {name: phase, type: u8}
        - {name: alarms, type: u8, bits: {estop: 7, dog: 6, pstop: 5}}
        - {name: impedance, type: u16}
        - {name: elapsed, type: u32}
operations:
  identify:
    - read: [hello]
      expect: {hello.name: NT-7}
  configure:
    - write: program
      args: {amplitude: $amplitude_ma, pulse_width_us: $pulse_width_us,
             frequency_hz: $frequency_hz, shape: $waveform}
  arm:
    - write: dog
      args: {timeout_s: $watchdog_s}
  start:
    - write: run
      args: {duration_s: $timer_s, ramp_s: $ramp_up_s}
  stop:
    - write: halt
  emergency_stop:
    - write: panic
  read_telemetry:
    - read: [state]
telemetry:
  output_on: {source: state.phase, map: {"0": false, "1": true, "2": true}}
  channel_state: {source: state.phase, map: {"0": idle, "1": ramping_up, "2": running}}
  amplitude_ma: state.amplitude
  impedance_ohm: state.impedance
  elapsed_s: state.elapsed
  remaining_s: state.remaining
  estop_latched: state.alarms.estop
  watchdog_expired: state.alarms.dog
  patient_stop: state.alarms.pstop
parameters:
  frequency_hz: {type: integer, unit: Hz, default: 80}
  pulse_width_us: {type: integer, unit: us, default: 150}
  amplitude_ma: {type: number, unit: mA, step: 0.01}
  channel: {type: integer, allowed: [0], default: 0}
  waveform: {type: choice, choices: {symmetric: 0, asymmetric: 1}, default: symmetric}
  mode: {type: choice, choices: {continuous: 0}, default: continuous}
  electrode_area_cm2: {type: number, unit: cm2, default: 16.0}
limits:
  absolute:
    duration_s: {min: 1, max: 3600}
    frequency_hz: {min: 1, max: 200}
    pulse_width_us: {min: 50, max: 300}
    amplitude_ma: {min: 0.01, max: 60.0}
    electrode_area_cm2: {min: 1.0, max: 100.0}
  clinical: {duration_s: {max: 1800}, frequency_hz: {max: 150}}
  derived: {charge_per_phase_uc: {max: 32.0}, current_density_rms_ma_cm2: {max: 2.0}}
rules: {ramp_rate_ma_s: 10.0}
safety:
  watchdog_s: 1.0
  poll_period_s: 0.2
  retry_budget: 2
  timer_margin_s: 5.0
  stale_after_s: 0.8
"""
NT7_SYNC, NT7_OK = 0x7E, 0x55
HELLO, PROGRAM, RUN, STATE = 0x05, 0x21, 0x22, 0x26


def test_an_invented_framed_device_is_driven_byte_for_byte(
        open_engine: Opener, tmp_path: Path) -> None:
    path = tmp_path / "nt-7.yaml"
    path.write_text(NT7_YAML)
    profile = load_profile_file(path).profile  # validated like any profile
    pmap = profile.protocol
    assert isinstance(pmap, FramedMap)
    device = ScriptedDevice(sync=NT7_SYNC, offset=0x40, ok=NT7_OK)
    device.replies = {
        HELLO: bytes.fromhex("01 07") + b"NT-7\0\0",
        STATE: bytes.fromhex("00 00 0e 0b  04 d2  02  a0  03 e8  00 00 00 0a"),
    }
    device.status[RUN] = 0x03
    engine, port = open_engine(device, pmap=pmap, timeout=profile.link.reply_timeout_s,
                               retries=profile.safety.retry_budget, first_seq=59,
                               sync_command="hello")
    seen: list[DeviceEvent] = []
    engine.set_event_handler(seen.append)

    assert engine.read(["hello"]) == {"hello.fw": 0x0107, "hello.name": "NT-7"}
    assert device.requests[0] == bytes([0x7E, 0x02, 59, HELLO]) + \
        ccitt_crc_bytes(bytes([0x02, 59, HELLO]))

    device.after = [ref_frame(0xFF, 0x0E, bytes.fromhex("03 e8 07"), NT7_SYNC)]
    engine.write("program", {"amplitude": 12.34, "pulse_width_us": 150, "frequency_hz": 80,
                             "shape": 1})
    assert device.requests[1] == ref_frame(60, PROGRAM, bytes.fromhex("04 d2 00 96 50 01"),
                                           NT7_SYNC)
    assert poll_until(engine, lambda: len(seen) == 1)
    assert [(e.kind, e.fields) for e in seen] == [("lead_off", {"level": 10.0, "what": 7})]

    with pytest.raises(DeviceRefused) as info:
        engine.write("run", {"duration_s": 3605, "ramp_s": 5})
    assert (info.value.code, info.value.text) == (3, "wrong state")
    assert device.requests[2] == ref_frame(10, RUN, bytes.fromhex("00 00 0e 15 05"), NT7_SYNC)

    assert engine.read(["state"]) == {
        "state.remaining": 3595, "state.amplitude": 12.34, "state.phase": 2,
        "state.alarms": 0xA0, "state.alarms.estop": True, "state.alarms.dog": False,
        "state.alarms.pstop": True, "state.impedance": 1000, "state.elapsed": 10}

    with pytest.raises(ValueRejected, match=r"dog: field 'timeout_s' = 0\.05"):
        engine.write("dog", {"timeout_s": 0.05})  # below 10 × 0.01 s
    engine.write("dog", {"timeout_s": 1.0})
    assert device.requests[-1] == ref_frame(12, 0x25, bytes.fromhex("00 64"), NT7_SYNC)

    # An ES-4 frame means nothing on this line.
    port.send(es4_event(1, 0, 12000))
    time.sleep(0.05)
    engine.poll_events()
    assert len(seen) == 1
