"""The simulated HC-200 (and an invented Modbus thermal device), driven by raw bytes.

Frames are built here with a bit-by-bit CRC written from the Modbus spec,
independent of both `protocols/crc.py` and the controller's codecs. Most tests
drive the endpoint directly with a fake clock (hours of therapy in
milliseconds); a few run short real exchanges over the pseudo-terminal.
"""

from __future__ import annotations

import functools
import itertools
import time
from pathlib import Path

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.profiles.loader import resolve_profile
from controller.profiles.model import Profile
from simulator.faults import FaultPlan
from simulator.modbus_device import ModbusEndpoint
from simulator.server import SimulatedDevice, build_endpoint, build_model
from simulator.thermal_model import ThermalModel
from tests.conftest import SimFactory
from tests.support.crc import crc16_modbus as crc16

UNIT = 1
MODEL_CODE = 0x4843
CAL_KEY = 0xCA1B
REPLY_TIMEOUT_S = 0.5   # the device answers in well under 20 ms; generous for a loaded box
SILENCE_S = 0.1         # how long we wait to be sure no reply comes

# HC-200 register addresses (the test's own copy of the vendor document).
IR_PAD_TEMP, IR_DRIVE, IR_STATUS, IR_ELAPSED, IR_REMAINING, IR_FAULT = 0, 1, 2, 3, 4, 5
IR_FIRMWARE, IR_MODEL = 6, 9
HR_SETPOINT, HR_RUN_TIME, HR_OUTPUT, HR_WATCHDOG, HR_TRIP_HIGH, HR_TRIP_LOW = 0, 1, 2, 3, 4, 5
HR_CAL_OFFSET, HR_CAL_GAIN, HR_CAL_MODE, HR_FAULT_RESET = 6, 7, 8, 9
BIT_OUTPUT, BIT_PAD, BIT_OVER, BIT_UNDER, BIT_SENSOR, BIT_WATCHDOG, BIT_TIMER, BIT_CAL = range(8)


# -- an independent Modbus RTU host --------------------------------------------------------------
def adu(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    crc = crc16(body)
    return body + bytes([crc & 0xFF, crc >> 8])


def read_req(function: int, start: int, count: int, unit: int = UNIT) -> bytes:
    return adu(unit, bytes([function]) + start.to_bytes(2, "big") + count.to_bytes(2, "big"))


def write_req(address: int, value: int, unit: int = UNIT) -> bytes:
    data = address.to_bytes(2, "big") + (value & 0xFFFF).to_bytes(2, "big")
    return adu(unit, bytes([0x06]) + data)


def write_many_req(start: int, values: list[int], unit: int = UNIT) -> bytes:
    data = b"".join((v & 0xFFFF).to_bytes(2, "big") for v in values)
    return adu(unit, bytes([0x10]) + start.to_bytes(2, "big") + len(values).to_bytes(2, "big")
               + bytes([len(data)]) + data)


def check_reply(reply: bytes, unit: int = UNIT) -> bytes:
    """The PDU of a reply, after checking its address and CRC (low byte first)."""
    assert reply[0] == unit
    crc = crc16(reply[:-2])
    assert reply[-2:] == bytes([crc & 0xFF, crc >> 8]), f"bad CRC in {reply.hex(' ')}"
    return reply[1:-2]


def words(pdu: bytes) -> list[int]:
    assert pdu[1] == len(pdu) - 2
    return [int.from_bytes(pdu[i:i + 2], "big") for i in range(2, len(pdu), 2)]


def signed(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


@functools.cache
def hc200() -> Profile:
    return resolve_profile("hc-200").profile


# -- the device with a fake clock -----------------------------------------------------------------
class Rig:
    """Model + endpoint on a clock the test moves; no pty, no waiting."""

    def __init__(self, profile: Profile | None = None, unit: int = UNIT, **faults: object) -> None:
        self.profile = profile or hc200()
        self.unit = unit
        self.now = 100.0
        self.model = build_model(self.profile, FaultPlan(**faults),  # type: ignore[arg-type]
                                 clock=lambda: self.now)
        endpoint = build_endpoint(self.profile, self.model)
        assert isinstance(endpoint, ModbusEndpoint)
        self.endpoint = endpoint
        self.endpoint.tick(self.now)

    @property
    def thermal(self) -> ThermalModel:
        assert isinstance(self.model, ThermalModel)
        return self.model

    def advance(self, seconds: float, step: float = 0.5) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            self.endpoint.tick(self.now)

    def send(self, request: bytes) -> bytes | None:
        replies = self.endpoint.receive(request, self.now)
        assert len(replies) <= 1
        return replies[0] if replies else None

    def pdu(self, request: bytes) -> bytes:
        reply = self.send(request)
        assert reply is not None, "no reply"
        return check_reply(reply, self.unit)

    def read(self, function: int, start: int, count: int = 1) -> list[int]:
        pdu = self.pdu(read_req(function, start, count, self.unit))
        assert pdu[0] == function, f"exception {pdu.hex(' ')}"
        return words(pdu)

    def inp(self, address: int) -> int:
        return self.read(0x04, address)[0]

    def hold(self, address: int) -> int:
        return self.read(0x03, address)[0]

    def write(self, address: int, value: int) -> None:
        request = write_req(address, value, self.unit)
        assert self.pdu(request) == request[1:-2]          # 0x06 echoes the request

    def exception(self, request: bytes) -> int:
        pdu = self.pdu(request)
        assert pdu[0] & 0x80 and len(pdu) == 2, f"not an exception: {pdu.hex(' ')}"
        assert pdu[0] == request[1] | 0x80
        return pdu[1]

    def status(self) -> int:
        return self.inp(IR_STATUS)

    def bit(self, bit: int) -> bool:
        return bool(self.status() >> bit & 1)


@pytest.fixture
def rig() -> Rig:
    return Rig()


# -- identity, defaults, exceptions --------------------------------------------------------------
def test_identity_and_power_up_state(rig: Rig) -> None:
    inputs = rig.read(0x04, 0, 10)
    assert inputs[IR_MODEL] == MODEL_CODE
    assert inputs[IR_FIRMWARE] == 100                      # 1.00 as major x 100 + minor
    assert inputs[IR_PAD_TEMP] == 320                      # idle pad at skin temperature
    assert inputs[IR_STATUS] == 1 << BIT_PAD
    assert inputs[IR_FAULT] == 0 and inputs[IR_REMAINING] == 0 and inputs[IR_DRIVE] == 0
    assert rig.read(0x03, 0, 10) == [370, 600, 0, 0, 460, 50, 0, 10000, 0, 0]


def test_unsupported_functions_are_exception_1(rig: Rig) -> None:
    assert rig.exception(read_req(0x01, 0, 1)) == 0x01          # read coils
    assert rig.exception(adu(UNIT, bytes([0x05, 0, 0, 0xFF, 0]))) == 0x01
    assert rig.exception(adu(UNIT, bytes([0x41, 1, 2, 3]))) == 0x01  # vendor function
    assert rig.exception(adu(UNIT, bytes([0x11]))) == 0x01          # report server id


def test_addresses_outside_the_map_are_exception_2(rig: Rig) -> None:
    assert rig.exception(read_req(0x04, 8, 3)) == 0x02     # 10 does not exist
    assert rig.exception(read_req(0x03, 10, 1)) == 0x02
    assert rig.exception(read_req(0x03, 0xFFFF, 1)) == 0x02
    assert rig.exception(write_req(10, 1)) == 0x02
    assert rig.exception(write_many_req(9, [1, 1])) == 0x02
    assert rig.hold(HR_FAULT_RESET) == 0                   # nothing written


def test_register_counts_are_checked(rig: Rig) -> None:
    assert rig.exception(read_req(0x04, 0, 0)) == 0x03
    assert rig.exception(read_req(0x04, 0, 17)) == 0x03   # more than 16 per request
    assert len(rig.read(0x04, 0, 10)) == 10
    bad_count = adu(UNIT, bytes([0x10, 0, 0, 0, 2, 2, 1, 0x90]))  # byte count 2 for 2 regs
    assert rig.exception(bad_count) == 0x03


@pytest.mark.parametrize(("address", "value"), [
    (HR_SETPOINT, 451), (HR_SETPOINT, 49), (HR_SETPOINT, -10), (HR_RUN_TIME, 0),
    (HR_RUN_TIME, 3601), (HR_OUTPUT, 2), (HR_WATCHDOG, 61), (HR_CAL_MODE, 1),
    (HR_FAULT_RESET, 0), (HR_FAULT_RESET, 2),
])
def test_values_outside_the_range_are_exception_3(rig: Rig, address: int, value: int) -> None:
    before = rig.read(0x03, 0, 10)
    assert rig.exception(write_req(address, value)) == 0x03
    assert rig.read(0x03, 0, 10) == before


def test_range_edges_are_accepted(rig: Rig) -> None:
    for address, value in ((HR_SETPOINT, 50), (HR_SETPOINT, 450), (HR_RUN_TIME, 1),
                           (HR_RUN_TIME, 3600), (HR_WATCHDOG, 60), (HR_WATCHDOG, 0)):
        rig.write(address, value)
        assert rig.hold(address) == value


@pytest.mark.parametrize(("address", "value"), [
    (HR_TRIP_HIGH, 400), (HR_TRIP_LOW, 100), (HR_CAL_OFFSET, 10), (HR_CAL_GAIN, 10100)])
def test_calibration_registers_refused_outside_calibration_mode(
        rig: Rig, address: int, value: int) -> None:
    before = rig.hold(address)
    assert rig.exception(write_req(address, value)) == 0x03
    assert rig.hold(address) == before


def test_write_multiple_is_all_or_nothing(rig: Rig) -> None:
    before = rig.read(0x03, 0, 10)
    # The last value is out of range: none of the first three is applied.
    assert rig.exception(write_many_req(HR_SETPOINT, [400, 100, 1, 61])) == 0x03
    assert rig.read(0x03, 0, 10) == before and not rig.model.output_on
    # A refusal found only by the device's state (start in calibration mode) undoes
    # the setpoint and run time written before it in the same request.
    rig.write(HR_CAL_MODE, CAL_KEY)
    assert rig.exception(write_many_req(HR_SETPOINT, [400, 100, 1])) == 0x03
    assert rig.read(0x03, 0, 3) == [370, 600, 0] and rig.model.history == []
    rig.write(HR_CAL_MODE, 0)
    pdu = rig.pdu(write_many_req(HR_SETPOINT, [420, 30, 1, 5]))
    assert pdu == bytes([0x10, 0, 0, 0, 4])
    assert rig.read(0x03, 0, 4) == [420, 30, 1, 5]
    assert rig.bit(BIT_OUTPUT) and rig.inp(IR_REMAINING) == 30


def test_setpoint_can_change_while_running(rig: Rig) -> None:
    rig.write(HR_OUTPUT, 1)
    rig.write(HR_SETPOINT, 420)
    assert rig.hold(HR_SETPOINT) == 420 and rig.model.output_on


# -- framing and addressing -------------------------------------------------------------------
def test_wrong_crc_other_unit_and_broadcast_get_no_reply(rig: Rig) -> None:
    good = read_req(0x04, IR_MODEL, 1)
    assert rig.send(good[:-1] + bytes([good[-1] ^ 0x01])) is None
    assert rig.send(read_req(0x04, IR_MODEL, 1, unit=2)) is None
    assert rig.send(write_req(HR_OUTPUT, 1, unit=0)) is None          # broadcast: ignored
    assert not rig.model.output_on
    assert rig.endpoint.ignored_frames == 2
    # Still in sync: the next good request is answered.
    assert rig.inp(IR_MODEL) == MODEL_CODE


def test_partial_chunks_and_garbage_resync(rig: Rig) -> None:
    request = write_many_req(HR_SETPOINT, [400, 120])
    for byte in request[:-1]:
        assert rig.endpoint.receive(bytes([byte]), rig.now) == []
    (reply,) = rig.endpoint.receive(request[-1:], rig.now)
    assert check_reply(reply)[0] == 0x10
    replies = rig.endpoint.receive(b"\x00\xff\x13\x37" + read_req(0x03, 0, 2), rig.now)
    assert [words(check_reply(r)) for r in replies] == [[400, 120]]
    # Two requests in one chunk: two replies, in order.
    replies = rig.endpoint.receive(read_req(0x03, 0, 1) + read_req(0x04, IR_MODEL, 1), rig.now)
    assert [words(check_reply(r)) for r in replies] == [[400], [MODEL_CODE]]


REQUESTS = [read_req(0x04, 0, 10), write_req(HR_SETPOINT, 400), read_req(0x03, 0, 2),
            write_many_req(HR_RUN_TIME, [90, 0, 3]), read_req(0x01, 0, 1),
            write_req(HR_SETPOINT, 9999), read_req(0x03, 0, 4)]


@given(cuts=st.lists(st.integers(0, sum(map(len, REQUESTS))), max_size=12))
@settings(max_examples=60, deadline=None)
def test_any_chunking_gives_the_same_replies(cuts: list[int]) -> None:
    stream = b"".join(REQUESTS)
    whole = Rig()
    expected = [whole.send(r) for r in REQUESTS]
    chunked = Rig()
    got: list[bytes] = []
    edges = [0, *sorted(set(cuts)), len(stream)]
    for a, b in itertools.pairwise(edges):
        got += chunked.endpoint.receive(stream[a:b], chunked.now)
    assert got == expected
    assert words(check_reply(got[-1])) == [400, 90, 0, 3]


def test_model_failure_is_exception_4(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(action: str, values: object, now: float) -> None:
        raise RuntimeError("firmware bug")

    monkeypatch.setattr(rig.model, "apply", broken)
    assert rig.exception(write_req(HR_SETPOINT, 400)) == 0x04


def test_stale_partial_request_is_dropped(rig: Rig) -> None:
    assert rig.endpoint.receive(read_req(0x03, 0, 1)[:5], rig.now) == []
    rig.advance(1.0)
    assert rig.hold(HR_SETPOINT) == 370


# -- the device's own backstops -------------------------------------------------------------------
def test_watchdog_stops_the_output(rig: Rig) -> None:
    rig.write(HR_WATCHDOG, 2)
    rig.write(HR_OUTPUT, 1)
    start = rig.now
    for _ in range(5):                               # polled every 1.5 s: keeps running
        rig.advance(1.5, step=0.01)
        assert rig.hold(HR_OUTPUT) == 1
    last_request = rig.now
    rig.advance(3.0, step=0.01)
    assert rig.hold(HR_OUTPUT) == 0
    assert rig.bit(BIT_WATCHDOG) and not rig.bit(BIT_OUTPUT) and not rig.bit(BIT_TIMER)
    stop = rig.model.last_stop()
    assert stop is not None and stop.cause == "watchdog"
    assert stop.t == pytest.approx(last_request + 2.0, abs=0.02)
    assert rig.model.history[0].t == start
    rig.write(HR_OUTPUT, 1)                          # bit 5 clears on the next start
    assert not rig.bit(BIT_WATCHDOG) and rig.bit(BIT_OUTPUT)


def test_watchdog_only_acts_while_the_output_runs(rig: Rig) -> None:
    rig.write(HR_WATCHDOG, 1)
    rig.advance(5.0)
    assert not rig.bit(BIT_WATCHDOG)
    rig.write(HR_WATCHDOG, 0)                        # 0 disables
    rig.write(HR_OUTPUT, 1)
    rig.advance(30.0)
    assert rig.model.output_on


def test_session_timer_stops_the_output(rig: Rig) -> None:
    rig.write(HR_RUN_TIME, 5)
    rig.write(HR_OUTPUT, 1)
    start = rig.now
    rig.advance(2.0)
    assert rig.inp(IR_REMAINING) == 3 and rig.inp(IR_ELAPSED) == 2
    rig.write(HR_RUN_TIME, 100)                      # loaded only at the next start
    rig.advance(4.0, step=0.01)
    assert rig.hold(HR_OUTPUT) == 0
    assert rig.bit(BIT_TIMER) and not rig.bit(BIT_WATCHDOG)
    assert rig.inp(IR_REMAINING) == 0 and rig.inp(IR_ELAPSED) == 5
    stop = rig.model.last_stop()
    assert stop is not None and stop.cause == "timer"
    assert stop.t == pytest.approx(start + 5.0, abs=0.02)
    rig.write(HR_OUTPUT, 1)
    assert not rig.bit(BIT_TIMER) and rig.inp(IR_REMAINING) == 100


# -- trips and faults -----------------------------------------------------------------------------
def test_over_temperature_trip_is_latched_until_reset() -> None:
    rig = Rig(overtemp_at=1.0)
    rig.write(HR_SETPOINT, 400)
    rig.write(HR_OUTPUT, 1)
    rig.advance(10.0, step=0.05)
    assert not rig.model.output_on and rig.hold(HR_OUTPUT) == 0
    assert rig.bit(BIT_OVER) and rig.inp(IR_FAULT) == 3
    stop = rig.model.last_stop()
    assert stop is not None and stop.cause == "interlock"
    assert rig.thermal.reported_c() < 46.0               # cooled back since the trip
    assert rig.exception(write_req(HR_OUTPUT, 1)) == 0x03  # refused while latched
    assert rig.bit(BIT_OVER)                             # latched: does not clear alone
    rig.write(HR_FAULT_RESET, 1)
    assert not rig.bit(BIT_OVER) and rig.inp(IR_FAULT) == 0
    assert rig.hold(HR_FAULT_RESET) == 0                 # reads 0
    rig.write(HR_OUTPUT, 1)                              # may start again
    assert rig.model.output_on


def test_fault_reset_refused_while_the_cause_remains(rig: Rig) -> None:
    rig.write(HR_CAL_MODE, CAL_KEY)
    rig.write(HR_TRIP_HIGH, 300)                         # 30.0 °C: the 32 °C pad passes it
    rig.advance(0.5)
    assert rig.bit(BIT_OVER) and rig.inp(IR_FAULT) == 3
    assert rig.exception(write_req(HR_FAULT_RESET, 1)) == 0x03
    rig.write(HR_TRIP_HIGH, 460)
    assert rig.hold(HR_TRIP_HIGH) == 460
    rig.write(HR_FAULT_RESET, 1)
    assert not rig.bit(BIT_OVER)


def test_under_temperature_trip() -> None:
    rig = Rig(undertemp_at=0.5)
    rig.write(HR_SETPOINT, 200)
    rig.write(HR_OUTPUT, 1)
    rig.advance(8.0, step=0.05)
    assert rig.bit(BIT_UNDER) and rig.inp(IR_FAULT) == 4 and not rig.bit(BIT_OUTPUT)
    stop = rig.model.last_stop()
    assert stop is not None and stop.cause == "interlock"


def test_pad_disconnected_stops_and_refuses_start() -> None:
    rig = Rig(pad_off_at=2.0)
    rig.write(HR_OUTPUT, 1)
    start = rig.now
    rig.advance(3.0, step=0.05)
    assert not rig.bit(BIT_PAD) and not rig.bit(BIT_OUTPUT) and rig.inp(IR_FAULT) == 5
    stop = rig.model.last_stop()
    assert stop is not None and stop.cause == "fault"
    assert stop.t == pytest.approx(start + 2.0, abs=0.06)
    assert rig.exception(write_req(HR_OUTPUT, 1)) == 0x03


# -- calibration ----------------------------------------------------------------------------------
def test_calibration_mode_and_calibration_writes(rig: Rig) -> None:
    rig.write(HR_CAL_MODE, CAL_KEY)
    assert rig.bit(BIT_CAL) and rig.hold(HR_CAL_MODE) == CAL_KEY
    assert rig.exception(write_req(HR_OUTPUT, 1)) == 0x03      # no output in cal mode
    rig.write(HR_CAL_GAIN, 10500)
    rig.write(HR_CAL_OFFSET, -100)                              # -1.00 °C, int16
    rig.write(HR_TRIP_LOW, 30)
    assert rig.read(0x03, HR_TRIP_LOW, 3) == [30, 0xFF9C, 10500]
    assert rig.inp(IR_PAD_TEMP) == 326                          # 32 × 1.05 − 1.00
    rig.write(HR_CAL_OFFSET, -500)
    assert signed(rig.hold(HR_CAL_OFFSET)) == -500
    rig.write(HR_CAL_MODE, 0)
    assert not rig.bit(BIT_CAL) and rig.hold(HR_CAL_MODE) == 0
    assert rig.exception(write_req(HR_CAL_GAIN, 10000)) == 0x03
    assert rig.hold(HR_CAL_GAIN) == 10500                       # kept after leaving
    rig.write(HR_OUTPUT, 1)
    assert rig.exception(write_req(HR_CAL_MODE, CAL_KEY)) == 0x03  # not while running


def test_miscalibrated_sensor_reads_off_until_calibrated() -> None:
    rig = Rig(miscal_gain=1.1, miscal_offset=-0.5)
    assert rig.inp(IR_PAD_TEMP) == 347                          # 32 × 1.1 − 0.5 = 34.7
    rig.write(HR_CAL_MODE, CAL_KEY)
    rig.write(HR_CAL_GAIN, 9091)                                # 1 / 1.1
    rig.write(HR_CAL_OFFSET, 45)                                # + 0.45 °C
    assert rig.inp(IR_PAD_TEMP) == 320


# -- physics and history -----------------------------------------------------------------------
def test_pad_approaches_the_setpoint_then_drifts_back(rig: Rig) -> None:
    rig.write(HR_RUN_TIME, 3600)
    rig.write(HR_SETPOINT, 400)
    rig.write(HR_OUTPUT, 1)
    temps = [rig.inp(IR_PAD_TEMP)]
    drive = [signed(rig.inp(IR_DRIVE))]
    for _ in range(30):
        rig.advance(10.0)
        temps.append(rig.inp(IR_PAD_TEMP))
        drive.append(signed(rig.inp(IR_DRIVE)))
    assert temps == sorted(temps) and max(temps) <= 400
    assert all(b - a <= 15 for a, b in itertools.pairwise(temps))  # ≤ 0.15 °C/s
    assert 365 <= temps[6] <= 375                # time constant about a minute: 63 % of 8 °C
    assert temps[-1] >= 399
    assert drive[0] == 100 and drive == sorted(drive, reverse=True) and drive[-1] >= 0
    rig.write(HR_SETPOINT, 100)                  # cooling, rate limited by the element
    before = rig.thermal.reported_c()
    rig.advance(10.0)
    assert signed(rig.inp(IR_DRIVE)) == -100
    assert before - rig.thermal.reported_c() == pytest.approx(1.5)   # 10 s × 0.15 °C/s
    rig.write(HR_OUTPUT, 0)
    rig.advance(900.0)
    assert rig.inp(IR_PAD_TEMP) == 320 and rig.inp(IR_DRIVE) == 0


def test_output_change_history(rig: Rig) -> None:
    t0 = rig.now
    rig.write(HR_RUN_TIME, 10)
    rig.write(HR_OUTPUT, 1)
    rig.advance(3.0)
    rig.write(HR_OUTPUT, 0)
    rig.write(HR_OUTPUT, 0)                      # already off: no new entry
    rig.advance(2.0)
    rig.write(HR_OUTPUT, 1)
    rig.write(HR_OUTPUT, 1)                      # already on: the run continues
    rig.advance(12.0, step=0.01)
    got = [(round(c.t - t0, 2), c.on, c.cause) for c in rig.model.history]
    assert got == [(0.0, True, "start"), (3.0, False, "stop"), (5.0, True, "start"),
                   (15.0, False, "timer")]
    assert rig.model.first_output_at == t0


# -- the real pseudo-terminal ------------------------------------------------------------------
def open_port(port: str) -> serial.Serial:
    return serial.Serial(port, 19200, parity=serial.PARITY_EVEN, timeout=REPLY_TIMEOUT_S,
                         write_timeout=REPLY_TIMEOUT_S)


def exchange(link: serial.Serial, request: bytes, reply_len: int) -> bytes:
    link.reset_input_buffer()
    link.write(request)
    return bytes(link.read(reply_len))


def expect_silence(link: serial.Serial, request: bytes) -> None:
    link.reset_input_buffer()
    link.write(request)
    deadline = time.monotonic() + SILENCE_S
    while time.monotonic() < deadline:
        assert link.in_waiting == 0
        time.sleep(0.005)


def test_pty_identity_addressing_and_crc(sim_device: SimFactory) -> None:
    device = sim_device("hc-200")
    with open_port(device.port) as link:
        reply = exchange(link, read_req(0x04, IR_MODEL, 1), 7)    # (timing: bench/, not here)
        assert words(check_reply(reply)) == [MODEL_CODE]
        bad = bytearray(read_req(0x04, IR_MODEL, 1))
        bad[-2] ^= 0xFF
        expect_silence(link, bytes(bad))
        expect_silence(link, read_req(0x04, IR_MODEL, 1, unit=2))
        expect_silence(link, write_req(HR_OUTPUT, 1, unit=0))
        assert exchange(link, write_req(HR_SETPOINT, 500), 5) == adu(UNIT, bytes([0x86, 0x03]))
        assert words(check_reply(exchange(link, read_req(0x03, 0, 3), 11))) == [370, 600, 0]


def test_pty_watchdog_in_real_time(sim_device: SimFactory) -> None:
    device = sim_device("hc-200")
    with open_port(device.port) as link:
        assert exchange(link, write_req(HR_WATCHDOG, 1), 8) == write_req(HR_WATCHDOG, 1)
        assert exchange(link, write_req(HR_OUTPUT, 1), 8) == write_req(HR_OUTPUT, 1)
        started = time.monotonic()
        time.sleep(1.2)
        status = words(check_reply(exchange(link, read_req(0x04, IR_STATUS, 1), 7)))[0]
        assert status & (1 << BIT_WATCHDOG) and not status & (1 << BIT_OUTPUT)
    with device.model.lock:
        history = list(device.model.history)
    assert [c.cause for c in history] == ["start", "watchdog"]
    # The device acted within a few ticks of the watchdog period.
    assert history[1].t - history[0].t == pytest.approx(1.0, abs=0.1)
    assert history[0].t >= started - 0.1


# -- an invented device: other layout, scaling, unit and model code --------------------------------
INVENTED = """
profile_format: 1
spec_version: "TC-9 test sheet"
id: tc-9
vendor: Nobody
model: TC-9
modality: thermal
link: {baudrate: 38400, parity: N, reply_timeout_s: 0.1}
protocol:
  family: modbus_rtu
  unit_address: 7
  max_registers_per_request: 8
  input_registers:
    model_code: {address: 0x100, type: uint16}
    temp:       {address: 0x101, type: int16, scale: 0.01}
    flags:
      address: 0x102
      type: bits
      bits: {pad_ok: 0, hot_trip: 8, cold_trip: 9, wd: 12, timer_done: 13}
    run_state:  {address: 0x103, type: uint16}
    elapsed:    {address: 0x104, type: uint16}
    left:       {address: 0x105, type: uint16}
    fault:      {address: 0x106, type: uint16}
  holding_registers:
    target:     {address: 0x200, type: int16, scale: 0.01, min: 500, max: 4500}
    timer:      {address: 0x201, type: uint16, min: 1, max: 7200}
    run_cmd:    {address: 0x202, type: uint16, allowed: [0x5A, 0xA5]}
    watchdog:   {address: 0x203, type: uint16, scale: 0.1, min: 0, max: 600}
    clear:      {address: 0x204, type: uint16, allowed: [0x0F]}
    spare:      {address: 0x205, type: uint16}
operations:
  identify:
    - read: [model_code]
      expect: {model_code: 0x5443}
  configure:
    - {write: target, args: {value: $temperature_c}}
  arm:
    - {write: watchdog, args: {value: $watchdog_s}}
    - {write: timer, args: {value: $timer_s}}
  start: [{write: run_cmd, args: {value: 0xA5}}]
  stop: [{write: run_cmd, args: {value: 0x5A}}]
  emergency_stop: [{write: run_cmd, args: {value: 0x5A}}]
  clear_fault: [{write: clear, args: {value: 0x0F}}]
  read_telemetry:
    - read: [temp, flags, run_state, elapsed, left, fault]
    - read: [target]
telemetry:
  output_on: {source: run_state, map: {"2": true, "1": false}}
  temperature_c: temp
  setpoint_c: target
  fault_code: fault
  elapsed_s: elapsed
  remaining_s: left
  pad_connected: flags.pad_ok
  watchdog_expired: flags.wd
  timer_expired: flags.timer_done
  trip_high: flags.hot_trip
  trip_low: flags.cold_trip
faults:
  fault_code: {0: {label: none, class: none}, 9: {label: overheated, class: interlock}}
parameters:
  temperature_c: {type: number, unit: degC, step: 0.01, default: 38.0}
limits:
  absolute:
    duration_s: {min: 1, max: 7000}
    temperature_c: {min: 5.0, max: 45.0}
  # The thermal ceilings (controller/modality/ceilings.py) require these.
  clinical: {duration_s: {max: 1800}}
  regimes:
    cold:
      when: {parameter: temperature_c, below: 33.0}
      clinical: {duration_s: {max: 1200}, temperature_c: {min: 10.0}}
  derived: {cem43_min: {max: 60.0}}
  interlocks: {pad_temp_max_c: 45.0}
rules: {skin_temp_c: 33.0}
safety:
  watchdog_s: 2.0
  poll_period_s: 0.2
  retry_budget: 3
  timer_margin_s: 5.0
  stale_after_s: 1.0
"""
INVENTED_UNIT = 7


@pytest.fixture
def invented(tmp_path: Path) -> Profile:
    path = tmp_path / "tc-9.yaml"
    path.write_text(INVENTED)
    return resolve_profile(str(path)).profile


def test_invented_device_from_its_profile_alone(invented: Profile) -> None:
    rig = Rig(invented, unit=INVENTED_UNIT)
    assert rig.send(read_req(0x04, 0x100, 1, unit=UNIT)) is None      # not unit 1
    assert rig.read(0x04, 0x100, 7) == [0x5443, 3200, 1, 1, 0, 0, 0]
    assert rig.exception(read_req(0x04, 0, 1, unit=INVENTED_UNIT)) == 0x02
    assert rig.exception(read_req(0x03, 0x200, 9, unit=INVENTED_UNIT)) == 0x03  # max 8
    assert rig.exception(write_req(0x200, 4501, unit=INVENTED_UNIT)) == 0x03
    assert rig.exception(write_req(0x202, 1, unit=INVENTED_UNIT)) == 0x03
    rig.write(0x200, 4012)                                       # 40.12 °C
    rig.write(0x203, 15)                                         # 1.5 s
    rig.write(0x205, 0xBEEF)                                     # no meaning: just stored
    assert rig.read(0x03, 0x200, 6) == [4012, 600, 0x5A, 15, 0, 0xBEEF]
    rig.write(0x201, 30)
    rig.write(0x202, 0xA5)
    assert rig.hold(0x202) == 0xA5 and rig.inp(0x103) == 2
    assert rig.thermal.setpoint_c == pytest.approx(40.12)
    rig.advance(1.0, step=0.1)
    assert rig.inp(0x101) > 3200 and rig.inp(0x105) == 29
    rig.advance(2.0, step=0.01)                                  # silent past 1.5 s
    assert rig.hold(0x202) == 0x5A and rig.inp(0x102) == 1 | 1 << 12
    stop = rig.model.last_stop()
    assert stop is not None and stop.cause == "watchdog"


def test_invented_device_served_on_a_pty(invented: Profile) -> None:
    with SimulatedDevice(invented) as device, serial.Serial(
            device.port, 38400, timeout=REPLY_TIMEOUT_S,
            write_timeout=REPLY_TIMEOUT_S) as link:
        unit = INVENTED_UNIT
        reply = exchange(link, read_req(0x04, 0x100, 1, unit=unit), 7)
        assert words(check_reply(reply, unit)) == [0x5443]
        expect_silence(link, read_req(0x04, 0x100, 1))               # unit 1: silence
        assert exchange(link, write_many_req(0x200, [3650, 1], unit=unit), 8) == \
            adu(unit, bytes([0x10, 0x02, 0x00, 0x00, 0x02]))
        assert exchange(link, write_req(0x202, 0xA5, unit=unit), 8) == \
            write_req(0x202, 0xA5, unit=unit)
        time.sleep(1.1)                                              # the 1 s timer runs out
        flags = words(check_reply(exchange(link, read_req(0x04, 0x102, 2, unit=unit), 9),
                                  unit))
        assert flags == [1 | 1 << 13, 1]                         # pad ok + timer done; idle
        with device.model.lock:
            assert [c.cause for c in device.model.history] == ["start", "timer"]
