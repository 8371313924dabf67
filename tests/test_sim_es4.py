"""ES-4 simulator, driven by raw frames exactly as the spec writes them.

Frames are built and checked here with a bit-by-bit CRC of the test's own (not
the controller's framed engine, not the table-driven CRC in protocols.crc).
Most tests drive the endpoint directly on a fake clock; the pty tests check
what only a real port shows (reconnects, byte streams, a served profile).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest
import serial

from controller.profiles.loader import load_profile_file, resolve_profile
from controller.profiles.model import Profile
from simulator.binding import Binding
from simulator.faults import FaultPlan
from simulator.framed_device import FramedEndpoint
from simulator.model_base import RefusalKind, Refused
from simulator.server import SimulatedDevice
from simulator.tens_model import TensModel
from tests.support.clock import FakeClock
from tests.support.crc import crc16_ccitt_false as crc_bitwise

ES4 = resolve_profile("es-4").profile
SYNC = 0xA5
REPLY = 0x80
PING, GET_INFO, CONFIGURE, SET_AMPLITUDE, START, STOP = 0x01, 0x02, 0x10, 0x11, 0x12, 0x13
RESET_ESTOP, ESTOP, GET_STATUS, SET_WATCHDOG = 0x1E, 0x1F, 0x20, 0x30
SERVICE, MEASURE_OUTPUT, SET_CAL, GET_CAL = 0x40, 0x41, 0x42, 0x43
EVENT = 0x70
SERVICE_KEY = 0x05E471CE
OK, UNKNOWN, BAD_LENGTH, OUT_OF_RANGE, INVALID_STATE, LEAD_OFF, INTERLOCK, BUSY = range(8)
IDLE, RAMPING_UP, RUNNING, RAMPING_DOWN, STATE_LEAD_OFF = range(5)
EV_LEAD_OFF, EV_COMPLETE, EV_WATCHDOG, EV_OVER_CURRENT, EV_PATIENT_STOP = range(1, 6)
FLAG_ESTOP, FLAG_WATCHDOG, FLAG_SERVICE, FLAG_PATIENT = 1, 2, 4, 8
PORT_TIMEOUT_S = 1.0


# -- frames, by the spec ---------------------------------------------------------------
def frame(seq: int, cmd: int, payload: bytes = b"", sync: int = SYNC) -> bytes:
    body = bytes([2 + len(payload), seq, cmd]) + payload
    return bytes([sync]) + body + crc_bitwise(body).to_bytes(2, "big")


@dataclass(frozen=True)
class Frame:
    seq: int
    cmd: int
    payload: bytes

    @property
    def status(self) -> int:
        return self.payload[0]

    @property
    def body(self) -> bytes:
        return self.payload[1:]


def parse_stream(data: bytes, sync: int = SYNC) -> list[Frame]:
    """Strict: `data` must be whole frames back to back, each with a good CRC."""
    frames, pos = [], 0
    while pos < len(data):
        assert data[pos] == sync, f"byte {pos} is 0x{data[pos]:02X}, not SYNC: {data.hex(' ')}"
        length = data[pos + 1]
        end = pos + length + 4
        assert end <= len(data), f"truncated frame at {pos}: {data.hex(' ')}"
        body = data[pos + 1:pos + 2 + length]
        assert crc_bitwise(body) == int.from_bytes(data[end - 2:end], "big")
        frames.append(Frame(body[1], body[2], body[3:]))
        pos = end
    return frames


def event_frame(kind: int, channel: int, value: int) -> bytes:
    return frame(0, EVENT, struct.pack("<BBH", kind, channel, value))


def configure(ch: int, waveform: int = 0, mode: int = 0, freq: int = 100,
              pw: int = 200) -> bytes:
    return struct.pack("<BBBHH", ch, waveform, mode, freq, pw)


def amplitude(ch: int, raw: int, ramp_ms: int = 0) -> bytes:
    return struct.pack("<BHH", ch, raw, ramp_ms)


def start(mask: int, duration_s: int = 600, ramp_s: int = 0) -> bytes:
    return struct.pack("<BHB", mask, duration_s, ramp_s)


def stop(mask: int, ramp_ms: int = 0) -> bytes:
    return struct.pack("<BH", mask, ramp_ms)


@dataclass(frozen=True)
class Status:
    flags: int
    channels: list[tuple[int, int, int, int, int]]
    """Per channel: state, amplitude (0.1 mA), impedance, elapsed_s, remaining_s."""

    def state(self, ch: int) -> int:
        return self.channels[ch][0]

    def amplitude(self, ch: int) -> int:
        return self.channels[ch][1]


def parse_status(reply: Frame) -> Status:
    assert reply.status == OK and len(reply.body) == 1 + 2 * 9
    values = struct.unpack("<B" + "BHHHH" * 2, reply.body)
    return Status(values[0], [values[1:6], values[6:11]])


# -- an endpoint on a fake clock ----------------------------------------------------------
class Bench:
    """One ES-4 (model + endpoint, no pty) on a fake clock, driven by raw frames."""

    def __init__(self, profile: Profile = ES4, **faults: Any) -> None:
        self.clock = FakeClock(100.0)
        self.model = TensModel(profile=profile, faults=FaultPlan(**faults), clock=self.clock)
        self.endpoint = FramedEndpoint(profile, self.model, Binding.of(profile))
        self.seq = 0
        self.events: list[Frame] = []

    def feed(self, data: bytes) -> list[Frame]:
        out = self.endpoint.receive(data, self.clock.now)
        frames = [f for chunk in out for f in self._one(chunk)]
        self.events += [f for f in frames if f.seq == 0]
        return frames

    @staticmethod
    def _one(chunk: bytes) -> list[Frame]:
        frames = parse_stream(chunk)
        assert len(frames) == 1, "every frame goes out on its own"
        return frames

    def request(self, cmd: int, payload: bytes = b"", seq: int | None = None) -> Frame:
        if seq is None:
            self.seq = self.seq % 255 + 1
            seq = self.seq
        frames = self.feed(frame(seq, cmd, payload))
        replies = [f for f in frames if f.seq != 0]
        assert len(replies) == 1 and frames[-1] == replies[0], "events go before the reply"
        assert replies[0].seq == seq
        return replies[0]

    def ok(self, cmd: int, payload: bytes = b"") -> Frame:
        reply = self.request(cmd, payload)
        assert reply.cmd == cmd + REPLY
        assert reply.status == OK, f"cmd 0x{cmd:02X} answered status {reply.status}"
        return reply

    def status(self) -> Status:
        return parse_status(self.ok(GET_STATUS))

    def advance(self, dt: float) -> list[Frame]:
        self.clock.now += dt
        frames = [f for chunk in self.endpoint.tick(self.clock.now) for f in self._one(chunk)]
        self.events += frames
        return frames

    def ready(self, ch: int, raw_amplitude: int = 200) -> None:
        self.ok(CONFIGURE, configure(ch))
        self.ok(SET_AMPLITUDE, amplitude(ch, raw_amplitude))


# -- identity and status codes --------------------------------------------------------------
def test_crc_is_the_catalogue_ccitt_false() -> None:
    assert crc_bitwise(b"123456789") == 0x29B1


def test_get_info_identifies_an_es4_with_two_channels() -> None:
    reply = Bench().ok(GET_INFO)
    assert reply.cmd == 0x82 and len(reply.body) == 8 + 4 + 1 + 1 + 1
    model, _serial, _major, _minor, channels = struct.unpack("<8sIBBB", reply.body)
    assert model == b"ES-4\0\0\0\0"
    assert channels == 2


def test_ping_is_answered_ok_with_status_only() -> None:
    reply = Bench().ok(PING)
    assert reply.cmd == 0x81 and reply.body == b""


def test_unknown_command_is_status_1() -> None:
    bench = Bench()
    reply = bench.request(0x55)
    assert (reply.cmd, reply.payload) == (0xD5, bytes([UNKNOWN]))


@pytest.mark.parametrize(("cmd", "payload"), [
    (PING, b"\x00"),
    (CONFIGURE, configure(0)[:-1]),
    (SET_AMPLITUDE, amplitude(0, 100) + b"\x00"),
    (GET_STATUS, b"\x01"),
])
def test_payload_length_not_matching_the_map_is_status_2(cmd: int, payload: bytes) -> None:
    reply = Bench().request(cmd, payload)
    assert (reply.cmd, reply.payload) == (cmd + REPLY, bytes([BAD_LENGTH]))


@pytest.mark.parametrize(("cmd", "payload"), [
    (CONFIGURE, configure(2)),
    (CONFIGURE, configure(0, waveform=2)),
    (CONFIGURE, configure(0, mode=3)),
    (CONFIGURE, configure(0, freq=0)),
    (CONFIGURE, configure(0, freq=251)),
    (CONFIGURE, configure(0, pw=19)),
    (CONFIGURE, configure(0, pw=501)),
    (SET_AMPLITUDE, amplitude(0, 801)),
    (SET_AMPLITUDE, amplitude(0, 100, ramp_ms=10001)),
    (START, start(0)),
    (START, start(1, duration_s=0)),
    (START, start(1, duration_s=3601)),
    (START, start(1, ramp_s=31)),
    (SET_WATCHDOG, struct.pack("<H", 99)),
    (SET_WATCHDOG, struct.pack("<H", 10001)),
    (SERVICE, struct.pack("<I", 1)),
    (GET_CAL, b"\x02"),
    (MEASURE_OUTPUT, struct.pack("<BH", 0, 801)),
])
def test_field_outside_the_accepted_values_is_status_3(cmd: int, payload: bytes) -> None:
    bench = Bench()
    bench.ok(SERVICE, struct.pack("<I", SERVICE_KEY))
    assert bench.request(cmd, payload).payload == bytes([OUT_OF_RANGE])
    assert bench.model.history == []


def test_range_edges_are_accepted() -> None:
    bench = Bench()
    for ms in (0, 100, 10000):
        bench.ok(SET_WATCHDOG, struct.pack("<H", ms))
    bench.ok(CONFIGURE, configure(1, waveform=1, mode=2, freq=250, pw=500))
    bench.ok(CONFIGURE, configure(1, freq=1, pw=20))
    bench.ok(SET_AMPLITUDE, amplitude(1, 800, ramp_ms=10000))
    bench.ok(STOP, stop(0))


def test_set_cal_ranges_in_service_mode() -> None:
    bench = Bench()
    bench.ok(SERVICE, struct.pack("<I", SERVICE_KEY))
    for gain, offset in ((8999, 0), (11001, 0), (10000, -201), (10000, 201)):
        assert bench.request(SET_CAL, struct.pack("<BHh", 0, gain, offset)).status == \
            OUT_OF_RANGE
    bench.ok(SET_CAL, struct.pack("<BHh", 0, 9000, -200))
    bench.ok(SET_CAL, struct.pack("<BHh", 1, 11000, 200))


@pytest.mark.parametrize(("kind", "status"), [
    ("out_of_range", OUT_OF_RANGE), ("illegal_value", OUT_OF_RANGE),
    ("invalid_state", INVALID_STATE), ("service_required", INVALID_STATE),
    ("lead_off", LEAD_OFF), ("hardware_missing", LEAD_OFF),
    ("fault_latched", INTERLOCK), ("busy", BUSY),
])
def test_every_refusal_kind_has_its_status(monkeypatch: pytest.MonkeyPatch, kind: RefusalKind,
                                           status: int) -> None:
    bench = Bench()

    def refuse(*_: object) -> None:
        raise Refused(kind, "test")

    monkeypatch.setattr(bench.model, "apply", refuse)
    assert bench.request(PING).payload == bytes([status])


def test_refusal_kinds_are_all_covered() -> None:
    covered = {"out_of_range", "illegal_value", "invalid_state", "service_required",
               "lead_off", "hardware_missing", "fault_latched", "busy"}
    assert covered == set(get_args(RefusalKind))


# -- duplicates and framing --------------------------------------------------------------------
def test_same_seq_is_answered_from_memory_not_executed_again() -> None:
    bench = Bench()
    bench.ready(0)
    first = frame(40, START, start(1))
    reply = bench.endpoint.receive(first, bench.clock.now)
    assert parse_stream(reply[0])[0].payload == bytes([OK])
    executed = bench.endpoint.executed
    again = bench.endpoint.receive(first, bench.clock.now)
    assert again == reply
    assert bench.endpoint.executed == executed
    assert [c.cause for c in bench.model.history] == ["start"]
    # Executed again under a new SEQ, START is refused: the channel is already on.
    assert bench.request(START, start(1), seq=41).status == INVALID_STATE
    # A different command under the remembered SEQ gets the remembered reply.
    remembered = bench.request(GET_INFO, seq=41)
    assert (remembered.cmd, remembered.status) == (START + REPLY, INVALID_STATE)


def test_a_duplicate_still_restarts_the_watchdog() -> None:
    bench = Bench()
    bench.ready(0)
    bench.ok(SET_WATCHDOG, struct.pack("<H", 500))
    bench.request(START, start(1), seq=9)
    for _ in range(5):
        bench.advance(0.3)
        assert bench.request(START, start(1), seq=9).status == OK
    assert bench.events == []
    assert bench.advance(0.5) == parse_stream(event_frame(EV_WATCHDOG, 0xFF, 0))


def test_garbage_and_false_sync_bytes_are_skipped() -> None:
    bench = Bench()
    ping1, ping2 = frame(1, PING), frame(2, PING)
    garbage = b"\x00\xff\x13" + bytes([SYNC, 0xFF]) + bytes([SYNC, 0x01]) + bytes([SYNC, 253])
    # A false SYNC with a plausible LEN swallows the next frame until its CRC fails.
    frames = bench.feed(garbage + bytes([SYNC, 0x05]) + ping1 + ping2)
    assert [(f.seq, f.cmd, f.status) for f in frames] == [(1, 0x81, OK), (2, 0x81, OK)]


def test_bad_crc_is_dropped_without_reply() -> None:
    bench = Bench()
    bad = bytearray(frame(3, PING))
    bad[-1] ^= 0x01
    assert bench.feed(bytes(bad)) == []
    assert bench.endpoint.executed == 0
    assert bench.feed(frame(4, PING))[0].seq == 4


def test_frames_split_into_single_bytes_are_reassembled() -> None:
    bench = Bench()
    data = frame(5, GET_INFO) + frame(6, PING)
    frames = [f for b in data for f in bench.feed(bytes([b]))]
    assert [(f.seq, f.cmd) for f in frames] == [(5, 0x82), (6, 0x81)]


def test_a_stale_partial_frame_cannot_swallow_the_retry() -> None:
    bench = Bench()
    assert bench.feed(bytes([SYNC, 200]) + frame(7, PING)) == []
    bench.clock.now += 0.1      # the host's reply timeout, then it sends again
    assert [f.seq for f in bench.feed(frame(7, PING))] == [7]


def test_request_with_the_event_seq_is_ignored() -> None:
    bench = Bench()
    assert bench.feed(frame(0, PING)) == []


# -- channel behaviour ------------------------------------------------------------------------
def test_configure_refused_while_that_channel_outputs() -> None:
    bench = Bench()
    bench.ready(0)
    bench.ok(START, start(1, ramp_s=2))
    assert bench.request(CONFIGURE, configure(0)).status == INVALID_STATE   # ramping up
    bench.ok(CONFIGURE, configure(1))                                        # the other one
    bench.advance(2.0)
    assert bench.status().state(0) == RUNNING
    assert bench.request(CONFIGURE, configure(0)).status == INVALID_STATE
    bench.ok(STOP, stop(1, ramp_ms=1000))
    assert bench.status().state(0) == RAMPING_DOWN
    assert bench.request(CONFIGURE, configure(0)).status == INVALID_STATE
    bench.advance(1.0)
    assert bench.status().state(0) == IDLE
    bench.ok(CONFIGURE, configure(0, freq=80))
    assert bench.model.channels[0].frequency_hz == 80


def test_start_needs_configuration_and_amplitude() -> None:
    bench = Bench()
    assert bench.request(START, start(1)).status == INVALID_STATE
    bench.ok(CONFIGURE, configure(0))
    assert bench.request(START, start(1)).status == INVALID_STATE    # amplitude 0
    bench.ok(SET_AMPLITUDE, amplitude(0, 100))
    # Every masked channel must be ready; a refused START starts nothing at all.
    assert bench.request(START, start(3)).status == INVALID_STATE
    assert bench.model.history == []
    bench.ok(START, start(1))
    assert bench.status().state(0) == RUNNING


def test_start_refused_with_leads_off_then_with_estop() -> None:
    bench = Bench(lead_off_at=0.5)
    bench.ready(0)
    bench.ready(1)
    bench.ok(START, start(1))
    bench.advance(0.5)
    assert bench.status().state(0) == STATE_LEAD_OFF
    assert bench.request(START, start(1)).status == LEAD_OFF
    bench.ok(ESTOP)
    assert bench.request(START, start(2)).status == INTERLOCK
    bench.ok(RESET_ESTOP)
    bench.ok(START, start(2))


def test_start_ramps_up_linearly_and_counts_duration_from_start() -> None:
    bench = Bench()
    bench.ready(0, raw_amplitude=200)
    t0 = bench.clock.now
    bench.ok(START, start(1, duration_s=60, ramp_s=4))
    assert bench.status().channels[0][:2] == (RAMPING_UP, 0)
    bench.advance(1.0)
    assert bench.status().channels[0][:2] == (RAMPING_UP, 50)
    bench.advance(1.0)
    assert bench.status().amplitude(0) == 100
    bench.advance(2.0)
    state, amp, impedance, elapsed, remaining = bench.status().channels[0]
    assert (state, amp, elapsed, remaining) == (RUNNING, 200, 4, 56)
    assert 800 <= impedance <= 1500
    assert bench.model.history[0].t == t0 and bench.model.history[0].on
    assert bench.status().channels[1][:2] == (IDLE, 0)


def test_set_amplitude_on_a_running_channel_ramps() -> None:
    bench = Bench()
    bench.ready(0, raw_amplitude=200)
    bench.ok(START, start(1))
    bench.ok(SET_AMPLITUDE, amplitude(0, 300, ramp_ms=2000))
    bench.advance(1.0)
    assert bench.status().amplitude(0) == 250
    bench.advance(1.0)
    assert bench.status().channels[0][:2] == (RUNNING, 300)
    bench.ok(SET_AMPLITUDE, amplitude(0, 150))
    assert bench.status().amplitude(0) == 150
    # On an idle channel the amplitude is only stored.
    bench.ok(CONFIGURE, configure(1))
    bench.ok(SET_AMPLITUDE, amplitude(1, 400, ramp_ms=500))
    assert bench.status().channels[1][:2] == (IDLE, 0)


def test_stop_ramps_down_and_records_when_output_reaches_zero() -> None:
    bench = Bench()
    bench.ready(0, raw_amplitude=200)
    bench.ok(START, start(1))
    bench.advance(5.0)
    t_stop = bench.clock.now
    bench.ok(STOP, stop(1, ramp_ms=1000))
    bench.advance(0.5)
    assert bench.status().channels[0][:2] == (RAMPING_DOWN, 100)
    assert bench.model.output_on
    bench.advance(0.6)
    assert bench.status().channels[0][:2] == (IDLE, 0)
    last = bench.model.history[-1]
    assert (last.on, last.cause, last.channel) == (False, "stop", 0)
    assert last.t == pytest.approx(t_stop + 1.0)
    assert bench.model.stop_commands[-1].t == t_stop
    assert bench.events == []


def test_stop_on_a_channel_not_running_is_ok_and_changes_nothing() -> None:
    bench = Bench()
    bench.ready(0)
    bench.ok(START, start(1))
    bench.ok(STOP, stop(2, ramp_ms=500))
    bench.ok(STOP, stop(0))
    assert bench.status().state(0) == RUNNING
    assert len(bench.model.history) == 1
    bench.ok(STOP, stop(1))                 # ramp 0: at once
    assert bench.status().state(0) == IDLE
    assert bench.model.history[-1].t == bench.clock.now


def test_estop_stops_both_at_once_latches_and_is_never_refused() -> None:
    bench = Bench()
    bench.ready(0)
    bench.ready(1)
    bench.ok(START, start(3, ramp_s=10))
    bench.advance(1.0)
    bench.ok(ESTOP)
    status = bench.status()
    assert status.flags == FLAG_ESTOP
    assert [status.state(c) for c in (0, 1)] == [IDLE, IDLE]
    stops = [c for c in bench.model.history if not c.on]
    assert {(c.cause, c.channel, c.t) for c in stops} == {
        ("emergency_stop", 0, bench.clock.now), ("emergency_stop", 1, bench.clock.now)}
    assert bench.request(START, start(1)).status == INTERLOCK
    bench.ok(ESTOP)                                  # idle and latched: still OK
    bench.ok(SERVICE, struct.pack("<I", SERVICE_KEY))
    bench.ok(ESTOP)                                  # in service mode: still OK
    bench.ok(SERVICE, struct.pack("<I", 0))
    bench.ok(RESET_ESTOP)
    assert bench.status().flags == 0
    bench.ok(START, start(1))


# -- event frames ---------------------------------------------------------------------------
def test_lead_off_event_stops_that_channel_only() -> None:
    bench = Bench(lead_off_at=1.0)
    bench.ready(0)
    bench.ready(1)
    bench.ok(START, start(3))
    assert bench.advance(0.9) == []
    assert bench.advance(0.1) == parse_stream(event_frame(EV_LEAD_OFF, 0, 65535))
    status = bench.status()
    assert (status.state(0), status.state(1)) == (STATE_LEAD_OFF, RUNNING)
    assert status.channels[0][2] == 65535
    assert bench.model.history[-1].cause == "lead_off"


def test_session_complete_event_when_the_duration_runs_out() -> None:
    bench = Bench()
    bench.ready(1)
    bench.ok(START, start(2, duration_s=2, ramp_s=1))
    assert bench.advance(1.99) == []
    assert bench.status().channels[1][3:] == (1, 1)
    assert bench.advance(0.01) == parse_stream(event_frame(EV_COMPLETE, 1, 0))
    assert bench.status().channels[1][:2] == (IDLE, 0)
    assert (bench.model.history[-1].cause, bench.model.history[-1].channel) == ("timer", 1)


def test_watchdog_expiry_stops_all_outputs() -> None:
    bench = Bench()
    bench.ok(SET_WATCHDOG, struct.pack("<H", 500))
    assert bench.advance(5.0) == []          # nothing on: nothing to stop
    bench.ready(0)
    bench.ready(1)
    bench.ok(START, start(3))
    assert bench.advance(0.4) == []
    bench.ok(PING)
    assert bench.advance(0.4) == []
    assert bench.advance(0.1) == parse_stream(event_frame(EV_WATCHDOG, 0xFF, 0))
    status = bench.status()
    assert status.flags == FLAG_WATCHDOG
    assert [status.state(c) for c in (0, 1)] == [IDLE, IDLE]
    assert {c.cause for c in bench.model.history if not c.on} == {"watchdog"}
    bench.ok(START, start(1))                # not a latch: a new START runs
    assert bench.status().flags == 0


def test_over_current_event_carries_the_amplitude_and_latches() -> None:
    bench = Bench(overcurrent_at=1.0)
    bench.ready(0, raw_amplitude=250)
    bench.ok(START, start(1))
    assert bench.advance(1.0) == parse_stream(event_frame(EV_OVER_CURRENT, 0, 250))
    assert bench.status().flags == FLAG_ESTOP
    assert bench.model.history[-1].cause == "over_current"
    assert bench.request(START, start(1)).status == INTERLOCK


def test_patient_stop_flag_is_reported_once() -> None:
    bench = Bench(patient_stop_at=1.0)
    bench.ready(0)
    bench.ready(1)
    bench.ok(START, start(3))
    assert bench.advance(1.0) == parse_stream(event_frame(EV_PATIENT_STOP, 0xFF, 0))
    assert {(c.cause, c.channel) for c in bench.model.history if not c.on} == {
        ("patient_stop", 0), ("patient_stop", 1)}
    assert bench.status().flags == FLAG_ESTOP | FLAG_PATIENT
    assert bench.status().flags == FLAG_ESTOP
    assert bench.request(START, start(1)).status == INTERLOCK


def test_events_due_before_a_request_go_out_as_frames_before_its_reply() -> None:
    bench = Bench()
    bench.ready(0)
    bench.ok(START, start(1, duration_s=1))
    bench.clock.now += 1.5
    out = bench.endpoint.receive(frame(77, GET_STATUS), bench.clock.now)
    assert out[0] == event_frame(EV_COMPLETE, 0, 0)
    assert [f.seq for f in parse_stream(out[1])] == [77]


# -- service mode and calibration --------------------------------------------------------------
def test_service_mode_rules() -> None:
    bench = Bench()
    bench.ready(0)
    assert bench.request(MEASURE_OUTPUT, struct.pack("<BH", 0, 100)).status == INVALID_STATE
    assert bench.request(SET_CAL, struct.pack("<BHh", 0, 10000, 0)).status == INVALID_STATE
    bench.ok(START, start(1))
    assert bench.request(SERVICE, struct.pack("<I", SERVICE_KEY)).status == INVALID_STATE
    bench.ok(STOP, stop(1))
    bench.ok(SERVICE, struct.pack("<I", SERVICE_KEY))
    assert bench.status().flags == FLAG_SERVICE
    bench.ok(SERVICE, struct.pack("<I", 0))
    assert bench.status().flags == 0


def test_calibration_with_a_miscalibrated_device() -> None:
    bench = Bench(miscal_gain=1.2, miscal_offset=0.3)
    bench.ok(SERVICE, struct.pack("<I", SERVICE_KEY))
    assert struct.unpack("<Hh", bench.ok(GET_CAL, b"\x00").body) == (10000, 0)
    bench.ok(SET_CAL, struct.pack("<BHh", 0, 10500, -50))
    assert struct.unpack("<Hh", bench.ok(GET_CAL, b"\x00").body) == (10500, -50)
    assert struct.unpack("<Hh", bench.ok(GET_CAL, b"\x01").body) == (10000, 0)
    # 20 mA set -> 20 × 1.05 - 0.5 = 20.5 mA delivered -> 20.5 × 1.2 + 0.3 = 24.9 mA true.
    measured = bench.ok(MEASURE_OUTPUT, struct.pack("<BH", 0, 200))
    assert struct.unpack("<H", measured.body) == (249,)
    # Uncalibrated channel 1: 20 × 1.2 + 0.3 = 24.3 mA.
    assert struct.unpack("<H", bench.ok(MEASURE_OUTPUT, struct.pack("<BH", 1, 200)).body) \
        == (243,)
    assert bench.model.history == []      # the test load is not the patient
    bench.ok(SERVICE, struct.pack("<I", 0))
    bench.ready(0, raw_amplitude=200)
    bench.ok(START, start(1))
    assert bench.status().amplitude(0) == 205
    assert bench.model.true_output_ma(0) == pytest.approx(24.9)


# -- over a real pseudo-terminal --------------------------------------------------------------
class Port:
    def __init__(self, path: str, sync: int = SYNC, timeout: float = PORT_TIMEOUT_S) -> None:
        self.sync = sync
        self.ser = serial.Serial(path, 115200, timeout=timeout, write_timeout=timeout)
        self.events: list[Frame] = []

    def read_frame(self) -> Frame | None:
        head = self.ser.read(2)
        if len(head) < 2:
            return None
        rest = self.ser.read(head[1] + 2)
        return parse_stream(head + rest, self.sync)[0]

    def request(self, seq: int, cmd: int, payload: bytes = b"") -> Frame | None:
        self.ser.write(frame(seq, cmd, payload, self.sync))
        while (got := self.read_frame()) is not None:
            if got.seq == seq:
                return got
            self.events.append(got)
        return None

    def ask(self, seq: int, cmd: int, payload: bytes = b"") -> Frame:
        reply = self.request(seq, cmd, payload)
        assert reply is not None, f"no reply to 0x{cmd:02X} (SEQ {seq})"
        return reply

    def wait_event(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + timeout
        while not self.events and time.monotonic() < deadline:
            got = self.read_frame()
            if got is not None:
                self.events.append(got)
        return self.events.pop(0) if self.events else None

    def close(self) -> None:
        self.ser.close()


@pytest.fixture
def open_port() -> Iterator[Callable[..., Port]]:
    ports: list[Port] = []

    def opener(path: str, **kw: Any) -> Port:
        ports.append(Port(path, **kw))
        return ports[-1]

    yield opener
    for port in ports:
        port.close()


def test_remembered_reply_survives_a_host_reconnect(sim_device: Callable[..., SimulatedDevice],
                                                    open_port: Callable[..., Port]) -> None:
    device = sim_device("es-4")
    host = open_port(device.port)
    for seq, cmd, payload in ((1, CONFIGURE, configure(0)), (2, SET_AMPLITUDE, amplitude(0, 100))):
        assert host.request(seq, cmd, payload) == Frame(seq, cmd + REPLY, bytes([OK]))
    first = host.request(9, START, start(1))
    host.close()
    host = open_port(device.port)
    assert host.request(9, START, start(1)) == first == Frame(9, START + REPLY, bytes([OK]))
    with device.model.lock:
        assert [c.cause for c in device.model.history] == ["start"]
    # The next host's first request happens to reuse the SEQ: it gets the old reply.
    assert host.request(9, GET_STATUS) == first
    assert host.request(10, ESTOP) == Frame(10, ESTOP + REPLY, bytes([OK]))


def test_port_resyncs_after_line_noise(sim_device: Callable[..., SimulatedDevice],
                                       open_port: Callable[..., Port]) -> None:
    host = open_port(sim_device("es-4").port)
    host.ser.write(b"\x00\xa5\x07\x33" + bytes([SYNC, 0xFE]) + b"\x12\x34")
    assert host.request(3, PING) == Frame(3, PING + REPLY, bytes([OK]))


def test_event_frames_never_land_inside_a_reply(open_port: Callable[..., Port]) -> None:
    clock = FakeClock(100.0)
    with SimulatedDevice(ES4, FaultPlan(lead_off_at=0.5), clock=clock) as device:
        host = open_port(device.port, timeout=0.2)
        seq = 0
        for cmd, payload in ((CONFIGURE, configure(0)), (CONFIGURE, configure(1)),
                             (SET_AMPLITUDE, amplitude(0, 100)), (SET_AMPLITUDE, amplitude(1, 100)),
                             (START, start(3, duration_s=1))):
            seq += 1
            reply = host.request(seq, cmd, payload)
            assert reply is not None and reply.status == OK
        stream, sent = bytearray(), 0
        for _ in range(15):
            burst = b""
            for _ in range(5):
                seq += 1
                burst += frame(seq, GET_STATUS)
            host.ser.write(burst)
            sent += 5
            clock.now += 0.1
            time.sleep(0.005)
            stream += host.ser.read(host.ser.in_waiting)
        deadline = time.monotonic() + 2.0
        while len([f for f in parse_stream(bytes(stream)) if f.seq]) < sent \
                and time.monotonic() < deadline:
            stream += host.ser.read(max(1, host.ser.in_waiting))
    frames = parse_stream(bytes(stream))
    replies = [f for f in frames if f.seq != 0]
    assert [f.seq for f in replies] == list(range(seq - sent + 1, seq + 1))
    events = [f for f in frames if f.seq == 0]
    assert [(f.cmd, f.payload[:2]) for f in events] == [
        (EVENT, bytes([EV_LEAD_OFF, 0])), (EVENT, bytes([EV_COMPLETE, 1]))]


# -- a device nobody shipped: another framed TENS, served from its profile alone ---------------
MS1_YAML = """\
profile_format: 1
spec_version: "MS-1 test interface (invented for the simulator tests)"
id: ms-1
vendor: Test Devices
model: MS-1
modality: tens
link: {baudrate: 57600, reply_timeout_s: 0.1}
protocol:
  family: framed_binary
  sync: 0x5A
  payload_byte_order: big
  reply_code_offset: 0x40
  max_len: 64
  seq_min: 1
  seq_max: 200
  status_codes: {0: fine, 0x21: unknown command, 0x22: bad length, 0x23: value out of range,
                 0x24: invalid state, 0x25: lead off, 0x26: interlock latched, 0x27: busy}
  events:
    code: 0x3F
    payload:
      - {name: kind, type: u8}
      - {name: channel, type: u8}
      - {name: value, type: u16}
    kind_field: kind
    kinds:
      0x11: {name: over_current}
      0x12: {name: lead_off}
      0x13: {name: session_complete}
      0x14: {name: watchdog_expired}
      0x15: {name: patient_stop}
  commands:
    ping: {code: 0x30}
    info:
      code: 0x31
      reply:
        - {name: model, type: ascii, length: 6}
        - {name: fw_major, type: u8}
    setup:
      code: 0x32
      request:
        - {name: waveform, type: u8, allowed: [0, 1]}
        - {name: mode, type: u8, allowed: [0]}
        - {name: frequency_hz, type: u16, min: 1, max: 200}
        - {name: pulse_width_us, type: u16, min: 50, max: 300}
        - {name: amplitude, type: u16, scale: 0.01, unit: mA, min: 0, max: 6000}
    level:
      code: 0x33
      request:
        - {name: amplitude, type: u16, scale: 0.01, unit: mA, min: 0, max: 6000}
        - {name: ramp_ds, type: u8, scale: 0.1, unit: s, max: 100}
    go:
      code: 0x34
      request:
        - {name: seconds, type: u16, unit: s, min: 1, max: 1800}
        - {name: ramp, type: u8, max: 20}
    halt:
      code: 0x35
      request:
        - {name: ramp_ms, type: u16, scale: 0.001}
    kill: {code: 0x36}
    unlatch: {code: 0x37}
    dog:
      code: 0x38
      request:
        - {name: timeout_ds, type: u8, scale: 0.1, unit: s, allowed: [0], min: 1, max: 20}
    status:
      code: 0x39
      reply:
        - {name: flags, type: u8, bits: {estop: 0, dog: 1, pstop: 2}}
        - {name: state, type: u8}
        - {name: amplitude, type: u16, scale: 0.01, unit: mA}
        - {name: impedance, type: u16}
        - {name: elapsed, type: u16}
        - {name: remaining, type: u16}
operations:
  identify:
    - read: [info]
      expect: {info.model: MS-1}
  configure:
    - write: setup
      args: {waveform: $waveform, mode: $mode, frequency_hz: $frequency_hz,
             pulse_width_us: $pulse_width_us, amplitude: $amplitude_ma}
  arm:
    - write: dog
      args: {timeout_ds: $watchdog_s}
  start:
    - write: go
      args: {seconds: $timer_s, ramp: $ramp_up_s}
  adjust:
    - write: level
      args: {amplitude: $amplitude_ma, ramp_ds: $ramp_up_s}
  stop:
    - write: halt
      args: {ramp_ms: $ramp_down_s}
  emergency_stop:
    - write: kill
  clear_fault:
    - write: unlatch
  read_telemetry:
    - read: [status]
telemetry:
  output_on: {source: status.state, map: {"0": false, "1": true, "2": true, "3": true, "4": false}}
  channel_state:
    source: status.state
    map: {"0": idle, "1": ramping_up, "2": running, "3": ramping_down, "4": lead_off}
  amplitude_ma: status.amplitude
  impedance_ohm: status.impedance
  elapsed_s: status.elapsed
  remaining_s: status.remaining
  estop_latched: status.flags.estop
  watchdog_expired: status.flags.dog
  patient_stop: status.flags.pstop
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
    duration_s: {min: 1, max: 1790}
    frequency_hz: {min: 1, max: 200}
    pulse_width_us: {min: 50, max: 300}
    amplitude_ma: {min: 0.01, max: 60.0}
    electrode_area_cm2: {min: 1.0, max: 100.0}
  clinical:                    # the TENS ceilings (controller/modality/ceilings.py) require these
    frequency_hz: {max: 150}
  derived: {charge_per_phase_uc: {max: 32.0}, current_density_rms_ma_cm2: {max: 2.0}}
rules: {ramp_rate_ma_s: 10.0}
safety:
  watchdog_s: 1.0
  poll_period_s: 0.2
  retry_budget: 2
  timer_margin_s: 5.0
  stale_after_s: 0.8
"""
MS1_SYNC = 0x5A
MS1_OFFSET = 0x40
MS1_PING, MS1_INFO, MS1_SETUP, MS1_LEVEL, MS1_GO = 0x30, 0x31, 0x32, 0x33, 0x34
MS1_STATUS, MS1_UNLATCH = 0x39, 0x37
MS1_EVENT, MS1_OVER_CURRENT, MS1_COMPLETE = 0x3F, 0x11, 0x13


def ms1_status(host: Port, seq: int) -> tuple[int, ...]:
    reply = host.ask(seq, MS1_STATUS)
    assert reply.status == 0
    return struct.unpack(">BBHHHH", reply.body)


def test_an_invented_framed_tens_is_served_from_its_profile(
        tmp_path: Path, sim_device: Callable[..., SimulatedDevice],
        open_port: Callable[..., Port]) -> None:
    path = tmp_path / "ms-1.yaml"
    path.write_text(MS1_YAML)
    device = sim_device(load_profile_file(path).profile, overcurrent_at=0.5)
    host = open_port(device.port, sync=MS1_SYNC, timeout=0.3)
    host.ser.write(frame(1, PING))                # an ES-4 frame is not an MS-1 frame
    assert host.read_frame() is None
    assert host.ask(2, MS1_PING) == Frame(2, MS1_PING + MS1_OFFSET, b"\x00")
    assert host.ask(3, MS1_INFO).body == b"MS-1\0\0\x01"
    assert host.ask(4, 0x01) == Frame(4, 0x41, b"\x21")
    assert host.ask(5, MS1_SETUP, struct.pack(">BBHHH", 0, 0, 250, 150, 1234)) == \
        Frame(5, MS1_SETUP + MS1_OFFSET, b"\x23")
    assert host.ask(6, MS1_GO, struct.pack(">HB", 60, 0)).payload == b"\x24"  # unset
    assert host.ask(7, MS1_SETUP, struct.pack(">BBHHH", 0, 0, 80, 150, 1234)).payload \
        == b"\x00"
    assert host.ask(8, MS1_GO, struct.pack(">HB", 60, 0)).payload == b"\x00"
    flags, state, amp, impedance, _elapsed, remaining = ms1_status(host, 9)
    assert (flags, state, amp, remaining) == (0, RUNNING, 1234, 60)
    assert 800 <= impedance <= 1500
    assert host.ask(20, MS1_LEVEL, struct.pack(">HB", 2001, 0)).payload == b"\x00"
    assert ms1_status(host, 21)[2] == 2001          # 20.01 mA: a 0.01 mA device
    event = host.wait_event(3.0)
    assert event == Frame(0, MS1_EVENT, bytes([MS1_OVER_CURRENT, 0]) + (2001).to_bytes(2, "big"))
    assert ms1_status(host, 10)[:2] == (0b001, IDLE)
    assert host.ask(11, MS1_GO, struct.pack(">HB", 1, 0)).payload == b"\x26"
    assert host.ask(12, MS1_UNLATCH).payload == b"\x00"
    assert host.ask(13, MS1_GO, struct.pack(">HB", 1, 0)).payload == b"\x00"
    assert host.wait_event(3.0) == Frame(0, MS1_EVENT, bytes([MS1_COMPLETE, 0, 0, 0]))
    with device.model.lock:
        assert [(c.on, c.cause) for c in device.model.history] == [
            (True, "start"), (False, "over_current"), (True, "start"), (False, "timer")]
