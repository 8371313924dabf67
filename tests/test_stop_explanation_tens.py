"""A TENS device's latched flags in the profile's words (issue 11): the e-stop and patient
stop flags are explained with the labels the profile gives its events, or a neutral text
when it gives none; never with one device's words written in the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.modality.tens import ESTOP_LATCHED, ESTOP_NO_CAUSE, PATIENT_STOP
from controller.profiles.loader import load_profile_file, resolve_profile
from controller.profiles.model import Profile
from controller.session import checks
from controller.session.verdicts import Verdict
from protocols.map_framed import FramedMap
from tests.test_invented_framed import FT2

CONTROLLER = Path(__file__).resolve().parents[1] / "controller"
IDLE = {"channel_state": "idle", "output_on": False, "estop_latched": False,
        "patient_stop": False, "watchdog_expired": False, "remaining_s": 5}


def without_events(profile: Profile) -> Profile:
    return profile.model_copy(update={"protocol": profile.protocol.model_copy(
        update={"events": None})})


@pytest.fixture
def ft2(tmp_path: Path) -> Profile:
    path = tmp_path / "ft-2.yaml"
    path.write_text(FT2)
    return load_profile_file(path).profile


def test_a_latched_estop_names_the_causes_the_profile_words() -> None:
    es4 = resolve_profile("es-4").profile
    verdict = checks.explain_stop(es4, {**IDLE, "estop_latched": True})
    assert verdict == Verdict(checks.FAULT, checks.BY_INTERLOCK,
                              f"{ESTOP_LATCHED} (possible causes: over-current, e-stop "
                              "latched; patient stop switch pressed)")


def test_another_device_gets_its_own_words(ft2: Profile) -> None:
    latched = checks.explain_stop(ft2, {**IDLE, "estop_latched": True})
    assert latched.reason == (f"{ESTOP_LATCHED} (possible causes: over-current, head "
                              "stopped; patient pulled the cord)")
    pressed = checks.explain_stop(ft2, {**IDLE, "patient_stop": True})
    assert pressed == Verdict(checks.ABORTED, checks.BY_PATIENT, "patient pulled the cord")


def test_a_profile_without_those_words_gets_a_neutral_text() -> None:
    bare = without_events(resolve_profile("es-4").profile)
    assert checks.explain_stop(bare, {**IDLE, "estop_latched": True}) == Verdict(
        checks.FAULT, checks.BY_INTERLOCK, f"{ESTOP_LATCHED} ({ESTOP_NO_CAUSE})")
    assert checks.explain_stop(bare, {**IDLE, "patient_stop": True}) == Verdict(
        checks.ABORTED, checks.BY_PATIENT, PATIENT_STOP)


def test_a_latched_estop_is_still_the_devices_cause_when_stopping() -> None:
    # The cause outranks a stop the controller sent (controller.session.stopping).
    es4 = resolve_profile("es-4").profile
    verdict = checks.device_interlock(es4, {**IDLE, "estop_latched": True})
    assert verdict is not None and verdict.stop_source == checks.BY_INTERLOCK


def test_no_device_words_in_the_modality_code() -> None:
    es4 = resolve_profile("es-4").profile
    assert isinstance(es4.protocol, FramedMap) and es4.protocol.events is not None
    # The device's own words: labels that are more than the modality's event name.
    labels = [k.label for k in es4.protocol.events.kinds.values()
              if k.label and k.label != k.name.replace("_", " ")]
    assert labels   # the test would prove nothing without them
    for path in (CONTROLLER / "modality").glob("*.py"):
        text = path.read_text()
        assert [w for w in (*labels, es4.model) if w in text] == [], path.name
