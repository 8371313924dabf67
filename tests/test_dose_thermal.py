"""Thermal dose (CEM43), the cold regime and the pad interlocks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.modality.prescription import build_prescription
from controller.modality.rules import ThermalRules, modality_for
from controller.modality.thermal import (
    Cem43Accumulator,
    ThermalDoseMeter,
    budget_reason,
    cem43_for,
    cem43_rate,
    is_cold,
    pad_interlock,
)
from controller.profiles.loader import resolve_profile

HC = resolve_profile("hc-200").profile
temps = st.floats(min_value=5.0, max_value=50.0, allow_nan=False)


def constant(temp_c: float, seconds: float, step_s: float = 1.0) -> Cem43Accumulator:
    acc = Cem43Accumulator()
    n = round(seconds / step_s)
    for i in range(n + 1):
        acc.add(1000.0 + i * step_s, temp_c)
    return acc


# -- reference values of docs/design.md §3.4 --------------------------------------
@pytest.mark.parametrize(("temp", "minutes", "cem"), [
    (44.0, 1, 2.0), (42.0, 1, 0.25), (45.0, 1, 4.0), (41.0, 20, 1.25), (43.0, 1, 1.0)])
def test_reference_values_closed_form(temp: float, minutes: float, cem: float) -> None:
    assert cem43_for(temp, minutes) == pytest.approx(cem)


@pytest.mark.parametrize(("temp", "minutes", "cem"), [
    (44.0, 1, 2.0), (42.0, 1, 0.25), (45.0, 1, 4.0), (41.0, 20, 1.25)])
def test_reference_values_from_samples(temp: float, minutes: float, cem: float) -> None:
    assert constant(temp, minutes * 60, step_s=0.2).cem43_min == pytest.approx(cem)


def test_r_is_a_half_at_or_above_43_and_a_quarter_below() -> None:
    assert cem43_rate(43.0) == 1.0
    assert cem43_rate(44.0) / cem43_rate(43.0) == pytest.approx(2.0)
    assert cem43_rate(43.0) / cem43_rate(42.0) == pytest.approx(4.0)


def test_integration_is_sample_to_sample_on_the_rate() -> None:
    acc = Cem43Accumulator()
    acc.add(0.0, 43.0)
    assert acc.cem43_min == 0.0
    acc.add(60.0, 45.0)                 # one minute ramping 43 -> 45: mean of rates 1 and 4
    assert acc.cem43_min == pytest.approx(2.5)
    acc.add(60.0, 50.0)                 # a repeated time adds nothing
    acc.add(30.0, 50.0)                 # nor does one out of order
    assert acc.cem43_min == pytest.approx(2.5)
    assert acc.max_temp_c == 50.0 and acc.min_temp_c == 43.0


def test_non_finite_samples_are_refused() -> None:
    with pytest.raises(ValueError):
        Cem43Accumulator().add(0.0, math.nan)


# -- properties ----------------------------------------------------------------------
@given(temps, st.lists(st.floats(min_value=0.0, max_value=120.0), min_size=1, max_size=30))
def test_cem43_never_decreases_with_time(temp: float, gaps: list[float]) -> None:
    acc, t, last = Cem43Accumulator(), 0.0, 0.0
    acc.add(t, temp)
    for gap in gaps:
        t += gap
        acc.add(t, temp)
        assert acc.cem43_min >= last
        last = acc.cem43_min


@given(temps, temps, st.floats(min_value=0.1, max_value=60.0))
def test_cem43_is_monotone_in_temperature(a: float, b: float, minutes: float) -> None:
    lo, hi = sorted((a, b))
    assert cem43_for(lo, minutes) <= cem43_for(hi, minutes)


@given(temps, st.floats(min_value=0.1, max_value=60.0), st.floats(min_value=0.1, max_value=60.0))
def test_cem43_is_additive_in_time(temp: float, m1: float, m2: float) -> None:
    assert cem43_for(temp, m1 + m2) == pytest.approx(cem43_for(temp, m1) + cem43_for(temp, m2))


# -- the cold regime and the interlocks ------------------------------------------------
def test_cold_is_a_setpoint_below_skin_temperature() -> None:
    assert is_cold(32.9, 33.0) and not is_cold(33.0, 33.0)
    rules = modality_for(HC)
    assert isinstance(rules, ThermalRules)
    assert rules.is_cold(20.0) and not rules.is_cold(40.0)


def test_pad_interlock_trips_only_past_the_limits() -> None:
    assert pad_interlock(45.0, 45.0, 4.0) is None
    assert pad_interlock(45.1, 45.0, 4.0) == "pad temperature 45.1 degC passed the limit 45 degC"
    assert pad_interlock(3.9, 45.0, 4.0) == "pad temperature 3.9 degC fell below the limit 4 degC"
    assert pad_interlock(100.0, None, None) is None


def test_budget_reason_when_the_dose_reaches_the_budget() -> None:
    assert budget_reason(59.9, 60.0) is None
    assert budget_reason(60.0, 60.0) == \
        "thermal dose CEM43 60 min reached the session budget 60 min"
    assert budget_reason(1e9, None) is None


def test_the_meter_takes_interlocks_and_budget_from_the_profile_and_regime() -> None:
    heat = modality_for(HC).dose_meter(build_prescription(HC, {"temperature_c": "40"}, 600))
    cold = modality_for(HC).dose_meter(build_prescription(HC, {"temperature_c": "12"}, 600))
    assert isinstance(heat, ThermalDoseMeter) and isinstance(cold, ThermalDoseMeter)
    assert (heat.pad_temp_max_c, heat.pad_temp_min_c, heat.cem43_budget_min) == (45.0, 4.0, 60.0)
    assert cold.pad_temp_min_c == 9.0          # the cold regime's own interlock
    assert heat.check({"temperature_c": 8.5}) is None
    assert cold.check({"temperature_c": 8.5}) == \
        "pad temperature 8.5 degC fell below the limit 9 degC"
    assert heat.check({"temperature_c": 45.2}) == \
        "pad temperature 45.2 degC passed the limit 45 degC"
    assert heat.check({}) is None


def test_the_meter_accumulates_dose_and_stops_at_the_budget() -> None:
    meter = ThermalDoseMeter(pad_temp_max_c=45.0, pad_temp_min_c=4.0, cem43_budget_min=2.0)
    for i in range(0, 61):
        meter.add_sample(float(i), {"temperature_c": 44.0, "output_on": True})
        reason = meter.check({"temperature_c": 44.0})
        assert (reason is not None) == (i == 60)
    figures = meter.figures()
    assert figures["cem43_min"] == pytest.approx(2.0)
    assert figures["output_s"] == pytest.approx(60.0)
    assert figures["max_pad_temp_c"] == figures["min_pad_temp_c"] == 44.0


def test_output_time_counts_half_an_interval_at_each_switch() -> None:
    meter = ThermalDoseMeter(pad_temp_max_c=None, pad_temp_min_c=None, cem43_budget_min=None)
    for t, on in [(0.0, False), (1.0, True), (2.0, True), (3.0, False), (4.0, False)]:
        meter.add_sample(t, {"output_on": on, "temperature_c": 37.0})
    assert meter.figures()["output_s"] == pytest.approx(2.0)
