"""A Modbus-family thermal unit this project has never seen, with fault codes of its own.

The TP-7 numbers its faults 0x21.. and words them its own way; the controller and the
simulator read both from the profile (no code knows them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.modality.prescription import build_prescription
from controller.profiles.loader import ProfileError, load_profile_file
from controller.profiles.model import Profile
from controller.session import checks
from controller.session.worker import Session
from tests.conftest import SimFactory
from tests.session_helpers import history, on_time

TP7 = """\
profile_format: 1
spec_version: "TP-7 sheet 4"
id: tp-7
vendor: Nobody
model: TP-7
modality: thermal
link: {baudrate: 38400, parity: N, reply_timeout_s: 0.1}
protocol:
  family: modbus_rtu
  unit_address: 3
  input_registers:
    model_code: {address: 0x10, type: uint16}
    temp:       {address: 0x11, type: int16, scale: 0.01}
    flags:
      address: 0x12
      type: bits
      bits: {running: 0, pad_ok: 1, hot_trip: 2, cold_trip: 3, wd: 4, timer_done: 5}
    elapsed:    {address: 0x13, type: uint16}
    left:       {address: 0x14, type: uint16}
    fault:      {address: 0x15, type: uint16}
  holding_registers:
    target:     {address: 0x20, type: int16, scale: 0.01, min: 500, max: 4500}
    timer:      {address: 0x21, type: uint16, min: 1, max: 7200}
    run:        {address: 0x22, type: uint16, allowed: [0, 1]}
    watchdog:   {address: 0x23, type: uint16, scale: 0.1, min: 0, max: 600}
    clear:      {address: 0x24, type: uint16, allowed: [0x0F]}
operations:
  identify: [{read: [model_code, flags, fault], expect: {model_code: 0x5437}}]
  configure: [{write: target, args: {value: $temperature_c}}]
  arm:
    - {write: watchdog, args: {value: $watchdog_s}}
    - {write: timer, args: {value: $timer_s}}
  start: [{write: run, args: {value: 1}}]
  stop: [{write: run, args: {value: 0}}]
  emergency_stop: [{write: run, args: {value: 0}}]
  clear_fault: [{write: clear, args: {value: 0x0F}}]
  read_telemetry: [{read: [temp, flags, elapsed, left, fault]}, {read: [target]}]
telemetry:
  output_on: flags.running
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
  fault_code:
    0: {label: all well, class: none}
    0x21: {name: over_temperature, label: plate too hot, class: interlock}
    0x22: {name: under_temperature, label: plate too cold, class: interlock}
    0x23: {name: sensor_open, label: probe broken, class: device_fault}
    0x24: {name: sensor_short, label: probe shorted, class: device_fault}
    0x25: {name: pad_disconnected, label: plate unplugged, class: interlock}
parameters:
  temperature_c: {type: number, unit: degC, step: 0.5, default: 38.0}
limits:
  absolute:
    duration_s: {min: 1, max: 7000}
    temperature_c: {min: 5.0, max: 45.0}
  clinical: {duration_s: {max: 1800}}
  regimes:
    cold:
      when: {parameter: temperature_c, below: 33.0}
      clinical: {duration_s: {max: 1200}, temperature_c: {min: 10.0}}
  derived: {cem43_min: {max: 60.0}}
  interlocks: {pad_temp_max_c: 45.0}
rules: {skin_temp_c: 33.0}
safety: {watchdog_s: 2.0, poll_period_s: 0.2, retry_budget: 3, timer_margin_s: 5.0,
         stale_after_s: 1.0}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tp-7.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def tp7(tmp_path: Path) -> Profile:
    return load_profile_file(write(tmp_path, TP7)).profile


def test_fault_codes_are_read_through_the_profile(tp7: Profile) -> None:
    base = {"output_on": False, "pad_connected": True}
    assert checks.explain_stop(tp7, {**base, "fault_code": 0x23}) == checks.Verdict(
        "fault", "interlock", "device fault 35: probe broken")
    assert checks.latched_fault(tp7, {**base, "fault_code": 0}) is None
    assert checks.latched_fault(tp7, {**base, "fault_code": 0x24}) == \
        "device reports a latched fault (probe shorted)"
    # A code the profile does not list, or text where a code belongs, is never "no fault".
    assert checks.latched_fault(tp7, {**base, "fault_code": 3}) == \
        "device reports a latched fault (unknown)"
    assert checks.latched_fault(tp7, {**base, "fault_code": "OK"}) is not None


def test_a_table_without_a_no_fault_code_is_refused(tmp_path: Path) -> None:
    text = TP7.replace("0: {label: all well, class: none}",
                       "0: {label: all well, class: device_fault}")
    with pytest.raises(ProfileError, match="no code has class 'none'"):
        load_profile_file(write(tmp_path, text))


def test_a_fault_code_without_a_table_is_refused(tmp_path: Path) -> None:
    start = TP7.index("faults:")
    text = TP7[:start] + TP7[TP7.index("parameters:"):]
    with pytest.raises(ProfileError, match="faults: telemetry 'fault_code' needs a table"):
        load_profile_file(write(tmp_path, text))


def test_a_parameter_step_between_register_steps_is_refused(tmp_path: Path) -> None:
    # 5.0 + n x 0.005: 5.005 is half a 0.01 degC register step.
    text = TP7.replace("step: 0.5, default: 38.0", "step: 0.005, default: 38.0")
    with pytest.raises(ProfileError, match=r"0\.005 is finer than target\.value"):
        load_profile_file(write(tmp_path, text))


def test_a_session_runs_from_the_profile_alone(sim_device: SimFactory, tp7: Profile) -> None:
    device = sim_device(tp7)
    report = Session(tp7, build_prescription(tp7, {"temperature_c": "40"}, 1.0),
                     device.port).run()
    assert report.outcome == "completed", report.reason
    seconds, _ = on_time(device)
    assert seconds == pytest.approx(1.0, abs=0.3)


def test_the_simulator_reports_its_own_code_and_the_controller_its_label(
        sim_device: SimFactory, tp7: Profile) -> None:
    # A sensor reading twice the truth latches the over-temperature trip at power-up.
    device = sim_device(tp7, miscal_gain=2.0)
    report = Session(tp7, build_prescription(tp7, {"temperature_c": "40"}, 2.0),
                     device.port).run()
    assert report.outcome == "rejected"
    assert "plate too hot" in report.reason
    assert not history(device)
