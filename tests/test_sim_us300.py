"""The simulated US-300 (and an invented SCPI ultrasound unit), driven by raw lines.

Timing behaviour runs on a fake clock: the model and endpoint are built
directly and fed lines with `receive(data, now)`. A few tests go over a real
pseudo-terminal with plain pyserial. Checksums are computed here, independently
of the controller's SCPI codec.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import reduce
from operator import xor
from pathlib import Path

import pytest
import serial

from controller.profiles.loader import load_profile_file, resolve_profile
from controller.profiles.model import Profile
from simulator.binding import Binding
from simulator.faults import FaultPlan
from simulator.scpi_device import ScpiEndpoint
from simulator.ultrasound_model import UltrasoundModel
from tests.conftest import SimFactory

US300 = resolve_profile("us-300").profile
# Generous bound for one reply over a pty (the device answers within 50 ms).
REPLY_TIMEOUT_S = 1.0


def xor_sum(text: str) -> str:
    return f"{reduce(xor, text.encode('ascii'), 0):02X}"


def with_checksum(body: str) -> str:
    return f"{body}*{xor_sum(body)}"


class Rig:
    """A US-300 (or other profile) on a fake clock, talked to line by line."""

    def __init__(self, profile: Profile = US300, /, **faults: object) -> None:
        self.now = 0.0
        self.model = UltrasoundModel(profile=profile, faults=FaultPlan(**faults),  # type: ignore[arg-type]
                                     clock=lambda: self.now)
        self.endpoint = ScpiEndpoint(profile, self.model, Binding.of(profile))

    def at(self, t: float) -> Rig:
        self.now = t
        self.endpoint.tick(t)
        return self

    def raw(self, data: bytes) -> list[bytes]:
        return self.endpoint.receive(data, self.now)

    def ask(self, line: str, checksum: bool = False) -> str:
        body = with_checksum(line) if checksum else line
        replies = self.raw(body.encode("ascii") + b"\n")
        assert len(replies) == 1, replies
        reply = replies[0]
        assert reply.endswith(b"\r\n") and b"\r" not in reply[:-2] and b"\n" not in reply[:-2]
        text = reply[:-2].decode("ascii")
        if checksum:
            text, _, given = text.rpartition("*")
            assert given == xor_sum(text), reply
        else:
            assert "*" not in text or text.startswith("*"), reply
        return text

    def status(self) -> list[str]:
        return self.ask("STATus?").split(",")

    def errors(self) -> list[str]:
        out = []
        while (entry := self.ask("SYSTem:ERRor?")) != '0,"No error"':
            out.append(entry)
        return out


def running_rig(intensity: str = "1.5", timer: int = 300, **faults: object) -> Rig:
    rig = Rig(**faults)
    assert rig.ask(f"SOUR:INT {intensity}") == "OK"
    assert rig.ask(f"SOUR:TIME {timer}") == "OK"
    assert rig.ask("OUTP ON") == "OK"
    return rig


# -- lines, forms, checksums --------------------------------------------------------------

def test_identity_and_forms() -> None:
    rig = Rig()
    assert rig.ask("*IDN?") == "Generic Therapy Devices,US-300,1001,1.00"
    assert rig.ask("*idn?") == rig.ask("*IDN?")
    for line in ("SOURce:INTensity 1.5", "SOUR:INT 1.5", "source:intensity 1.5",
                 "SOURce:INT 1.5", "sour:INTENSITY 1.5", ":SOUR:INT 1.5"):
        assert rig.ask(line) == "OK", line
    for line in ("SOURce:INTensity?", "SOUR:INT?", "Sour:Int?"):
        assert rig.ask(line) == "1.5"
    # Only the long or the short form of each keyword, as SCPI has it.
    assert rig.ask("SOURC:INT?") == 'ERR -113,"Undefined header"'
    assert rig.ask("SOUR:INTE?") == 'ERR -113,"Undefined header"'
    assert rig.ask("SYST:ERR?") == '-113,"Undefined header"'


def test_defaults_and_formats() -> None:
    rig = Rig()
    assert [rig.ask(q) for q in ("SOUR:FREQ?", "SOUR:INT?", "SOUR:DUTY?", "SOUR:TIME?",
                                 "SYST:WDOG?", "OUTP?", "MEAS:POW?", "MEAS:CONT?",
                                 "APPL:ERA?", "APPL:BNR?", "CAL:POW:GAIN?")] == [
        "1", "0.0", "100", "300", "0", "OFF", "0.00", "0", "5.0", "5.0", "1.000"]
    assert rig.ask("MEAS:TEMP?") == "25.0"
    assert rig.status() == ["IDLE", "0", "300", "0", "0"]
    date = rig.ask("CAL:DATE?")
    assert len(date) == 10 and date[4] == date[7] == "-"


def test_checksums_both_ways_and_bad_checksum_not_executed() -> None:
    rig = Rig()
    assert rig.ask("SOUR:INT 2.0", checksum=True) == "OK"
    assert rig.ask("SOUR:INT?", checksum=True) == "2.0"
    assert rig.ask("SOUR:INT?") == "2.0"  # no checksum asked, none given
    bad = f"SOUR:INT 1.0*{int(xor_sum('SOUR:INT 1.0'), 16) ^ 0x01:02X}\n"
    reply = rig.raw(bad.encode("ascii"))
    body = 'ERR -350,"Checksum error"'
    assert reply == [f"{body}*{xor_sum(body)}\r\n".encode("ascii")]
    assert rig.ask("SOUR:INT?") == "2.0"
    assert rig.errors() == ['-350,"Checksum error"']
    assert rig.ask("*IDN?", checksum=True).startswith("Generic Therapy Devices,US-300")


def test_line_framing() -> None:
    rig = Rig()
    # CR before LF ignored; several lines in one chunk; a line split over chunks.
    assert rig.raw(b"SOUR:INT 1.5\r\nSOUR:INT?\r\n*ID") == [b"OK\r\n", b"1.5\r\n"]
    assert rig.raw(b"N?\n") == [b"Generic Therapy Devices,US-300,1001,1.00\r\n"]
    longest = "SOUR:INT" + " " * (128 - len("SOUR:INT 0.5")) + " 0.5"
    assert len(longest) == 128
    assert rig.ask(longest) == "OK"
    assert rig.ask(longest + " ") == 'ERR -100,"Command error"'
    # A runaway line is answered once, when its terminator comes.
    assert rig.raw(b"X" * 500) == []
    assert rig.raw(b"Y" * 500 + b"\nSOUR:INT?\n") == [b'ERR -100,"Command error"\r\n',
                                                     b"0.5\r\n"]
    assert rig.ask("") == 'ERR -102,"Syntax error"'
    assert rig.raw(b"SOUR:INT 1\xff\n") == [b'ERR -102,"Syntax error"\r\n']


# -- error queue and codes -----------------------------------------------------------------

def test_error_queue_order_overflow_and_reset() -> None:
    rig = Rig()
    assert rig.ask("SYST:ERR?") == '0,"No error"'
    rig.ask("FOO")
    rig.ask("SOUR:INT 9")
    assert rig.ask("SYSTem:ERRor?") == '-113,"Undefined header"'
    assert rig.ask("SYST:ERR?") == '-222,"Data out of range"'
    assert rig.ask("SYST:ERR?") == '0,"No error"'
    for i in range(10):  # 10 errors: the first two are dropped
        rig.ask("FOO" if i < 5 else "OUTP MAYBE")
    assert rig.errors() == ['-113,"Undefined header"'] * 3 + \
        ['-224,"Illegal parameter value"'] * 5
    rig.ask("FOO")
    assert rig.ask("*RST") == "OK"
    assert rig.ask("SYST:ERR?") == '0,"No error"'


@pytest.mark.parametrize(("line", "code"), [
    ("BOGUS:CMD 1", -113),
    ("SOUR:INT abc", -102),
    ("SOUR:INT 1.5,2", -102),
    ("SOUR:INT", -102),
    ("SOUR:INT? 1", -102),
    ("*RST 1", -102),
    ("SOUR:INT 3.5", -222),
    ("SOUR:INT 1.55", -222),
    ("SOUR:FREQ 2", -222),
    ("SOUR:DUTY 30", -222),
    ("SOUR:TIME 0", -222),
    ("SOUR:TIME 2.5", -222),
    ("SYST:WDOG 61", -222),
    ("OUTP MAYBE", -224),
    ("SYST:SERV ON,1234", -224),
    ("SYST:SERV MAYBE", -224),
    ("MEAS:POW 3", -100),
    ("STAT", -100),
    ("*RST?", -400),
    ("ABOR?", -400),
    ("CAL:POW:GAIN 1.1", -221),
    ("CAL:DATE 2026-01-01", -221),
    ("OUTP ON", -221),  # intensity 0.0
])
def test_refusal_codes(line: str, code: int) -> None:
    rig = Rig()
    reply = rig.ask(line)
    assert reply.startswith(f"ERR {code},"), reply
    assert rig.errors() == [reply.removeprefix("ERR ")]
    assert not rig.model.history


def test_output_on_refusals() -> None:
    rig = Rig(no_applicator=True)
    rig.ask("SOUR:INT 1.0")
    assert rig.ask("OUTP ON") == 'ERR -241,"Hardware missing (no applicator)"'
    assert rig.status()[-1] == "2"
    assert rig.ask("APPL:ERA?") == "0.0"
    rig = Rig()
    rig.ask("SOUR:INT 1.0")
    assert rig.ask("SYST:SERV ON,4321") == "OK"
    assert rig.ask("OUTP ON") == 'ERR -221,"Settings conflict"'
    assert rig.ask("SYST:SERV OFF") == "OK"
    assert rig.ask("OUTP ON") == "OK"
    assert rig.ask("OUTP?") == "ON"
    assert rig.ask("OUTP ON") == "OK"  # already on: nothing changes
    assert [c.cause for c in rig.model.history] == ["start"]


def test_settings_refused_while_on_intensity_allowed() -> None:
    rig = running_rig("1.0")
    for line in ("SOUR:FREQ 3", "SOUR:DUTY 50", "SOUR:TIME 100"):
        assert rig.ask(line) == 'ERR -221,"Settings conflict"', line
    assert rig.ask("SYST:SERV ON,4321") == 'ERR -221,"Settings conflict"'
    assert rig.ask("MEAS:POW?") == "5.00"
    assert rig.ask("SOUR:INT 2.0") == "OK"
    assert rig.ask("MEAS:POW?") == "10.00"
    assert rig.ask("OUTP OFF") == "OK"
    assert rig.ask("SOUR:FREQ 3") == "OK"
    assert rig.ask("SOUR:FREQ?") == "3"
    assert [c.cause for c in rig.model.history] == ["start", "stop"]


# -- behaviour on the fake clock -----------------------------------------------------------

def test_power_formula_with_gain_and_miscalibration() -> None:
    rig = Rig(miscal_gain=0.9)
    rig.ask("SOUR:INT 1.5")
    rig.ask("SOUR:DUTY 50")
    rig.ask("OUTP ON")
    assert rig.ask("MEAS:POW?") == "3.75"  # 1.5 x 5.0 x 50/100 x 1.000
    rig.ask("OUTP OFF")
    assert rig.ask("MEAS:POW?") == "0.00"
    assert rig.ask("SYST:SERV ON,4321") == "OK"
    assert rig.ask("CAL:POW:GAIN 1.200") == "OK"
    assert rig.ask("CAL:POW:GAIN 1.21") == 'ERR -222,"Data out of range"'
    assert rig.ask("CAL:POW:GAIN?") == "1.200"
    assert rig.ask("SYST:SERV OFF") == "OK"
    rig.ask("OUTP ON")
    assert rig.ask("MEAS:POW?") == "4.50"
    assert rig.model.reading("cal_measured", None) == pytest.approx(4.5)
    assert rig.model.true_power_w() == pytest.approx(4.05)


def test_service_mode_and_calibration_writes() -> None:
    rig = Rig()
    assert rig.ask("SYST:SERV ON,1234") == 'ERR -224,"Illegal parameter value"'
    assert rig.ask("SYSTem:SERVice ON,4321", checksum=True) == "OK"
    assert rig.ask("CAL:DATE 2026-03-01") == "OK"
    assert rig.ask("CAL:DATE?") == "2026-03-01"
    assert rig.ask("CAL:DATE 2026-13-01") == 'ERR -224,"Illegal parameter value"'
    assert rig.ask("CAL:DATE 20260301") == 'ERR -102,"Syntax error"'
    assert rig.ask("CALibration:POWer:GAIN 0.95") == "OK"
    assert rig.ask("CAL:POW:GAIN 0.7") == 'ERR -222,"Data out of range"'
    assert rig.ask("SYST:SERV OFF") == "OK"
    assert rig.ask("CAL:POW:GAIN 1.0") == 'ERR -221,"Settings conflict"'
    # *RST restores "settings to defaults", and the spec's defaults include gain 1.000;
    # the calibration date is not a setting with a default and stays.
    assert rig.ask("*RST") == "OK"
    assert (rig.ask("CAL:POW:GAIN?"), rig.ask("CAL:DATE?")) == ("1.000", "2026-03-01")


def test_timer_runs_out_done() -> None:
    rig = running_rig(timer=10)
    assert rig.at(4.2).status() == ["RUN", "4", "6", "90", "0"]
    assert rig.ask("MEAS:CONT?") == "90"
    assert rig.at(12.0).status() == ["DONE", "10", "0", "0", "0"]
    assert rig.ask("OUTP?") == "OFF"
    stop = rig.model.last_stop()
    assert stop is not None and stop.cause == "timer" and stop.t == pytest.approx(10.0)
    assert rig.ask("SOUR:INT?") == "1.5"  # settings stay; the next start reloads the timer
    assert rig.ask("OUTP ON") == "OK"
    assert rig.at(13.0).status()[:3] == ["RUN", "1", "9"]


def test_contact_hold_stops_timer_and_resumes() -> None:
    rig = running_rig(timer=10, contact_lost=(2.0, 5.0))
    assert rig.at(3.0).status() == ["HOLD", "2", "8", "20", "0"]
    assert rig.ask("MEAS:POW?") == "0.00"
    assert rig.ask("OUTP?") == "ON"
    assert rig.at(4.5).status()[:3] == ["HOLD", "2", "8"]
    assert rig.at(6.0).status() == ["RUN", "3", "7", "90", "0"]
    assert rig.ask("MEAS:POW?") == "7.50"
    assert rig.at(20.0).status()[:3] == ["DONE", "10", "0"]
    stop = rig.model.last_stop()
    assert stop is not None and stop.cause == "timer" and stop.t == pytest.approx(13.0)
    assert rig.model.holds == [(2.0, 5.0)]  # output time 2..5 s, started at t=0
    assert [c.on for c in rig.model.history] == [True, False]  # a hold is no output change


def test_watchdog_expiry_is_fault_3() -> None:
    rig = Rig()
    rig.ask("SOUR:INT 1.0")
    assert rig.ask("SYST:WDOG 2") == "OK"
    assert rig.ask("OUTP ON") == "OK"
    assert rig.at(1.5).ask("STAT?").startswith("RUN")  # every valid line kicks it
    rig.at(3.0)
    reply = rig.raw(b"STAT?*00\n")  # a line with a bad checksum does not
    assert reply[0].startswith(b"ERR -350")
    assert rig.ask("BOGUS?").startswith("ERR -113")  # nor one the device cannot parse
    rig.at(3.4)
    assert rig.model.output_on is True
    assert rig.at(3.6).status() == ["FAULT", "3", "297", "0", "3"]
    stop = rig.model.last_stop()
    assert stop is not None and stop.cause == "watchdog" and stop.t == pytest.approx(3.5)
    assert rig.ask("OUTP ON") == 'ERR -200,"Execution error"'
    assert rig.ask("*RST") == "OK"
    assert rig.status() == ["IDLE", "0", "300", "0", "0"]
    assert (rig.ask("SOUR:INT?"), rig.ask("SYST:WDOG?")) == ("0.0", "0")


def test_applicator_overtemp_is_fault_1_cleared_by_reset_once_cool() -> None:
    rig = running_rig(intensity="2.0", overtemp_at=3.0)
    assert 25.0 < float(rig.at(2.9).ask("MEAS:TEMP?")) < 30.0
    assert rig.at(4.5).status()[::4] == ["FAULT", "1"]
    stop = rig.model.last_stop()
    assert stop is not None and stop.cause == "interlock" and 3.0 < stop.t < 4.5
    assert 40.5 < float(rig.ask("MEAS:TEMP?")) < 41.5
    assert rig.ask("ABOR") == "OK"  # never refused
    assert rig.ask("OUTP ON") == 'ERR -200,"Execution error"'
    assert rig.ask("*RST") == "OK"  # still hot: the fault stays latched
    assert rig.status()[::4] == ["FAULT", "1"]
    assert float(rig.at(60.0).ask("MEAS:TEMP?")) < 40.0
    assert rig.ask("*RST") == "OK"
    assert rig.status() == ["IDLE", "0", "300", "0", "0"]


def test_temperature_plateau_stays_well_under_trip() -> None:
    rig = running_rig(intensity="3.0", timer=1800)
    rig.at(30.0)
    assert float(rig.ask("MEAS:TEMP?")) < 33.0  # rises slowly
    rig.at(1799.0)
    assert 33.0 < float(rig.ask("MEAS:TEMP?")) < 38.0
    assert rig.status()[0] == "RUN"


def test_abort_never_refused_and_recorded() -> None:
    rig = running_rig()
    assert rig.at(1.0).ask("ABORt") == "OK"
    assert rig.ask("ABOR") == "OK"
    assert rig.ask("SYST:SERV ON,4321") == "OK"
    assert rig.ask("ABOR") == "OK"
    assert [(c.on, c.cause) for c in rig.model.history] == [(True, "start"),
                                                             (False, "emergency_stop")]


# -- over a real pseudo-terminal -------------------------------------------------------------

@contextmanager
def open_port(path: str) -> Iterator[serial.Serial]:
    port = serial.Serial(path, 115200, timeout=REPLY_TIMEOUT_S, write_timeout=REPLY_TIMEOUT_S)
    try:
        yield port
    finally:
        port.close()


def exchange(port: serial.Serial, line: str) -> str:
    port.write(line.encode("ascii") + b"\n")
    reply: bytes = port.read_until(b"\n")
    assert reply.endswith(b"\r\n"), reply
    return reply[:-2].decode("ascii")


def test_pty_identity_forms_checksums(sim_device: SimFactory) -> None:
    dev = sim_device("us-300")
    with open_port(dev.port) as port:
        assert exchange(port, "*IDN?") == "Generic Therapy Devices,US-300,1001,1.00"
        body = "Generic Therapy Devices,US-300,1001,1.00"
        assert exchange(port, with_checksum("*IDN?")) == f"{body}*{xor_sum(body)}"
        assert exchange(port, with_checksum("sour:int 1.5")) == f"OK*{xor_sum('OK')}"
        assert exchange(port, "SOURce:INT?") == "1.5"
        error = 'ERR -350,"Checksum error"'
        assert exchange(port, "SOUR:INT 2.0*00") == f"{error}*{xor_sum(error)}"
        assert exchange(port, "SOURce:INTensity?") == "1.5"
        assert exchange(port, "SYST:ERR?") == '-350,"Checksum error"'


def test_pty_watchdog_stops_output(sim_device: SimFactory) -> None:
    dev = sim_device("us-300")
    with open_port(dev.port) as port:
        for line in ("SOUR:INT 1.0", "SYST:WDOG 1", "OUTP ON"):
            assert exchange(port, line) == "OK"
        deadline = time.monotonic() + 3.0
        while dev.model.output_on and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exchange(port, "STAT?").split(",")[::4] == ["FAULT", "3"]
    stop = dev.model.last_stop()
    assert stop is not None and stop.cause == "watchdog"
    assert stop.t - dev.model.history[0].t == pytest.approx(1.0, abs=0.05)


# -- a device invented for this test: the endpoint is generic over the map -------------------

INVENTED = """
profile_format: 1
spec_version: "UX-9 test sheet"
id: ux-9
vendor: Acme Sonics
model: UX-9
modality: ultrasound
link: {baudrate: 9600, reply_timeout_s: 0.2}
protocol:
  family: scpi_line
  max_line_length: 64
  use_checksum: false
  ok_reply: DONE
  error_prefix: FAIL
  error_query: err
  error_codes:
    -102: bad syntax
    -113: no such command
    -221: conflicts with current settings
    -222: value out of range
    -224: illegal value
  commands:
    idn: {header: "*IDN", query: [{name: vendor, type: text}, {name: model, type: text},
          {name: serial, type: text}, {name: firmware, type: text}]}
    err: {header: "SYSTem:ERRor:NEXT", query: [{name: code, type: int},
          {name: text, type: quoted}]}
    reset: {header: "*RST", action: true}
    freq: {header: "SOURce:FREQuency", refused_while_on: true,
           set: [{name: mhz, type: int, allowed: [1, 3]}], query: [{name: mhz, type: int}]}
    level:
      header: "SOURce:POWer:DENSity"
      set: [{name: value, type: float, min: 0.0, max: 2.0, step: 0.5}]
      query: [{name: value, type: float}]
    duty: {header: "PULSe:DCYCle", refused_while_on: true,
           set: [{name: pct, type: int, allowed: [20, 100]}], query: [{name: pct, type: int}]}
    timer: {header: "SOURce:TIMer", refused_while_on: true,
            set: [{name: s, type: int, min: 10, max: 600}], query: [{name: s, type: int}]}
    out: {header: "OUTPut:STATe", set: [{name: state, type: enum, allowed: ["1", "0"]}],
          query: [{name: state, type: enum, allowed: ["1", "0"]}]}
    halt: {header: "ABORt", action: true}
    wdog: {header: "SYSTem:COMMunicate:WDOG", set: [{name: s, type: int, min: 0, max: 10}],
           query: [{name: s, type: int}]}
    stat:
      header: "STATus:OPERation"
      query:
        - {name: code, type: int}
        - {name: fault, type: int}
        - {name: treated, type: int}
        - {name: left, type: int}
        - {name: coupling, type: int}
    power: {header: "MEASure:POWer", query: [{name: watts, type: float, unit: W}]}
    temp: {header: "MEASure:TEMPerature", query: [{name: c, type: float, unit: degC}]}
    area: {header: "APPLicator:AREA", query: [{name: cm2, type: float, unit: cm2}]}
    brightness: {header: "DISPlay:BRIGhtness", set: [{name: level, type: int, min: 0, max: 9}],
                 query: [{name: level, type: int}]}
operations:
  identify: [{read: [idn, stat], expect: {idn.model: UX-9}}]
  configure:
    - {write: freq, args: {mhz: $frequency_mhz}}
    - {write: duty, args: {pct: $duty_pct}}
    - {write: level, args: {value: $intensity_w_cm2}}
  arm:
    - {write: wdog, args: {s: $watchdog_s}}
    - {write: timer, args: {s: $timer_s}}
  start: [{write: out, args: {state: "1"}}]
  stop: [{write: out, args: {state: "0"}}]
  emergency_stop: [{write: halt}]
  clear_fault: [{write: reset}]
  read_telemetry: [{read: [stat, power, temp, level, area]}]
telemetry:
  output_on: {source: stat.code, map: {"0": false, "1": true, "2": true, "3": false, "4": false}}
  state: {source: stat.code, map: {"0": idle, "1": running, "2": holding, "3": done, "4": fault}}
  elapsed_s: stat.treated
  remaining_s: stat.left
  contact_pct: stat.coupling
  fault_code: stat.fault
  power_w: power.watts
  applicator_temp_c: temp.c
  intensity_w_cm2: level.value
  era_cm2: area.cm2
faults:
  fault_code: {0: {label: none, class: none}, 7: {label: head too hot, class: interlock}}
parameters:
  frequency_mhz: {type: number, allowed: [1, 3], default: 1}
  intensity_w_cm2: {type: number, step: 0.5}
  duty_pct: {type: number, allowed: [20, 100], default: 100}
limits:
  absolute:
    duration_s: {min: 10, max: 590}
    intensity_w_cm2: {min: 0.5, max: 2.0}
  interlocks: {applicator_temp_max_c: 41.0}
rules: {contact_min_pct: 95.0, max_contact_hold_s: 30.0}
safety: {watchdog_s: 2.0, poll_period_s: 0.5, retry_budget: 2, timer_margin_s: 10.0,
         stale_after_s: 1.0}
"""


@pytest.fixture
def invented(tmp_path: Path) -> Profile:
    path = tmp_path / "ux-9.yaml"
    path.write_text(INVENTED)
    return load_profile_file(path).profile


def test_invented_device_over_pty(sim_device: SimFactory, invented: Profile) -> None:
    dev = sim_device(invented)
    with open_port(dev.port) as port:
        def ask(line: str) -> str:
            return exchange(port, line)

        assert ask("*IDN?") == "Acme Sonics,UX-9,1001,1.00"
        # An entry no operation uses keeps what was written to it.
        assert ask("DISP:BRIG?") == "0"
        assert ask("DISPlay:BRIG 7") == "DONE"
        assert ask("DISP:BRIGHTNESS?") == "7"
        assert ask("OUTP:STAT 1") == 'FAIL -221,"Conflicts with current settings"'
        assert ask("SOUR:POW:DENS 0.7") == 'FAIL -222,"Value out of range"'
        assert ask("SOUR:POW:DENS 2.5") == 'FAIL -222,"Value out of range"'
        assert ask("SOURce:POWer:DENSity 1.5") == "DONE"
        assert ask("SOUR:INT 1.5") == 'FAIL -113,"No such command"'
        assert ask("SYST:ERR?") == 'FAIL -113,"No such command"'
        assert ask("SYST:ERR:NEXT?") == '-221,"Conflicts with current settings"'
        assert ask("syst:error:next?") == '-222,"Value out of range"'
        assert ask("SYST:COMM:WDOG 11") == 'FAIL -222,"Value out of range"'
        assert ask("SOUR:TIM 5") == 'FAIL -222,"Value out of range"'
        assert ask("SOUR:TIM 20") == "DONE"
        assert ask("OUTP:STAT ON") == 'FAIL -224,"Illegal value"'
        assert ask("OUTP:STAT 1") == "DONE"
        assert ask("OUTPut:STATe?") == "1"
        assert ask("PULS:DCYC 20") == 'FAIL -221,"Conflicts with current settings"'
        # Coupling 90 % is below this unit's 95 % minimum: it holds at once.
        assert ask("STAT:OPER?") == "2,0,0,20,90"
        assert ask("MEAS:POW?") == "0.00"
        assert ask("APPL:AREA?") == "5.0"
        assert ask("ABOR") == "DONE"
        assert ask("OUTP:STAT?") == "0"
        assert ask("STAT:OPER?").split(",")[:2] == ["0", "0"]
        line = "SOUR:POW:DENS" + " " * 48 + "1.0"
        assert len(line) == 64 and ask(line) == "DONE"
        assert ask(line + "0").startswith("FAIL -100,")
    assert [(c.on, c.cause) for c in dev.model.history] == [(True, "start"),
                                                            (False, "emergency_stop")]


def test_invented_device_timer_on_fake_clock(invented: Profile) -> None:
    rig = Rig(invented)
    assert rig.ask("OUTP:STAT 1") == 'FAIL -221,"Conflicts with current settings"'
    for line in ("SOUR:POW:DENS 1.0", "SOUR:TIM 10", "OUTP:STAT 1"):
        assert rig.ask(line) == "DONE"
    # 90 % coupling is below this unit's 95 % minimum: held from the start, no time counts.
    assert rig.at(25.0).ask("STAT:OPER?") == "2,0,0,10,90"
    assert rig.ask("*RST") == "DONE"
    assert rig.model.holds == [(0.0, 25.0)]
    assert rig.ask("SOUR:POW:DENS?") == "0.0"
