"""Operator requests become validated prescriptions, or are refused with every problem."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.modality.prescription import (
    DurationError,
    Prescription,
    PrescriptionRejected,
    SettingsError,
    apply_device_facts,
    build_prescription,
    parse_duration,
    parse_settings,
)
from controller.profiles.loader import resolve_profile
from controller.profiles.model import Profile

HC = resolve_profile("hc-200").profile
US = resolve_profile("us-300").profile
ES = resolve_profile("es-4").profile


def rejected(profile: Profile, settings: dict[str, str], duration_s: float = 300,
             **kw: Any) -> list[str]:
    with pytest.raises(PrescriptionRejected) as exc:
        build_prescription(profile, settings, duration_s, **kw)
    assert exc.value.profile_id == profile.id
    return exc.value.messages()


def with_changes(profile: Profile, **changes: Any) -> Profile:
    return Profile.model_validate({**profile.model_dump(), **changes})


# -- durations ---------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("2.5", 2.5), ("90s", 90.0), ("5m", 300.0), ("1m30s", 90.0),
    ("1h", 3600.0), ("1h30m", 5400.0), ("1h0m5s", 3605.0), ("1.5m", 90.0), ("5M", 300.0),
])
def test_parse_duration_accepts_the_documented_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-5", "-5m", "0", "0s", "0m0s", "", "  ", "abc", "90ms",
                                  "1m30", "5 m", "1s1m", "inf", "nan", "1e3", "m", "s",
                                  " 5m", "5m ", "٤٠", "４０s"])
def test_parse_duration_refuses_garbage_zero_and_negatives(text: str) -> None:
    with pytest.raises(DurationError) as exc:
        parse_duration(text)
    assert f"duration '{text}'" in str(exc.value)


def test_parse_duration_messages_say_what_is_wrong() -> None:
    with pytest.raises(DurationError, match="must be more than zero"):
        parse_duration("0")
    with pytest.raises(DurationError, match="must be more than zero"):
        parse_duration("-3")
    with pytest.raises(DurationError, match=r"not understood: give seconds \(90, 2.5\)"):
        parse_duration("ten minutes")


# -- settings ----------------------------------------------------------------------
def test_parse_settings_reads_name_value_pairs() -> None:
    assert parse_settings(["a=1", " b =x", "c=p=q"]) == {"a": "1", "b": "x", "c": "p=q"}
    assert parse_settings([]) == {}


def test_parse_settings_refuses_spaces_around_a_value() -> None:
    # Issue 10 §7: " 40" was trimmed to 40; a typed value is taken exactly as given.
    with pytest.raises(SettingsError) as exc:
        parse_settings(["a= 40", "b=40 "])
    assert exc.value.problems == ["'a= 40': the value after '=' has spaces around it",
                                  "'b=40 ': the value after '=' has spaces around it"]


def test_parse_settings_collects_every_bad_pair() -> None:
    with pytest.raises(SettingsError) as exc:
        parse_settings(["noequals", "=5", "a=1", "a=2", "b="])
    problems = exc.value.problems
    assert len(problems) == 4
    assert "'noequals': expected NAME=VALUE" in problems[0]
    assert "name before '=' is empty" in problems[1]
    assert "'a' is set twice (a=1 and a=2)" in problems[2]
    assert "value after '=' is empty" in problems[3]


# -- values, defaults, device codes ------------------------------------------------
def test_defaults_are_filled_and_recorded() -> None:
    p = build_prescription(HC, {}, 600)
    assert p.values == {"temperature_c": 40.0}
    assert p.defaults == ("temperature_c",)
    t = build_prescription(ES, {"amplitude_ma": "25"}, 600)
    assert t.values == {"frequency_hz": 100, "pulse_width_us": 200, "amplitude_ma": 25.0,
                        "channel": 0, "waveform": "symmetric", "mode": "continuous",
                        "electrode_area_cm2": 25.0}
    assert isinstance(t.values["frequency_hz"], int) and isinstance(t.values["channel"], int)
    assert "amplitude_ma" not in t.defaults and "electrode_area_cm2" in t.defaults


def test_choices_are_mapped_to_device_codes() -> None:
    t = build_prescription(ES, {"amplitude_ma": "20", "waveform": "asymmetric",
                                "mode": "modulated", "channel": "1"}, 600)
    assert t.values["waveform"] == "asymmetric" and t.values["mode"] == "modulated"
    assert t.device_values["waveform"] == 1 and t.device_values["mode"] == 2
    assert t.device_values["channel"] == 1 and t.device_values["amplitude_ma"] == 20.0


def test_values_are_engineering_units_never_rounded() -> None:
    p = build_prescription(US, {"intensity_w_cm2": "1.5", "duty_pct": "20",
                                "frequency_mhz": "3"}, 300)
    assert p.values == {"intensity_w_cm2": 1.5, "duty_pct": 20.0, "frequency_mhz": 3.0}
    assert p.duration_s == 300 and p.profile_id == "us-300" and p.modality == "ultrasound"


def test_a_prescription_is_frozen_and_each_build_is_a_new_operator_action() -> None:
    a = build_prescription(HC, {}, 60)
    b = build_prescription(HC, {}, 60)
    assert a.request_id != b.request_id
    with pytest.raises(AttributeError):
        a.duration_s = 5  # type: ignore[misc]


def test_record_is_json_ready_and_keeps_the_limits() -> None:
    p = build_prescription(HC, {"temperature_c": "20"}, 600)
    rec = json.loads(json.dumps(p.record()))
    assert rec["profile"] == "hc-200" and rec["regimes"] == ["cold"]
    assert rec["limits"]["duration_s"] == {"min": 1.0, "min_source": "absolute",
                                           "max": 1200.0, "max_source": "clinical (cold)"}
    assert rec["limits"]["temperature_c"]["min_source"] == "clinical (cold)"


# -- each rejection class ----------------------------------------------------------
def test_above_the_clinical_limit_names_parameter_value_and_both_tiers() -> None:
    assert rejected(US, {"intensity_w_cm2": "2.5"}) == [
        "intensity_w_cm2=2.5 is above the clinical limit 2 W/cm2 (absolute 3)"]


def test_above_the_absolute_limit() -> None:
    msgs = rejected(US, {"intensity_w_cm2": "3.5"})
    assert msgs == ["intensity_w_cm2=3.5 is above the clinical limit 2 W/cm2 (absolute 3)"]
    assert rejected(ES, {"amplitude_ma": "0.05"}) == [
        "amplitude_ma=0.05 is not on the 0.1 mA step from 0.1 (values are never rounded)",
        "amplitude_ma=0.05 is below the absolute limit 0.1 mA"]


def test_unknown_names_list_the_known_ones() -> None:
    assert rejected(HC, {"temp": "40"}) == [
        "unknown parameter 'temp' for hc-200 (known: temperature_c)"]


def test_session_variables_are_not_operator_parameters() -> None:
    assert "unknown parameter 'timer_s'" in rejected(HC, {"timer_s": "9"})[0]


@pytest.mark.parametrize(("profile", "settings", "message"), [
    (US, {"intensity_w_cm2": "abc"}, "intensity_w_cm2=abc is not a number"),
    (US, {"intensity_w_cm2": "1,5"}, "intensity_w_cm2=1,5 is not a number"),
    (US, {"intensity_w_cm2": "nan"}, "intensity_w_cm2=nan is not a number"),
    (US, {"intensity_w_cm2": "1e999"},
     "intensity_w_cm2=1e999 is not a number (write it out in plain decimal, without an "
     "exponent)"),
    (ES, {"amplitude_ma": "10", "frequency_hz": "99.5"},
     "frequency_hz=99.5 is not a whole number (an integer parameter)"),
    (ES, {"amplitude_ma": "10", "frequency_hz": "100.0"},
     "frequency_hz=100.0 is not a whole number (an integer parameter)"),
    (ES, {"amplitude_ma": "10", "pulse_width_us": "wide"}, "pulse_width_us=wide is not an integer"),
])
def test_wrong_types_are_refused(profile: Profile, settings: dict[str, str], message: str) -> None:
    assert rejected(profile, settings) == [message]


@pytest.mark.parametrize(("profile", "settings", "message"), [
    (US, {"intensity_w_cm2": "1", "duty_pct": "30"},
     "duty_pct=30 is not one of the allowed values 10, 20, 50, 100 percent"),
    (US, {"intensity_w_cm2": "1", "frequency_mhz": "2"},
     "frequency_mhz=2 is not one of the allowed values 1, 3 MHz"),
    (ES, {"amplitude_ma": "10", "channel": "2"}, "channel=2 is not one of the allowed values 0, 1"),
])
def test_values_outside_the_allowed_set(profile: Profile, settings: dict[str, str],
                                        message: str) -> None:
    assert rejected(profile, settings) == [message]


@pytest.mark.parametrize(("profile", "settings", "message"), [
    (US, {"intensity_w_cm2": "1.55"},
     "intensity_w_cm2=1.55 is not on the 0.1 W/cm2 step from 0.1 (values are never rounded)"),
    (HC, {"temperature_c": "40.05"},
     "temperature_c=40.05 is not on the 0.1 degC step from 5 (values are never rounded)"),
    (ES, {"amplitude_ma": "25.01"},
     "amplitude_ma=25.01 is not on the 0.1 mA step from 0.1 (values are never rounded)"),
])
def test_values_off_the_step_grid_are_refused_not_rounded(
        profile: Profile, settings: dict[str, str], message: str) -> None:
    assert rejected(profile, settings) == [message]


def test_a_choice_not_among_the_choices() -> None:
    assert rejected(ES, {"amplitude_ma": "10", "waveform": "square"}) == [
        "waveform=square is not one of the choices: symmetric, asymmetric"]
    # Device codes are not accepted in place of names.
    assert rejected(ES, {"amplitude_ma": "10", "mode": "1"}) == [
        "mode=1 is not one of the choices: continuous, burst, modulated"]


def test_a_missing_parameter_without_default() -> None:
    assert rejected(US, {}) == [
        "intensity_w_cm2 is required: it has no default (give intensity_w_cm2=VALUE)"]
    assert rejected(ES, {}) == [
        "amplitude_ma is required: it has no default (give amplitude_ma=VALUE)"]


@pytest.mark.parametrize(("profile", "settings", "duration", "message"), [
    (HC, {}, 1801, "duration_s=1801 is above the clinical limit 1800 s (absolute 3595)"),
    (US, {"intensity_w_cm2": "1"}, 1796, "duration_s=1796 is above the clinical limit 1795 s "
     "(absolute 1795)"),
    (HC, {}, 0.5, "duration_s=0.5 is below the absolute limit 1 s"),
    (HC, {}, 0, "duration_s=0 must be a positive duration"),
    (HC, {}, float("nan"), "duration_s=nan must be a positive duration"),
])
def test_durations_outside_the_effective_limit(profile: Profile, settings: dict[str, str],
                                               duration: float, message: str) -> None:
    assert rejected(profile, settings, duration) == [message]


def test_a_default_outside_a_regime_limit_is_refused_as_a_default() -> None:
    site = with_changes(HC, limits={**HC.model_dump()["limits"],
                                    "clinical": {"duration_s": {"max": 1800},
                                                 "temperature_c": {"max": 39.0}}},
                        parameters={"temperature_c": {"type": "number", "unit": "degC",
                                                      "step": 0.1, "default": 38.0}})
    assert build_prescription(site, {}, 60).values == {"temperature_c": 38.0}
    assert rejected(site, {"temperature_c": "40"}) == [
        "temperature_c=40 is above the clinical limit 39 degC (absolute 45)"]


def test_all_problems_are_collected_not_just_the_first() -> None:
    msgs = rejected(ES, {"amplitude_ma": "95.05", "frequency_hz": "300", "pulse_width_us": "x",
                         "waveform": "square", "colour": "red"}, 4000)
    assert msgs == [
        "unknown parameter 'colour' for es-4 (known: amplitude_ma, channel, electrode_area_cm2, "
        "frequency_hz, mode, pulse_width_us, waveform)",
        "pulse_width_us=x is not an integer",
        "waveform=square is not one of the choices: symmetric, asymmetric",
        "frequency_hz=300 is above the clinical limit 150 Hz (absolute 250)",
        "amplitude_ma=95.05 is not on the 0.1 mA step from 0.1 (values are never rounded)",
        "amplitude_ma=95.05 is above the clinical limit 80 mA (absolute 80)",
        "duration_s=4000 is above the clinical limit 1800 s (absolute 3595)",
    ]
    with pytest.raises(PrescriptionRejected) as exc:
        build_prescription(ES, {"amplitude_ma": "95.05", "colour": "red"}, 60)
    assert [(p.name, p.value) for p in exc.value.problems] == [
        ("colour", "red"), ("amplitude_ma", "95.05"), ("amplitude_ma", "95.05")]


# -- provenance ----------------------------------------------------------------------
def test_each_limit_records_the_tier_that_set_it() -> None:
    p = build_prescription(US, {"intensity_w_cm2": "2"}, 300)
    lim = p.limits["intensity_w_cm2"]
    assert lim.high is not None and (lim.high.value, lim.high.source) == (2.0, "clinical")
    assert lim.low is not None and (lim.low.value, lim.low.source) == (0.1, "absolute")
    assert p.limits["duty_pct"].allowed == (10, 20, 50, 100)
    assert set(p.limits) == {"frequency_mhz", "intensity_w_cm2", "duty_pct", "duration_s"}
    # A clinical limit equal to the device's is named as the clinical one.
    dur = p.limits["duration_s"].high
    assert dur is not None and (dur.value, dur.source) == (1795.0, "clinical")


# -- regimes -------------------------------------------------------------------------
def test_hc200_below_skin_temperature_is_the_cold_regime_with_its_limits() -> None:
    cold = build_prescription(HC, {"temperature_c": "10"}, 1200)
    assert cold.regimes == ("cold",)
    low, high = cold.limits["temperature_c"].low, cold.limits["duration_s"].high
    assert low is not None and (low.value, low.source) == (10.0, "clinical (cold)")
    assert high is not None and (high.value, high.source) == (1200.0, "clinical (cold)")
    assert build_prescription(HC, {"temperature_c": "33"}, 1800).regimes == ()


def test_cold_sessions_at_most_20_minutes() -> None:
    assert rejected(HC, {"temperature_c": "20"}, 1201) == [
        "duration_s=1201 is above the clinical (cold) limit 1200 s (clinical 1800, absolute 3595)"]
    assert rejected(HC, {"temperature_c": "32.9"}, parse_duration("25m")) == [
        "duration_s=1500 is above the clinical (cold) limit 1200 s (clinical 1800, absolute 3595)"]


def test_cold_pad_at_least_10_degrees() -> None:
    assert rejected(HC, {"temperature_c": "9.9"}, 600) == [
        "temperature_c=9.9 is below the clinical (cold) limit 10 degC (absolute 5)"]
    assert rejected(HC, {"temperature_c": "4"}, 1500) == [
        "temperature_c=4 is below the clinical (cold) limit 10 degC (absolute 5)",
        "duration_s=1500 is above the clinical (cold) limit 1200 s (clinical 1800, absolute 3595)"]


def test_heat_at_45_is_allowed_within_the_thermal_dose_budget() -> None:
    hot = build_prescription(HC, {"temperature_c": "45"}, 900)
    assert hot.derived["cem43_min"] == pytest.approx(60.0)
    assert rejected(HC, {"temperature_c": "45"}, 1800) == [
        "cem43_min=120 is above the derived limit 60 min (from temperature_c=45 for 1800 s)"]
    assert rejected(HC, {"temperature_c": "45.1"}) == [
        "temperature_c=45.1 is above the clinical limit 45 degC (absolute 45)"]


# -- derived limits --------------------------------------------------------------------
def test_tens_charge_and_current_density_are_derived_and_checked() -> None:
    t = build_prescription(ES, {"amplitude_ma": "25"}, 600)
    assert t.derived["charge_per_phase_uc"] == pytest.approx(5.0)
    assert t.derived["current_density_rms_ma_cm2"] == pytest.approx(0.2)
    lim = t.derived_limits["current_density_rms_ma_cm2"].high
    assert lim is not None and (lim.value, lim.source) == (2.0, "derived")
    assert rejected(ES, {"amplitude_ma": "80", "pulse_width_us": "400", "frequency_hz": "150",
                         "electrode_area_cm2": "4"}) == [
        "current_density_rms_ma_cm2=6.9282 is above the derived limit 2 mA/cm2 (from "
        "amplitude_ma=80, pulse_width_us=400, frequency_hz=150, electrode_area_cm2=4)"]


def test_tens_charge_per_phase_limit() -> None:
    # A site may narrow a ceiling; the density limit stays (the ceiling requires it).
    limits = ES.model_dump()["limits"]
    site = with_changes(ES, limits={**limits, "derived": {
        **limits["derived"], "charge_per_phase_uc": {"max": 10.0}}})
    assert rejected(site, {"amplitude_ma": "60", "pulse_width_us": "200"}) == [
        "charge_per_phase_uc=12 is above the derived limit 10 uC (from amplitude_ma=60, "
        "pulse_width_us=200)"]


def test_derived_limits_skip_inputs_that_are_already_refused() -> None:
    # 90 mA is refused itself; its charge and density are not reported on top.
    assert rejected(ES, {"amplitude_ma": "90", "electrode_area_cm2": "1"}) == [
        "amplitude_ma=90 is above the clinical limit 80 mA (absolute 80)"]


def test_tens_ramp_is_decided_here_and_never_faster_than_the_rate() -> None:
    t = build_prescription(ES, {"amplitude_ma": "25", "channel": "1"}, 600)
    assert t.session_values == {"channel_mask": 2, "ramp_up_s": 3}
    assert all(isinstance(v, int) for v in t.session_values.values())   # whole device units
    slow = with_changes(ES, rules={"ramp_rate_ma_s": 1.0})
    assert build_prescription(slow, {"amplitude_ma": "30"}, 600,
                              facts={"max_ramp_s": 30}).session_values["ramp_up_s"] == 30
    assert rejected(slow, {"amplitude_ma": "40"}, facts={"max_ramp_s": 30}) == [
        "amplitude_ma=40 needs at least 40 s of ramp at 1 mA/s; a ramp of 30 s (1.33 mA/s) "
        "would be faster (the device ramps for at most 30 s)"]


def test_ultrasound_energy_waits_for_the_device_era() -> None:
    p = build_prescription(US, {"intensity_w_cm2": "1.5"}, 300)
    assert p.pending == ("energy_j",) and "energy_j" not in p.derived
    done = apply_device_facts(US, p, {"era_cm2": 5.0})
    assert done.pending == () and done.facts == {"era_cm2": 5.0}
    assert done.derived["energy_j"] == pytest.approx(2250.0)
    assert done.derived["power_w"] == pytest.approx(7.5)
    assert done.request_id == p.request_id
    with pytest.raises(PrescriptionRejected) as exc:
        apply_device_facts(US, p, {})
    assert exc.value.messages() == [
        "energy_j cannot be checked: the device did not report era_cm2"]
    pulsed = build_prescription(US, {"intensity_w_cm2": "1.5", "duty_pct": "20"}, 300,
                                facts={"era_cm2": 5.0})
    assert pulsed.derived["energy_j"] == pytest.approx(450.0) and pulsed.pending == ()


def test_ultrasound_energy_over_the_limit_is_refused_after_identification() -> None:
    p = build_prescription(US, {"intensity_w_cm2": "2"}, 1795)
    with pytest.raises(PrescriptionRejected) as exc:
        apply_device_facts(US, p, {"era_cm2": 5.0})
    assert exc.value.messages() == [
        "energy_j=17950 is above the derived limit 10000 J (from intensity_w_cm2=2, era_cm2=5, "
        "duty_pct=100, 1795 s)"]


# -- properties --------------------------------------------------------------------
@given(st.integers(min_value=1, max_value=20))
def test_every_intensity_on_the_grid_within_limits_is_accepted_exactly(tenths: int) -> None:
    text = f"{tenths / 10:.1f}"
    p = build_prescription(US, {"intensity_w_cm2": text}, 60)
    assert p.values["intensity_w_cm2"] == float(text)


@given(st.integers(min_value=100, max_value=2999).filter(lambda n: n % 10 != 0))
def test_every_intensity_off_the_grid_is_refused(hundredths: int) -> None:
    text = f"{hundredths / 100:.2f}"
    with pytest.raises(PrescriptionRejected) as exc:
        build_prescription(US, {"intensity_w_cm2": text}, 60)
    assert any("step" in m for m in exc.value.messages())


@given(st.floats(min_value=0.001, max_value=1e5, allow_nan=False))
def test_a_duration_is_accepted_exactly_when_inside_its_effective_limit(d: float) -> None:
    try:
        p: Prescription | None = build_prescription(HC, {"temperature_c": "40"}, d)
    except PrescriptionRejected:
        p = None
    assert (p is not None) == (1 <= d <= 1800)
