"""An SCPI-family ultrasound unit this project has never seen, from its profile alone.

The SX-5 spells its duty cycle as `CW`, `1:1`, `1:4`, `1:9` and its frequency as
`LOW`/`HIGH`; its status answer is `;`-separated with the fault code first, its
measurement answer space-separated; its fault codes are its own (17 = transducer
overheated). No code names it: the controller, the engine and the simulator read the
file below.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.modality.prescription import build_prescription
from controller.profiles.loader import ProfileError, load_profile_file
from controller.profiles.model import Profile
from controller.session.worker import Session
from protocols import scpi_codec as codec
from protocols.errors import ValueRejected
from protocols.map_scpi import ScpiMap
from tests.conftest import SimFactory
from tests.session_helpers import history, on_time

SX5 = """\
profile_format: 1
spec_version: "SX-5 remote interface 2.1"
id: sx-5
vendor: Sonic Example
model: SX-5
modality: ultrasound
link: {baudrate: 57600, reply_timeout_s: 0.15}
protocol:
  family: scpi_line
  use_checksum: false
  ok_reply: ACK
  error_prefix: NAK
  error_query: err
  error_codes: {-222: out of range, -224: illegal value}
  commands:
    idn:
      header: "*IDN"
      query: [{name: maker, type: text}, {name: model, type: text},
              {name: serial, type: text}, {name: firmware, type: text}]
    err:
      header: "SYSTem:ERRor"
      query: [{name: code, type: int}, {name: text, type: quoted}]
    reset: {header: "*RST", action: true}
    freq:
      header: "SOURce:FREQuency"
      refused_while_on: true
      set: [{name: band, type: token, tokens: {1: LOW, 3: HIGH}}]
      query: [{name: band, type: token, tokens: {1: LOW, 3: HIGH}}]
    duty:
      header: "SOURce:PULSe"
      refused_while_on: true
      set: [{name: ratio, type: token, tokens: {100: CW, 50: "1:1", 20: "1:4", 10: "1:9"}}]
      query: [{name: ratio, type: token, tokens: {100: CW, 50: "1:1", 20: "1:4", 10: "1:9"}}]
    level:
      header: "SOURce:INTensity"
      set: [{name: value, type: float, min: 0.0, max: 2.5, step: 0.1, decimals: 1}]
      query: [{name: value, type: float}]
    timer:
      header: "SOURce:TIMer"
      refused_while_on: true
      set: [{name: s, type: int, min: 1, max: 1800}]
      query: [{name: s, type: int}]
    out:
      header: "OUTPut"
      set: [{name: state, type: enum, allowed: ["ON", "OFF"]}]
      query: [{name: state, type: enum, allowed: ["ON", "OFF"]}]
    halt: {header: "ABORt", action: true}
    wdog:
      header: "SYSTem:WDOG"
      set: [{name: s, type: int, min: 0, max: 30}]
      query: [{name: s, type: int}]
    stat:
      header: "STATus"
      reply_separator: ";"
      query:
        - {name: fault, type: int}
        - {name: left, type: int}
        - {name: mode, type: enum, allowed: [STBY, ACT, PAUSE, END, ERR]}
        - {name: coupling, type: int}
        - {name: treated, type: int}
    meas:
      header: "MEASure"
      reply_separator: " "
      query: [{name: temp, type: float, unit: degC}, {name: watts, type: float, unit: W}]
    area:
      header: "APPLicator:ERA"
      query: [{name: cm2, type: float}]
operations:
  identify: [{read: [idn, stat, area], expect: {idn.model: SX-5}}]
  configure:
    - {write: freq, args: {band: $frequency_mhz}}
    - {write: duty, args: {ratio: $duty_pct}}
    - {write: level, args: {value: $intensity_w_cm2}}
  arm:
    - {write: wdog, args: {s: $watchdog_s}}
    - {write: timer, args: {s: $timer_s}}
  start: [{write: out, args: {state: "ON"}}]
  adjust: [{write: level, args: {value: $intensity_w_cm2}}]
  stop: [{write: out, args: {state: "OFF"}}]
  emergency_stop: [{write: halt}]
  clear_fault: [{write: reset}]
  read_telemetry: [{read: [stat, meas, level, area]}]
telemetry:
  output_on: {source: stat.mode, map: {STBY: false, ACT: true, PAUSE: true, END: false,
                                       ERR: false}}
  state: {source: stat.mode, map: {STBY: idle, ACT: running, PAUSE: holding, END: done,
                                   ERR: fault}}
  elapsed_s: stat.treated
  remaining_s: stat.left
  contact_pct: stat.coupling
  fault_code: stat.fault
  power_w: meas.watts
  applicator_temp_c: meas.temp
  intensity_w_cm2: level.value
  era_cm2: area.cm2
faults:
  fault_code:
    0: {label: none, class: none}
    17: {name: over_temperature, label: transducer overheated, class: interlock}
    18: {name: no_applicator, label: no transducer head, class: interlock}
    19: {name: watchdog_expired, label: host silent, class: link}
parameters:
  frequency_mhz: {type: number, unit: MHz, allowed: [1, 3], default: 1}
  intensity_w_cm2: {type: number, unit: W/cm2, step: 0.1}
  duty_pct: {type: number, unit: percent, allowed: [10, 20, 50, 100], default: 100}
limits:
  absolute:
    duration_s: {min: 1, max: 1795}
    intensity_w_cm2: {min: 0.1, max: 2.5}
  clinical: {intensity_w_cm2: {max: 2.0}}
  derived: {energy_j: {max: 10000.0}}
  interlocks: {applicator_temp_max_c: 41.0}
rules: {max_contact_hold_s: 60.0, contact_min_pct: 50.0}
safety: {watchdog_s: 2.0, poll_period_s: 0.2, retry_budget: 3, timer_margin_s: 5.0,
         stale_after_s: 1.0}
"""
SETTINGS = {"frequency_mhz": "3", "intensity_w_cm2": "1.0", "duty_pct": "20"}


def assert_stopped(device: object) -> None:
    changes = history(device)  # type: ignore[arg-type]
    assert changes and not changes[-1].on, "device output left on"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sx-5.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def sx5(tmp_path: Path) -> Profile:
    return load_profile_file(write(tmp_path, SX5)).profile


def scpi_map(profile: Profile) -> ScpiMap:
    assert isinstance(profile.protocol, ScpiMap)
    return profile.protocol


def test_tokens_are_written_and_read_both_ways(sx5: Profile) -> None:
    duty = scpi_map(sx5).commands["duty"]
    assert duty.set is not None and duty.query is not None
    assert codec.encode_args("duty", duty.set, {"ratio": 20}) == ["1:4"]
    assert codec.encode_args("duty", duty.set, {"ratio": 100.0}) == ["CW"]
    assert codec.FieldsParser(duty.query).parse("1:9") == [10]
    assert codec.FieldsParser(duty.query).parse("cw") == [100]   # keywords are case-blind
    with pytest.raises(ValueRejected, match="no token stands for it"):
        codec.encode_args("duty", duty.set, {"ratio": 30})


def test_other_separators_and_field_orders_parse(sx5: Profile) -> None:
    cmds = scpi_map(sx5).commands
    stat, meas = cmds["stat"], cmds["meas"]
    assert stat.query is not None and meas.query is not None
    assert codec.FieldsParser(stat.query, stat.reply_separator).parse("17;0;ERR;0;12") == \
        [17, 0, "ERR", 0, 12]
    assert codec.FieldsParser(meas.query, meas.reply_separator).parse("29.5  3.75") == \
        [29.5, 3.75]
    with pytest.raises(Exception, match="fields"):
        codec.FieldsParser(stat.query, stat.reply_separator).parse("17,0,ERR,0,12")


def test_an_unquoted_ratio_token_is_refused_with_how_to_write_it(tmp_path: Path) -> None:
    # YAML 1.1 reads an unquoted 1:4 as the sexagesimal number 64.
    text = SX5.replace('20: "1:4", 10: "1:9"}}]\n      query',
                       '20: 1:4, 10: "1:9"}}]\n      query')
    assert text != SX5
    with pytest.raises(ProfileError) as err:
        load_profile_file(write(tmp_path, text))
    message = "\n".join(err.value.problems)
    assert "quote every token" in message and "64" in message


def test_fault_code_text_cannot_feed_a_check(tmp_path: Path) -> None:
    # The fault code read from a text field would be no number: refused at validation.
    text = SX5.replace("        - {name: fault, type: int}",
                       "        - {name: fault, type: text}")
    with pytest.raises(ProfileError, match=r"telemetry\.fault_code: source 'stat\.fault' is text"):
        load_profile_file(write(tmp_path, text))


def test_a_session_runs_from_the_profile_alone(sim_device: SimFactory, sx5: Profile) -> None:
    device = sim_device(sx5)
    rx = build_prescription(sx5, SETTINGS, 1.0)
    report = Session(sx5, rx, device.port).run()
    assert report.outcome == "completed", report.reason
    seconds, cause = on_time(device)
    assert seconds == pytest.approx(1.0, abs=0.3) and cause == "stop"
    with device.model.lock:   # the words reached the device as the values they stand for
        assert device.model.settings["duty_pct"] == 20
        assert device.model.settings["frequency_mhz"] == 3
    assert_stopped(device)


def test_its_own_fault_code_is_reported_with_its_label_and_class(
        sim_device: SimFactory, sx5: Profile) -> None:
    device = sim_device(sx5, overtemp_at=0.5)
    rx = build_prescription(sx5, SETTINGS, 5.0)
    report = Session(sx5, rx, device.port).run()
    assert report.outcome == "fault" and report.stop_source == "interlock", report.reason
    assert "transducer overheated" in report.reason and "17" in report.reason
    assert_stopped(device)


def test_a_latched_fault_of_its_own_blocks_the_start(sim_device: SimFactory,
                                                     sx5: Profile) -> None:
    device = sim_device(sx5, no_applicator=True)
    rx = build_prescription(sx5, SETTINGS, 2.0)
    report = Session(sx5, rx, device.port).run()
    assert report.outcome == "rejected"
    assert "fault 18 (no transducer head)" in report.reason
    assert not any(c.on for c in device.model.history)
