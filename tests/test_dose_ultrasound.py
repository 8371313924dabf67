"""Ultrasound: acoustic power, energy dose, coupling hold on a fake clock, applicator heat."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.modality.prescription import build_prescription
from controller.modality.rules import modality_for
from controller.modality.ultrasound import (
    CouplingHold,
    UltrasoundDoseMeter,
    applicator_interlock,
    expected_power_w,
    is_coupled,
    nominal_energy_j,
    power_mismatch,
)
from controller.profiles.loader import resolve_profile
from tests.support.clock import FakeClock

US = resolve_profile("us-300").profile


def coupled(power: float = 7.5, contact: float = 90.0) -> dict[str, object]:
    return {"state": "running", "contact_pct": contact, "power_w": power,
            "applicator_temp_c": 35.0}


def holding() -> dict[str, object]:
    return {"state": "holding", "contact_pct": 20, "power_w": 0.0, "applicator_temp_c": 35.0}


def meter(clock: FakeClock, *, duty: float = 100.0, era: float | None = 5.0,
          planned_s: float = 300.0) -> UltrasoundDoseMeter:
    return UltrasoundDoseMeter(planned_s=planned_s, intensity_w_cm2=1.5, duty_pct=duty,
                               era_cm2=era, contact_min_pct=50.0, max_hold_s=60.0,
                               applicator_temp_max_c=41.0, energy_max_j=10000.0, clock=clock)


# -- reference values of docs/design.md §3.4 --------------------------------------
def test_nominal_energy_reference_values() -> None:
    assert nominal_energy_j(1.5, 5.0, 100, 300) == pytest.approx(2250.0)
    assert nominal_energy_j(1.5, 5.0, 20, 300) == pytest.approx(450.0)


@pytest.mark.parametrize(("duty", "power", "energy"), [(100, 7.5, 2250.0), (20, 1.5, 450.0)])
def test_measured_energy_reference_values(duty: float, power: float, energy: float) -> None:
    clock = FakeClock()
    m = meter(clock, duty=duty)
    m.hold.start(0.0)
    for i in range(0, 1501):                      # 5 min at 0.2 s polls
        clock.now = i * 0.2
        m.add_sample(clock.now, coupled(power))
    fig = m.figures()
    assert fig["energy_j"] == pytest.approx(energy)
    assert fig["nominal_energy_j"] == pytest.approx(energy)
    assert fig["treatment_s"] == pytest.approx(300.0) and fig["hold_s"] == pytest.approx(0.0)
    assert m.hold.due()


def test_expected_power_is_intensity_era_duty_and_gain() -> None:
    assert expected_power_w(1.5, 5.0, 100) == pytest.approx(7.5)
    assert expected_power_w(1.5, 5.0, 20) == pytest.approx(1.5)
    assert expected_power_w(1.5, 5.0, 100, gain=1.1) == pytest.approx(8.25)


def test_power_mismatch_against_the_relative_tolerance() -> None:
    assert power_mismatch(7.0, 7.5, 0.25) is None
    assert power_mismatch(5.0, 7.5, 0.25) == \
        "measured acoustic power 5 W is 33% off the expected 7.5 W (tolerance 25%)"
    assert power_mismatch(3.0, 0.0, 0.25) is None


# -- coupling ------------------------------------------------------------------------
def test_coupled_means_running_with_enough_contact() -> None:
    assert is_coupled(coupled(contact=50), 50.0)
    assert not is_coupled(coupled(contact=49), 50.0)
    assert not is_coupled(holding(), 50.0)
    assert not is_coupled({"state": "running"}, 50.0)


def test_energy_counts_only_while_coupled() -> None:
    clock = FakeClock()
    m = meter(clock)
    # Power read while contact is low (or holding) is not dose.
    for i in range(11):
        m.add_sample(float(i), coupled(power=7.5, contact=30))
    assert m.figures()["energy_j"] == 0.0
    assert m.figures()["treatment_s"] == 0.0


def test_the_planned_end_moves_by_the_time_without_contact() -> None:
    clock = FakeClock()
    hold = CouplingHold(planned_s=300.0, max_hold_s=60.0, clock=clock)
    hold.start(0.0)
    assert hold.end_time() == 300.0
    for t in range(0, 101):
        hold.add(float(t), True)
    for t in range(101, 131):                     # contact lost for 30 s
        hold.add(float(t), False)
    clock.now = 130.0
    assert hold.hold_s() == pytest.approx(29.5)   # half of the 100..101 interval so far
    assert hold.end_time() == pytest.approx(329.5)
    clock.now = 131.0
    hold.add(131.0, True)
    assert hold.hold_s() == pytest.approx(30.0)
    assert hold.end_time() == pytest.approx(330.0)
    clock.now = 329.9
    assert not hold.due() and hold.remaining_s() == pytest.approx(0.1)
    clock.now = 330.0
    assert hold.due() and hold.treatment_s() == pytest.approx(300.0)
    assert hold.hold_exceeded() is None


def test_between_samples_the_last_state_is_extrapolated_on_the_clock() -> None:
    clock = FakeClock(10.0)
    hold = CouplingHold(planned_s=300.0, max_hold_s=60.0, clock=clock)
    hold.start()                                  # start time read from the clock
    hold.add(10.0, False)
    clock.now = 70.0
    assert hold.hold_s() == pytest.approx(60.0) and hold.hold_exceeded() is None
    assert hold.end_time() == pytest.approx(370.0)
    clock.now = 71.0
    assert hold.hold_exceeded() == \
        "coupling lost for 61.0 s in total, more than the 60 s the session end may move"


def test_hold_is_cumulative_over_episodes() -> None:
    clock = FakeClock()
    hold = CouplingHold(planned_s=600.0, max_hold_s=60.0, clock=clock)
    hold.start(0.0)
    t = 0.0
    for _ in range(4):                            # four 20 s losses of contact
        for _ in range(20):
            hold.add(t, True)
            t += 1
        for _ in range(20):
            hold.add(t, False)
            t += 1
    clock.now = t
    assert hold.hold_s() > 60.0 and hold.hold_exceeded() is not None


def test_the_dose_meter_reports_lost_coupling_and_applicator_heat() -> None:
    clock = FakeClock()
    m = meter(clock)
    m.hold.start(0.0)
    m.add_sample(0.0, coupled())
    m.add_sample(1.0, holding())
    assert m.check(holding()) is None
    clock.now = 62.0
    assert m.check(holding()) is not None and "coupling lost" in str(m.check(holding()))
    hot = {**coupled(), "applicator_temp_c": 41.2}
    assert m.check(hot) == "applicator temperature 41.2 degC passed the limit 41 degC"
    assert applicator_interlock(41.0, 41.0) is None


def test_energy_past_the_derived_limit_ends_the_session() -> None:
    clock = FakeClock()
    m = meter(clock)
    m.energy_max_j = 100.0
    m.add_sample(0.0, coupled())
    m.add_sample(20.0, coupled())
    assert m.check(coupled()) == "delivered energy 150 J passed the limit 100 J"


def test_era_from_telemetry_when_not_known_at_start() -> None:
    m = meter(FakeClock(), era=None)
    m.add_sample(0.0, {**coupled(), "era_cm2": 4.0})
    assert m.figures()["era_cm2"] == 4.0


def test_the_profile_meter_uses_the_profile_rules_and_device_era() -> None:
    p = build_prescription(US, {"intensity_w_cm2": "1.5", "duty_pct": "20"}, 300,
                           facts={"era_cm2": 5.0})
    m = modality_for(US).dose_meter(p, clock=FakeClock())
    assert isinstance(m, UltrasoundDoseMeter)
    assert (m.contact_min_pct, m.hold.max_hold_s, m.applicator_temp_max_c) == (50.0, 60.0, 41.0)
    assert (m.era_cm2, m.duty_pct, m.hold.planned_s, m.energy_max_j) == (5.0, 20.0, 300, 10000.0)


# -- properties ----------------------------------------------------------------------
@given(st.lists(st.tuples(st.floats(min_value=0.01, max_value=5.0), st.booleans()),
                min_size=1, max_size=50))
def test_treatment_plus_hold_is_the_elapsed_time(steps: list[tuple[float, bool]]) -> None:
    clock = FakeClock()
    hold = CouplingHold(planned_s=100.0, max_hold_s=60.0, clock=clock)
    hold.start(0.0)
    for dt, c in steps:
        clock.now += dt
        hold.add(clock.now, c)
    assert hold.treatment_s() + hold.hold_s() == pytest.approx(clock.now)
    assert hold.end_time() == pytest.approx(100.0 + hold.hold_s())


@given(st.floats(min_value=0.1, max_value=3.0), st.floats(min_value=1.0, max_value=10.0),
       st.sampled_from([10, 20, 50, 100]), st.floats(min_value=1.0, max_value=1800.0))
def test_nominal_energy_is_linear_in_time(i: float, era: float, duty: int, t: float) -> None:
    assert nominal_energy_j(i, era, duty, 2 * t) == pytest.approx(2 * nominal_energy_j(
        i, era, duty, t))
    assert nominal_energy_j(i, era, duty, t) == pytest.approx(expected_power_w(i, era, duty) * t)
