"""Clinical ceilings live in code (issue 10 §2b): a profile may only narrow them.

Each tampering from the issue is refused twice: by `profiles validate` (with the
limit, the ceiling and the line named) and, for a profile object that never went
through validation (model_copy does not validate), by build_prescription and the
session's dose meter.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.modality.ceilings import CEILINGS, ceiling_regimes
from controller.modality.prescription import PrescriptionRejected, build_prescription
from controller.modality.rules import modality_for
from controller.modality.tens import TensDoseMeter
from controller.modality.thermal import ThermalDoseMeter
from controller.modality.ultrasound import UltrasoundDoseMeter
from controller.profiles.loader import load_profile_file, resolve_profile
from controller.profiles.model import Profile
from controller.profiles.sections import Bound
from device_profiles import __file__ as _profiles_init
from tests.test_profile_backstops import Doc, problems, tampered

HC = resolve_profile("hc-200").profile
US = resolve_profile("us-300").profile
ES = resolve_profile("es-4").profile
PROFILE_DIR = Path(_profiles_init).parent



def points_at(problem: str, path: Path, text: str, key: str) -> bool:
    """The problem's line number is the line of `key` (or of its value just below)."""
    m = re.match(rf"{re.escape(str(path))}:(\d+): ", problem)
    if m is None:
        return False
    lines = text.splitlines()
    n = int(m.group(1))
    return any(f"{key}:" in lines[i - 1] for i in (n, n - 1) if 0 < i <= len(lines))


def bypass(profile: Profile, **limit_changes: Any) -> Profile:
    """The profile with its limits changed and NO validation (as if it got past it)."""
    return profile.model_copy(update={"limits": profile.limits.model_copy(
        update=limit_changes)})


def refused(profile: Profile, settings: dict[str, str], duration_s: float = 300) -> list[str]:
    with pytest.raises(PrescriptionRejected) as exc:
        build_prescription(profile, settings, duration_s)
    return exc.value.messages()


# -- the shipped profiles already sit inside every ceiling ------------------------------
@pytest.mark.parametrize("pid", ["hc-200", "us-300", "es-4"])
def test_shipped_profiles_validate(pid: str) -> None:
    assert load_profile_file(PROFILE_DIR / f"{pid}.yaml").profile.id == pid


def test_the_table_is_keyed_by_modality_meaning_not_by_device() -> None:
    assert set(CEILINGS) == {"thermal", "ultrasound", "tens"}
    assert CEILINGS["ultrasound"].limits["intensity_w_cm2"].max == 2.0
    assert CEILINGS["tens"].derived["charge_per_phase_uc"].max == 32.0
    assert all(c.limits["duration_s"].max == 1800 for c in CEILINGS.values())


# -- US-300 intensity raised to 3.0 W/cm2 continuous -----------------------------------
def test_us300_intensity_3_is_refused_at_validation(tmp_path: Path) -> None:
    def change(d: Doc) -> None:
        d["limits"]["clinical"]["intensity_w_cm2"] = {"max": 3.0}
    path, text = tampered(tmp_path, "us-300", change)
    found = problems(path)
    assert [p for p in found if points_at(p, path, text, "intensity_w_cm2") and
            "limits.clinical.intensity_w_cm2: max 3 W/cm2 is above the clinical ceiling for "
            "ultrasound, 2 W/cm2" in p], found


def test_us300_intensity_3_is_refused_at_request_time_too() -> None:
    raw = bypass(US, clinical={**US.limits.clinical, "intensity_w_cm2": Bound(max=3.0)})
    assert refused(raw, {"intensity_w_cm2": "3.0", "duty_pct": "100"}) == [
        "intensity_w_cm2=3.0 W/cm2 is above the clinical ceiling 2 W/cm2 for ultrasound "
        "(clinical 3, absolute 3)"]
    ok = build_prescription(raw, {"intensity_w_cm2": "2.0"}, 300)
    assert ok.record()["limits"]["intensity_w_cm2"]["max_source"] == "ceiling"


def test_the_tier_that_binds_is_recorded_and_a_tie_names_the_profile() -> None:
    p = build_prescription(US, {"intensity_w_cm2": "1.5"}, 300)
    assert p.record()["limits"]["intensity_w_cm2"]["max_source"] == "clinical"
    assert p.record()["limits"]["duration_s"]["max_source"] == "clinical"


def test_frequency_outside_the_ceiling_set_is_refused_even_if_the_profile_allows_it() -> None:
    params = dict(US.parameters)
    params["frequency_mhz"] = params["frequency_mhz"].model_copy(update={"allowed": [1, 2, 3]})
    raw = US.model_copy(update={"parameters": params})
    assert refused(raw, {"intensity_w_cm2": "1.0", "frequency_mhz": "2"}) == [
        "frequency_mhz=2 is not one of the values the clinical ceiling for ultrasound "
        "allows: one of 1, 3 MHz"]


def test_frequency_set_wider_than_the_ceiling_is_refused_at_validation(tmp_path: Path) -> None:
    path, _ = tampered(tmp_path, "us-300", lambda d: d["parameters"]["frequency_mhz"].update(
        allowed=[1, 2, 3]))
    assert any("parameters.frequency_mhz.allowed: 2 is outside the clinical ceiling for "
               "ultrasound: one of 1, 3 MHz" in p for p in problems(path))


# -- ES-4 charge per phase ---------------------------------------------------------------
def test_es4_charge_per_phase_raised_is_refused_at_validation(tmp_path: Path) -> None:
    path, text = tampered(tmp_path, "es-4", lambda d: d["limits"]["derived"].update(
        charge_per_phase_uc={"max": 40.0}))
    found = problems(path)
    assert [p for p in found if points_at(p, path, text, "charge_per_phase_uc") and
            "limits.derived.charge_per_phase_uc: 40 uC is above the clinical ceiling for tens, "
            "32 uC" in p], found


def test_es4_charge_ceiling_applies_when_the_profile_limit_is_raised() -> None:
    raw = bypass(ES, derived={**ES.limits.derived, "charge_per_phase_uc": Bound(max=100.0)})
    p = build_prescription(raw, {"amplitude_ma": "80", "pulse_width_us": "400",
                                 "electrode_area_cm2": "100"}, 300)
    assert p.record()["derived_limits"]["charge_per_phase_uc"] == {
        "max": 32.0, "max_source": "ceiling"}


def test_es4_pulse_width_and_amplitude_ceilings_hold_without_clinical_limits() -> None:
    raw = bypass(ES, clinical={})
    assert sorted(refused(raw, {"amplitude_ma": "10", "pulse_width_us": "500",
                                "frequency_hz": "200"})) == [
        "frequency_hz=200 Hz is above the clinical ceiling 150 Hz for tens (absolute 250)",
        "pulse_width_us=500 us is above the clinical ceiling 400 us for tens (absolute 500)"]


def test_tens_ramp_rate_and_density_ceilings_hold_at_run_time() -> None:
    raw = ES.model_copy(update={"rules": {**ES.rules, "ramp_rate_ma_s": 50.0}})
    p = build_prescription(raw, {"amplitude_ma": "25"}, 300)
    assert p.session_values["ramp_up_s"] == 3    # 25 mA at the 10 mA/s ceiling, not 1 s
    raw = bypass(ES, derived={"charge_per_phase_uc": Bound(max=32.0)})
    p = build_prescription(raw, {"amplitude_ma": "10"}, 300)
    meter = modality_for(raw).dose_meter(p)
    assert isinstance(meter, TensDoseMeter) and meter.density_max_ma_cm2 == 2.0


def test_a_session_never_exceeds_30_minutes() -> None:
    raw = bypass(ES, clinical={**ES.limits.clinical, "duration_s": Bound(max=3595)})
    assert refused(raw, {"amplitude_ma": "10"}, 2000) == [
        "duration_s=2000 s is above the clinical ceiling 1800 s for tens (clinical 3595, "
        "absolute 3595)"]


# -- HC-200 cold regime removed ----------------------------------------------------------
def test_removing_the_cold_regime_is_refused_at_validation(tmp_path: Path) -> None:
    path, _ = tampered(tmp_path, "hc-200", lambda d: d["limits"].pop("regimes"))
    found = problems(path)
    assert any("limits.regimes: no regime covers cold therapy (temperature_c below 33), and "
               "the clinical ceiling for thermal (cold) needs temperature_c at least 10 degC "
               "and duration_s at most 1200 s" in p for p in found), found


def test_a_cold_regime_that_allows_more_than_the_ceiling_is_refused(tmp_path: Path) -> None:
    def change(d: Doc) -> None:
        d["limits"]["regimes"]["cold"]["clinical"]["duration_s"] = {"max": 1800}
    path, _ = tampered(tmp_path, "hc-200", change)
    assert any("limits.regimes.cold.clinical.duration_s: max 1800 s is above the clinical "
               "ceiling for thermal (cold), 1200 s" in p for p in problems(path))


def test_the_cold_regime_applies_by_code_when_the_profile_lost_it() -> None:
    raw = bypass(HC, regimes={})
    assert ceiling_regimes("thermal", {"temperature_c": 20.0}) == ["cold"]
    assert refused(raw, {"temperature_c": "20"}, 1500) == [
        "duration_s=1500 s is above the clinical ceiling 1200 s for thermal (cold) "
        "(clinical 1800, absolute 3595)"]
    assert refused(raw, {"temperature_c": "8"}) == [
        "temperature_c=8 degC is below the clinical ceiling 10 degC for thermal (cold) "
        "(absolute 5)"]
    p = build_prescription(raw, {"temperature_c": "15"}, 1200)
    assert p.ceiling_regimes == ("cold",) and p.regimes == ()
    assert p.record()["limits"]["duration_s"]["max_source"] == "ceiling (cold)"


def test_heat_ceilings_hold_for_setpoint_dose_budget_and_pad_interlock() -> None:
    raw = bypass(HC, absolute={**HC.limits.absolute, "temperature_c": Bound(min=5, max=48)},
                 clinical={"duration_s": Bound(max=1800)},
                 derived={"cem43_min": Bound(max=1000.0)},
                 interlocks={"pad_temp_max_c": 50.0})
    assert refused(raw, {"temperature_c": "47"}) == [
        "temperature_c=47 degC is above the clinical ceiling 45 degC for thermal (absolute 48)"]
    assert refused(raw, {"temperature_c": "45"}, 1800) == [
        "cem43_min=120 is above the clinical ceiling 60 min for thermal (from "
        "temperature_c=45 for 1800 s)"]
    meter = modality_for(raw).dose_meter(build_prescription(raw, {"temperature_c": "40"}, 600))
    assert isinstance(meter, ThermalDoseMeter)
    assert meter.cem43_budget_min == 60.0 and meter.pad_temp_max_c == 45.0


def test_applicator_interlock_never_above_41_degrees() -> None:
    raw = bypass(US, interlocks={"applicator_temp_max_c": 50.0})
    p = build_prescription(raw, {"intensity_w_cm2": "1.0"}, 300, facts={"era_cm2": 5.0})
    meter = modality_for(raw).dose_meter(p)
    assert isinstance(meter, UltrasoundDoseMeter) and meter.applicator_temp_max_c == 41.0
    assert meter.check({"applicator_temp_c": 42.0}) is not None


@pytest.mark.parametrize(("pid", "change", "expect"), [
    ("us-300", lambda d: d["limits"]["interlocks"].update(applicator_temp_max_c=45.0),
     "limits.interlocks.applicator_temp_max_c: 45 degC is above the clinical ceiling for "
     "ultrasound, 41 degC"),
    ("us-300", lambda d: d["limits"].pop("interlocks"),
     "limits.interlocks.applicator_temp_max_c: required: the clinical ceiling for ultrasound "
     "is at most 41 degC"),
    ("es-4", lambda d: d["rules"].update(ramp_rate_ma_s=20.0),
     "rules.ramp_rate_ma_s: 20 mA/s is above the clinical ceiling for tens, 10 mA/s"),
    ("es-4", lambda d: d["limits"]["derived"].pop("current_density_rms_ma_cm2"),
     "limits.derived.current_density_rms_ma_cm2: required: the clinical ceiling for tens is "
     "at most 2 mA/cm2"),
    ("es-4", lambda d: d["limits"]["clinical"].update(pulse_width_us={"min": 20, "max": 500}),
     "limits.clinical.pulse_width_us: max 500 us is above the clinical ceiling for tens, "
     "400 us"),
    ("hc-200", lambda d: d["limits"]["derived"].update(cem43_min={"max": 120.0}),
     "limits.derived.cem43_min: 120 min is above the clinical ceiling for thermal, 60 min"),
    ("hc-200", lambda d: d["rules"].update(skin_temp_c=20.0),
     "rules.skin_temp_c: 20 degC is below the clinical ceiling for thermal, 33 degC"),
])
def test_every_ceiling_is_enforced_at_validation(tmp_path: Path, pid: str,
                                                 change: Callable[[Doc], None],
                                                 expect: str) -> None:
    path, _ = tampered(tmp_path, pid, change)
    found = problems(path)
    assert any(expect in p for p in found), found
    assert all(p.startswith(f"{path}:") for p in found)


def test_a_profile_may_narrow_a_ceiling(tmp_path: Path) -> None:
    def change(d: Doc) -> None:
        d["limits"]["clinical"]["intensity_w_cm2"] = {"max": 1.5}
        d["limits"]["interlocks"]["applicator_temp_max_c"] = 40.0
    path, _ = tampered(tmp_path, "us-300", copy.copy(change))
    prof = load_profile_file(path).profile
    assert refused(prof, {"intensity_w_cm2": "1.8"}) == [
        "intensity_w_cm2=1.8 is above the clinical limit 1.5 W/cm2 (absolute 3)"]
