"""TENS: charge per phase, r.m.s. current density, ramp, stimulation time, no-restore."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.modality.prescription import build_prescription
from controller.modality.rules import modality_for
from controller.modality.tens import (
    NoRestore,
    RestoreRefused,
    TensDoseMeter,
    charge_per_phase_uc,
    current_density_rms_ma_cm2,
    ramp_problem,
    ramp_up_s,
    rms_current_ma,
)
from controller.profiles.loader import resolve_profile

ES = resolve_profile("es-4").profile
amps = st.floats(min_value=0.1, max_value=80.0)
widths = st.integers(min_value=20, max_value=500)
freqs = st.integers(min_value=1, max_value=250)


# -- reference value of docs/design.md §3.4 ------------------------------------------
def test_charge_per_phase_reference_value() -> None:
    assert charge_per_phase_uc(25.0, 200.0) == pytest.approx(5.0)


def test_rms_current_and_density_of_a_symmetric_biphasic_train() -> None:
    # 2 × 200 µs × 100 Hz = 4 % of the time at 25 mA: I_rms = 25 × 0.2 = 5 mA.
    assert rms_current_ma(25.0, 200.0, 100.0) == pytest.approx(5.0)
    assert current_density_rms_ma_cm2(25.0, 200.0, 100.0, 25.0) == pytest.approx(0.2)
    assert current_density_rms_ma_cm2(80.0, 400.0, 150.0, 4.0) == \
        pytest.approx(80 * math.sqrt(0.12) / 4)


def test_impossible_trains_and_areas_are_refused() -> None:
    with pytest.raises(ValueError, match="do not fit in one period"):
        rms_current_ma(10.0, 500.0, 1001.0)
    with pytest.raises(ValueError, match="must be positive"):
        current_density_rms_ma_cm2(10.0, 200.0, 100.0, 0.0)


@given(amps, widths, st.floats(min_value=0.1, max_value=10.0))
def test_charge_is_linear_in_amplitude(a: float, w: int, k: float) -> None:
    assert charge_per_phase_uc(k * a, w) == pytest.approx(k * charge_per_phase_uc(a, w))
    assert charge_per_phase_uc(a, k * w) == pytest.approx(k * charge_per_phase_uc(a, w))


@given(amps, widths, freqs)
def test_rms_is_below_the_peak_and_grows_as_the_root_of_frequency(a: float, w: int,
                                                                   f: int) -> None:
    rms = rms_current_ma(a, w, f)
    assert 0 < rms <= a
    if 4 * w * f <= 1e6:
        assert rms_current_ma(a, w, 2 * f) == pytest.approx(math.sqrt(2) * rms)


# -- ramp ----------------------------------------------------------------------------
@pytest.mark.parametrize(("amp", "rate", "cap", "seconds"), [
    (25.0, 10.0, 30, 3), (20.0, 10.0, 30, 2), (0.3, 0.1, None, 3), (0.1, 10.0, 30, 1),
    (80.0, 10.0, 30, 8), (80.0, 1.0, 30, 30), (0.0, 10.0, 30, 0)])
def test_ramp_up_is_the_ceiling_of_amplitude_over_rate_capped(
        amp: float, rate: float, cap: float | None, seconds: int) -> None:
    assert ramp_up_s(amp, rate, cap) == seconds


def test_a_capped_ramp_that_would_be_too_fast_is_reported() -> None:
    assert ramp_problem(80.0, ramp_up_s(80.0, 1.0, 30), 1.0) == (
        "amplitude_ma=80 needs at least 80 s of ramp at 1 mA/s; a ramp of 30 s (2.67 mA/s) "
        "would be faster")
    assert ramp_problem(25.0, 0, 10.0) is not None
    assert ramp_problem(25.0, 2.5, 10.0) is None
    assert ramp_problem(0.0, 0, 10.0) is None
    with pytest.raises(ValueError):
        ramp_up_s(10.0, 0.0)


@given(amps, st.floats(min_value=0.5, max_value=20.0))
def test_an_uncapped_ramp_never_exceeds_the_rate(amp: float, rate: float) -> None:
    seconds = ramp_up_s(amp, rate)
    assert seconds >= 1 and ramp_problem(amp, seconds, rate) is None
    assert seconds - 1 < amp / rate + 1e-6


def test_the_profile_rate_sets_the_session_ramp() -> None:
    p = build_prescription(ES, {"amplitude_ma": "25"}, 600)
    assert p.session_values["ramp_up_s"] == 3.0
    assert modality_for(ES).session_values(p.values, {"max_ramp_s": 2}) == \
        {"channel_mask": 1.0, "ramp_up_s": 2.0}


# -- no restore ----------------------------------------------------------------------
def test_after_an_interruption_the_output_is_never_restored() -> None:
    guard = NoRestore()
    guard.start("rx-1")
    assert guard.state == "delivering"
    guard.interrupt("lead off")
    assert guard.state == "interrupted"
    with pytest.raises(RestoreRefused, match="never restored after lead off"):
        guard.resume()
    with pytest.raises(RestoreRefused, match="already started once"):
        guard.start("rx-1")
    guard.start("rx-2")                            # a fresh operator prescription
    assert guard.state == "delivering" and guard.reason is None


def test_resume_is_refused_in_every_state() -> None:
    guard = NoRestore()
    with pytest.raises(RestoreRefused):
        guard.resume()
    guard.start("a")
    with pytest.raises(RestoreRefused):
        guard.start("b")                          # already delivering
    with pytest.raises(RestoreRefused):
        guard.resume()
    guard.finish()
    assert guard.state == "finished"
    with pytest.raises(RestoreRefused):
        guard.resume()


def test_prescriptions_are_fresh_operator_actions() -> None:
    guard = NoRestore()
    first = build_prescription(ES, {"amplitude_ma": "20"}, 60)
    guard.start(first.request_id)
    guard.interrupt("e-stop")
    with pytest.raises(RestoreRefused):
        guard.start(first.request_id)
    guard.start(build_prescription(ES, {"amplitude_ma": "20"}, 60).request_id)


# -- the dose meter ------------------------------------------------------------------
def make_meter() -> TensDoseMeter:
    return TensDoseMeter(pulse_width_us=200, frequency_hz=100, electrode_area_cm2=25,
                         impedance_max_ohm=10000, density_max_ma_cm2=2.0)


def test_stimulation_time_counts_channel_states_that_carry_current() -> None:
    m = make_meter()
    states = ["idle", "ramping_up", "ramping_up", "running", "running", "running",
              "ramping_down", "idle", "idle"]
    for t, s in enumerate(states):
        m.add_sample(float(t), {"channel_state": s, "amplitude_ma": 25.0 if s == "running"
                                else 10.0})
    fig = m.figures()
    assert fig["stimulation_s"] == pytest.approx(6.0)
    assert fig["max_amplitude_ma"] == 25.0
    assert fig["max_charge_per_phase_uc"] == pytest.approx(5.0)
    assert fig["max_current_density_rms_ma_cm2"] == pytest.approx(0.2)


def test_lead_off_stops_stimulation_time_and_is_an_interlock() -> None:
    m = make_meter()
    m.add_sample(0.0, {"channel_state": "running", "amplitude_ma": 25.0})
    m.add_sample(1.0, {"channel_state": "running", "amplitude_ma": 25.0})
    lead_off = {"channel_state": "lead_off", "amplitude_ma": 0.0, "impedance_ohm": 12000}
    m.add_sample(2.0, lead_off)
    m.add_sample(10.0, lead_off)
    assert m.figures()["stimulation_s"] == pytest.approx(1.5)
    assert m.check(lead_off) == "lead off: the device stopped the channel (impedance 12000 ohm)"


def test_impedance_and_measured_density_interlocks() -> None:
    m = make_meter()
    running = {"channel_state": "running", "amplitude_ma": 25.0, "impedance_ohm": 900}
    assert m.check(running) is None
    assert m.check({**running, "impedance_ohm": 10500}) == \
        "electrode impedance 10500 ohm passed the limit 10000 ohm"
    assert m.check({**running, "amplitude_ma": 300.0}) is not None   # 2.4 mA/cm2
    assert m.check({"channel_state": "idle", "impedance_ohm": 65535}) is None


def test_the_profile_meter_uses_the_prescription_and_limits() -> None:
    p = build_prescription(ES, {"amplitude_ma": "25", "electrode_area_cm2": "16"}, 600)
    m = modality_for(ES).dose_meter(p)
    assert isinstance(m, TensDoseMeter)
    assert (m.pulse_width_us, m.frequency_hz, m.electrode_area_cm2) == (200, 100, 16)
    assert (m.impedance_max_ohm, m.density_max_ma_cm2) == (10000, 2.0)
