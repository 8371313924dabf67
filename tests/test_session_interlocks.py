"""Interlocks and device-reported faults end a session with a stopped output.

One test per interlock: over-temperature, under-temperature, pad off, applicator
too hot, lead off, over-current, patient stop switch; plus the ultrasound
coupling hold and the verification of telemetry against what was commanded.
"""

from __future__ import annotations

import pytest

from tests.conftest import SimFactory
from tests.session_helpers import history, on_time, run


def assert_stopped(device: object) -> None:
    changes = history(device)  # type: ignore[arg-type]
    assert changes and not changes[-1].on, "device output left on"


@pytest.mark.parametrize(("pid", "settings", "fault", "words"), [
    ("hc-200", {"temperature_c": "44"}, {"overtemp_at": 0.5}, "45"),
    ("hc-200", {"temperature_c": "12"}, {"undertemp_at": 0.5}, "pad"),
    ("hc-200", {"temperature_c": "40"}, {"pad_off_at": 0.8}, "pad"),
    ("us-300", {"intensity_w_cm2": "1.0"}, {"overtemp_at": 0.5}, "applicator"),
])
def test_interlock_ends_session_as_fault(pid: str, settings: dict[str, str],
                                         fault: dict[str, float], words: str,
                                         sim_device: SimFactory) -> None:
    device = sim_device(pid, **fault)
    report = run(pid, device, 8.0, settings)
    assert report.outcome == "fault" and report.exit_status == 5, report.reason
    assert report.stop_source == "interlock"
    assert words in report.reason
    assert report.stop_confirmed is True
    assert report.delivered_s < 8.0
    assert_stopped(device)


def test_applicator_missing_is_rejected_before_output(sim_device: SimFactory) -> None:
    device = sim_device("us-300", no_applicator=True)
    report = run("us-300", device, 2.0)
    assert report.outcome == "rejected" and report.exit_status == 3
    assert not any(c.on for c in history(device))


def test_ultrasound_coupling_lost_for_1_s_still_delivers_the_treatment_time(
        sim_device: SimFactory) -> None:
    device = sim_device("us-300", contact_lost=(1.0, 2.0))
    report = run("us-300", device, 3.0)
    assert report.outcome == "completed", report.reason
    assert report.delivered_s == pytest.approx(3.0, abs=0.3)
    assert report.dose["treatment_s"] == pytest.approx(3.0, abs=0.3)
    assert report.dose["hold_s"] == pytest.approx(1.0, abs=0.3)
    seconds, cause = on_time(device)
    assert cause == "stop"
    assert seconds == pytest.approx(4.0, abs=0.3)   # the end moved by the hold
    states = [e.detail.get("state") for e in report.events if e.kind == "state"]
    assert "holding" in states


def test_telemetry_that_contradicts_the_command_is_a_fault(sim_device: SimFactory) -> None:
    device = sim_device("hc-200")
    model = device.model
    original = model.telemetry

    def lying(name: str, channel: int | None, now: float) -> object:
        value = original(name, channel, now)
        if name == "setpoint_c" and model.output_on:
            return float(value) + 1.0    # the device runs a setpoint we never sent
        return value

    model.telemetry = lying  # type: ignore[method-assign,assignment]
    report = run("hc-200", device, 5.0)
    assert report.outcome == "fault" and report.exit_status == 5
    assert report.stop_source == "controller"
    assert "setpoint" in report.reason
    assert_stopped(device)


@pytest.mark.parametrize(("fault", "outcome", "status", "source", "words"), [
    ({"lead_off_at": 1.0}, "fault", 5, "interlock", "lead off"),
    ({"overcurrent_at": 1.0}, "fault", 5, "interlock", "over-current"),
    ({"patient_stop_at": 1.0}, "aborted", 4, "patient", "patient stop"),
])
def test_tens_events_end_the_session(fault: dict[str, float], outcome: str, status: int,
                                     source: str, words: str, sim_device: SimFactory) -> None:
    device = sim_device("es-4", **fault)
    report = run("es-4", device, 6.0)
    assert report.outcome == outcome and report.exit_status == status, report.reason
    assert report.stop_source == source
    assert words in report.reason
    assert report.delivered_s == pytest.approx(1.0, abs=0.3)
    assert_stopped(device)


def test_tens_ramps_up_and_is_never_restored(sim_device: SimFactory) -> None:
    device = sim_device("es-4", lead_off_at=2.5)
    report = run("es-4", device, 6.0, {"frequency_hz": "100", "pulse_width_us": "200",
                                       "amplitude_ma": "20"})
    assert report.outcome == "fault"
    states = [e.detail.get("state") for e in report.events if e.kind == "state"]
    assert states.index("ramping") < states.index("delivering")
    # After the lead-off nothing starts the output again: one start in the device's history.
    assert sum(1 for c in history(device) if c.on) == 1


def test_a_latched_device_blocks_the_next_session_until_the_operator_clears_it(
        sim_device: SimFactory) -> None:
    device = sim_device("es-4", patient_stop_at=0.5)
    assert run("es-4", device, 3.0).outcome == "aborted"
    refused = run("es-4", device, 1.0)
    assert refused.outcome == "rejected" and refused.exit_status == 3
    assert "e-stop is latched" in refused.reason and "--clear-fault" in refused.reason
    assert sum(1 for c in history(device) if c.on) == 1
    cleared = run("es-4", device, 1.0, clear_fault=True)
    assert cleared.outcome == "completed", cleared.reason
    assert any(e.detail.get("op") == "clear_fault" for e in cleared.events)
