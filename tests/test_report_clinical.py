"""The clinical wording shared by the report, `records show`, `records patient` and the FHIR
export (`clinical`, `dose_text`), and the chart's own drawing helpers (`report_chart`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from controller.records.clinical import (
    device_info,
    duration_text,
    local_time,
    outcome_sentence,
    parameter_text,
    prescription_summary,
    therapy_kind,
    therapy_name,
)
from controller.records.dose_text import dose_lines, dose_meaning
from controller.records.report_chart import ChartSeries, Quantity, chart_svg, nice_ticks, thin
from controller.records.sessions import SessionRow


def session(**changes: object) -> SessionRow:
    base = SessionRow(
        id="01TEST", profile="hc-200", port="/dev/pts/1", identity={}, operator="carol",
        patient="P-1", prescription={"modality": "thermal", "values": {"temperature_c": 40.0},
                                     "duration_s": 1200.0},
        planned_s=1200.0, started_at="2026-07-01T08:00:00+00:00", status="closed",
        outcome="completed", reason="planned duration delivered", stop_source="controller",
        delivered_s=1200.0, dose={"cem43_min": 1.25}, ended_at="2026-07-01T08:20:00+00:00")
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_durations_read_as_a_clinician_says_them() -> None:
    assert duration_text(2.0004) == "2 s" and duration_text(90) == "90 s"
    assert duration_text(1200) == "20 min" and duration_text(750) == "12 min 30 s"
    assert duration_text(3900) == "1 h 5 min" and duration_text(None) == "-"


def test_therapy_names() -> None:
    assert therapy_kind({"modality": "thermal"}) == "heat"
    assert therapy_kind({"modality": "thermal", "regimes": ["cold"]}) == "cold"
    assert therapy_kind(None, {"energy_j": 1.0}) == "ultrasound"   # older records: the dose
    assert therapy_name({"modality": "tens"}).startswith("TENS")
    assert therapy_name({}) == "Treatment (modality not recorded)"


def test_prescription_in_words_and_units() -> None:
    assert parameter_text("duty_pct", 100) == "100 % (continuous)"
    assert parameter_text("duty_pct", 20) == "20 % (pulsed)"
    assert parameter_text("intensity_w_cm2", 1.5) == "1.5 W/cm²"
    assert parameter_text("waveform", "symmetric") == "symmetric"
    assert prescription_summary(session().prescription, 1200.0) == \
        "Pad temperature 40 °C, treatment time 20 min"


@pytest.mark.parametrize(("outcome", "source", "reason", "words"), [
    ("completed", "controller", "planned duration delivered",
     "Completed as planned: planned duration delivered. The output was ended by the "
     "controller."),
    ("aborted", "patient", "patient stop pressed",
     "Stopped early: patient stop pressed. The output was ended by the patient's stop "
     "switch."),
    ("fault", "interlock", "pad over temperature",
     "Stopped by a fault: pad over temperature. The output was ended by a device safety "
     "interlock."),
    ("rejected", None, "intensity above the clinical limit",
     "Not started: refused before any output: intensity above the clinical limit."),
    (None, None, None, "In progress (the session is still open)."),
])
def test_outcomes_in_words(outcome: str | None, source: str | None, reason: str | None,
                           words: str) -> None:
    assert outcome_sentence(session(outcome=outcome, stop_source=source, reason=reason)) == words


def test_times_in_the_clinics_zone(berlin: None) -> None:
    assert local_time("2026-07-01T08:00:00+00:00") == "2026-07-01 10:00 CEST"
    assert local_time("2026-01-15T23:30:05.250+00:00", seconds=True) == \
        "2026-01-16 00:30:05 CET"
    assert local_time(None) == "-" and local_time("garbage") == "garbage"


def test_device_from_profile_and_identity() -> None:
    info = device_info(session(identity={"model": "18499", "serial": "1001",
                                         "firmware": "100"}))
    assert info.text() == ("Generic Therapy Devices HC-200, reports model 18499, serial 1001, "
                           "firmware 100")
    unknown = device_info(session(profile="gone-1", identity={"serial": "7"}))
    assert unknown.text() == "unknown device, serial 7"


def test_dose_figures_and_their_meaning() -> None:
    heat = {"modality": "thermal", "derived_limits": {"cem43_min": {"max": 60.0}}}
    assert dose_meaning(heat, {"cem43_min": 1.25, "max_pad_temp_c": 41.0}) == (
        "Thermal dose 1.3 CEM43 min: the tissue under the pad was heated as much as 1.3 "
        "minutes held at 43 °C would heat it (highest pad temperature 41 °C); the session's "
        "limit was 60 CEM43 min.")
    tiny = dose_lines({"modality": "thermal"}, {"cem43_min": 9.4e-9})
    assert tiny[0].text() == "< 0.001 min"
    us = dose_lines({"modality": "ultrasound"}, {"energy_j": 2250.0, "era_cm2": 4.5,
                                                 "treatment_s": 300.0})
    assert [(d.label, d.text(), d.ucum) for d in us] == [
        ("Acoustic energy", "2250 J", "J"), ("Energy per area", "500 J/cm²", "J/cm2"),
        ("Treatment time (coupled)", "5 min", "s"),
        ("Effective radiating area (ERA)", "4.5 cm²", "cm2")]
    assert dose_meaning({"modality": "ultrasound"}, {"energy_j": 10.0}) == \
        "10 J of acoustic energy was delivered."
    assert dose_meaning({"modality": "tens"}, None) == ""
    assert dose_lines({"modality": "tens"}, {"odd": "text", "max_amplitude_ma": True}) == []


def test_nice_ticks_and_thinning() -> None:
    assert nice_ticks(0.0, 10.0) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert nice_ticks(31.7, 36.8) == [32.0, 34.0, 36.0]
    assert nice_ticks(0.0, 0.05) == [0.0, 0.01, 0.02, 0.03, 0.04, 0.05]
    assert nice_ticks(5.0, 5.0) == [5.0]
    times, values = thin(list(range(9000)), [float(i) for i in range(9000)], 600)
    assert len(times) == 600 and times[0] == 0 and times[-1] == 8999
    assert values == [float(t) for t in times]  # each value stays with its time


def test_chart_text_is_escaped_and_flat_lines_are_drawn() -> None:
    svg = chart_svg(ChartSeries((0.0, 1.0, 2.0), (5.0, 5.0, 5.0),
                                Quantity("x", "<b>label</b>", "&u"), reference=5.0,
                                marks=((0.5, "start <now>"),)))
    assert "<b>" not in svg and "&lt;b&gt;label&lt;/b&gt; (&amp;u)" in svg
    assert "start &lt;now&gt;" in svg and svg.count("<polyline") == 1
