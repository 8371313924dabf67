"""A framed-family TENS unit this project has never seen, from its profile alone.

The FT-2 frames with SYNC 0x5A, big-endian payloads and its own command codes; its
amplitude is in 0.01 mA units but takes multiples of 10 only (`step: 10`); its status
reply has the flags last; its events carry its own codes, words and classes, and the
over-current value in 0.01 mA. No code names it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.modality.prescription import build_prescription
from controller.profiles.loader import ProfileError, load_profile_file
from controller.profiles.model import Profile
from controller.session import checks
from controller.session.worker import Session
from protocols import framed_codec
from protocols.engine import DeviceEvent
from protocols.errors import ValueRejected
from protocols.map_framed import FramedMap, FrameField
from tests.conftest import SimFactory
from tests.session_helpers import history, on_time

FT2 = """\
profile_format: 1
spec_version: "FT-2 link protocol 3"
id: ft-2
vendor: Frame Therapy
model: FT-2
modality: tens
link: {baudrate: 57600, reply_timeout_s: 0.1}
protocol:
  family: framed_binary
  sync: 0x5A
  payload_byte_order: big
  reply_code_offset: 0x40
  status_codes: {0: OK, 1: unknown command, 2: bad length, 3: out of range,
                 4: invalid state, 5: lead off, 6: interlock latched, 7: busy}
  open_with: hello
  events:
    code: 0x7E
    payload:
      - {name: channel, type: u8}
      - {name: event, type: u8}
      - {name: value, type: u16}
    kind_field: event
    kinds:
      0x31: {name: lead_off, class: interlock, label: electrode detached,
             value: {description: impedance, unit: ohm}}
      0x32: {name: session_complete, class: timer}
      0x33: {name: watchdog_expired, class: link}
      0x34: {name: over_current, class: interlock, label: "over-current, head stopped",
             value: {scale: 0.01, unit: mA}}
      0x35: {name: patient_stop, class: patient, label: patient pulled the cord}
  commands:
    hello: {code: 0x00}
    info:
      code: 0x01
      reply:
        - {name: model, type: ascii, length: 6}
        - {name: serial, type: u32}
        - {name: fw_major, type: u8}
        - {name: fw_minor, type: u8}
    setup:
      code: 0x21
      request:
        - {name: channel, type: u8, allowed: [0, 1]}
        - {name: frequency_hz, type: u16, min: 1, max: 200}
        - {name: pulse_width_us, type: u16, min: 50, max: 400}
        - {name: waveform, type: u8, allowed: [0, 1]}
        - {name: mode, type: u8, allowed: [0, 1, 2]}
    level:
      code: 0x22
      request:
        - {name: channel, type: u8, allowed: [0, 1]}
        - {name: amplitude, type: u16, scale: 0.01, unit: mA, min: 0, max: 8000, step: 10}
        - {name: ramp_ms, type: u16, scale: 0.001, unit: s, min: 0, max: 10000}
    go:
      code: 0x23
      request:
        - {name: channel_mask, type: u8, min: 1, max: 3}
        - {name: duration_s, type: u16, unit: s, min: 1, max: 3600}
        - {name: ramp_up_s, type: u8, unit: s, min: 0, max: 20}
    halt:
      code: 0x24
      request:
        - {name: channel_mask, type: u8, min: 0, max: 3}
        - {name: ramp_down_ms, type: u16, scale: 0.001, unit: s}
    kill: {code: 0x2F}
    unlatch: {code: 0x2E}
    status:
      code: 0x30
      reply:
        - {name: ch0_amplitude, type: u16, scale: 0.01, unit: mA}
        - {name: ch0_state, type: u8}
        - {name: ch0_left, type: u16, unit: s}
        - {name: ch0_done, type: u16, unit: s}
        - {name: ch0_ohm, type: u16, unit: ohm}
        - {name: ch1_amplitude, type: u16, scale: 0.01, unit: mA}
        - {name: ch1_state, type: u8}
        - {name: ch1_left, type: u16, unit: s}
        - {name: ch1_done, type: u16, unit: s}
        - {name: ch1_ohm, type: u16, unit: ohm}
        - {name: flags, type: u8, bits: {wd: 4, cord: 5, latched: 6}}
    watchdog:
      code: 0x31
      request: [{name: ms, type: u16, scale: 0.001, unit: s, min: 200, max: 5000}]
operations:
  identify:
    - read: [info]
      expect: {info.model: FT-2}
    - read: [status]
  configure:
    - write: setup
      args: {channel: $channel, frequency_hz: $frequency_hz, pulse_width_us: $pulse_width_us,
             waveform: $waveform, mode: $mode}
    - write: level
      args: {channel: $channel, amplitude: $amplitude_ma, ramp_ms: 0}
  arm:
    - write: watchdog
      args: {ms: $watchdog_s}
  start:
    - write: go
      args: {channel_mask: $channel_mask, duration_s: $timer_s, ramp_up_s: $ramp_up_s}
  adjust:
    - write: level
      args: {channel: $channel, amplitude: $amplitude_ma, ramp_ms: $ramp_up_s}
  stop:
    - write: halt
      args: {channel_mask: $channel_mask, ramp_down_ms: $ramp_down_s}
  emergency_stop: [{write: kill}]
  clear_fault: [{write: unlatch}]
  read_telemetry: [{read: [status]}]
telemetry:
  output_on:
    source: "status.ch{channel}_state"
    map: {"0": false, "1": true, "2": true, "3": true, "4": false}
  channel_state:
    source: "status.ch{channel}_state"
    map: {"0": idle, "1": ramping_up, "2": running, "3": ramping_down, "4": lead_off}
  amplitude_ma: "status.ch{channel}_amplitude"
  impedance_ohm: "status.ch{channel}_ohm"
  elapsed_s: "status.ch{channel}_done"
  remaining_s: "status.ch{channel}_left"
  estop_latched: status.flags.latched
  watchdog_expired: status.flags.wd
  patient_stop: status.flags.cord
parameters:
  frequency_hz: {type: integer, unit: Hz, default: 80}
  pulse_width_us: {type: integer, unit: us, default: 200}
  amplitude_ma: {type: number, unit: mA, step: 0.1}
  channel: {type: integer, allowed: [0, 1], default: 0}
  waveform: {type: choice, choices: {symmetric: 0, asymmetric: 1}, default: symmetric}
  mode: {type: choice, choices: {continuous: 0, burst: 1, modulated: 2}, default: continuous}
  electrode_area_cm2: {type: number, unit: cm2, default: 25.0}
limits:
  absolute:
    duration_s: {min: 1, max: 3595}
    frequency_hz: {min: 1, max: 150}
    pulse_width_us: {min: 50, max: 400}
    amplitude_ma: {min: 0.1, max: 80.0}
    electrode_area_cm2: {min: 1.0, max: 400.0}
  clinical: {duration_s: {max: 1800}}
  derived:
    current_density_rms_ma_cm2: {max: 2.0}
    charge_per_phase_uc: {max: 32.0}
  interlocks: {impedance_max_ohm: 10000}
rules: {ramp_rate_ma_s: 10.0, max_ramp_s: 10}
safety: {watchdog_s: 1.0, poll_period_s: 0.2, retry_budget: 3, timer_margin_s: 5.0,
         stale_after_s: 0.8}
"""
SETTINGS = {"frequency_hz": "100", "pulse_width_us": "200", "amplitude_ma": "10"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ft-2.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def ft2(tmp_path: Path) -> Profile:
    return load_profile_file(write(tmp_path, FT2)).profile


def amplitude_field(profile: Profile) -> FrameField:
    assert isinstance(profile.protocol, FramedMap)
    return next(f for f in profile.protocol.commands["level"].request if f.name == "amplitude")


def test_a_stepped_field_takes_only_its_multiples(ft2: Profile) -> None:
    field = amplitude_field(ft2)
    assert framed_codec.to_raw(field, 10.1, "level") == 1010
    with pytest.raises(ValueRejected) as err:
        framed_codec.to_raw(field, 10.05, "level")   # 1005: a whole raw value, off the step
    message = str(err.value)
    assert "in steps of 10 from 0" in message
    assert len(message) < 300   # says the rule, never lists 800 values


def test_a_parameter_grid_finer_than_the_field_step_is_refused(tmp_path: Path) -> None:
    text = FT2.replace("amplitude_ma: {type: number, unit: mA, step: 0.1}",
                       "amplitude_ma: {type: number, unit: mA, step: 0.05}")
    with pytest.raises(ProfileError) as err:
        load_profile_file(write(tmp_path, text))
    problems = "\n".join(err.value.problems)
    # 0.1 (the minimum, raw 10) is on the field's grid; 0.15 (raw 15) is the first off it.
    assert "$amplitude_ma may be 0.15" in problems and "raw steps of 10" in problems


def test_a_session_runs_from_the_profile_alone(sim_device: SimFactory, ft2: Profile) -> None:
    device = sim_device(ft2)
    rx = build_prescription(ft2, SETTINGS, 1.0)
    report = Session(ft2, rx, device.port).run()
    assert report.outcome == "completed", report.reason
    seconds, _ = on_time(device)
    assert seconds == pytest.approx(1.0, abs=0.4)
    assert not history(device)[-1].on


def test_its_own_events_are_read_with_their_label_class_and_unit(ft2: Profile) -> None:
    def event(kind: str, channel: int, value: int) -> DeviceEvent:
        return DeviceEvent(kind, {"channel": channel, "event": 0, "value": value}, 0.0)

    # The event value is in the profile's 0.01 mA units: 1000 -> 10 mA.
    assert checks.event_verdict(ft2, event("over_current", 0, 1000), 0) == checks.Verdict(
        "fault", "interlock", "over-current, head stopped (10 mA)")
    assert checks.event_verdict(ft2, event("lead_off", 0, 12000), 0) == checks.Verdict(
        "fault", "interlock", "electrode detached (impedance 12000 ohm)")
    assert checks.event_verdict(ft2, event("lead_off", 1, 12000), 0) is None  # not ours
    # A patient event ends every channel's session.
    assert checks.event_verdict(ft2, event("patient_stop", 1, 0), 0) == checks.Verdict(
        "aborted", "patient", "patient pulled the cord")


def test_an_injected_over_current_ends_the_session_as_an_interlock(
        sim_device: SimFactory, ft2: Profile) -> None:
    device = sim_device(ft2, overcurrent_at=1.0)
    rx = build_prescription(ft2, SETTINGS, 6.0)
    report = Session(ft2, rx, device.port).run()
    assert report.outcome == "fault" and report.stop_source == "interlock", report.reason
    # The event frame or the latched flag in the next status reply, whichever comes first.
    assert report.reason == "over-current, head stopped (10 mA)" or \
        report.reason.startswith("device e-stop latched")
    assert report.delivered_s == pytest.approx(1.0, abs=0.3)
    assert not history(device)[-1].on


def test_a_patient_class_event_aborts(sim_device: SimFactory, ft2: Profile) -> None:
    device = sim_device(ft2, patient_stop_at=1.0)
    rx = build_prescription(ft2, SETTINGS, 6.0)
    report = Session(ft2, rx, device.port).run()
    assert report.outcome == "aborted" and report.stop_source == "patient", report.reason
