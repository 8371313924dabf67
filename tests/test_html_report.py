"""The printable session report: one A4 page a clinician files (clinic, patient, local time,
device, prescription, outcome, dose and its meaning, the report's own SVG chart, notes,
signature lines), escaping, the appendix behind `detail`, and a real print to PDF."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from controller.clinic.roles import ClinicSettings
from controller.records.history import session_samples
from controller.records.html_report import (
    NO_TELEMETRY_NOTE,
    ReportError,
    render_html,
    session_report_html,
    stop_confirmation,
    unit_for,
)
from controller.records.report_pdf import find_converter, html_to_pdf, pdf_page_count
from controller.records.store import RecordStore, SessionRow
from tests.conftest import SimFactory
from tests.session_helpers import run
from tests.test_history import HEAT_44, TENS_25, US_CONT, record_session

VOID = {"meta", "br", "img", "hr", "link", "input", "col", "wbr", "source", "circle", "line",
        "polyline", "rect"}
HOSTILE = "<script>alert(1)</script>"
CLINIC = ClinicSettings(name="Riverside Physiotherapy", address="12 Quay Street\nRiverside")
HEAT_LIMITS = {"temperature_c": {"min": 5.0, "min_source": "absolute", "max": 45.0,
                                 "max_source": "clinical"},
               "duration_s": {"min": 1.0, "min_source": "absolute", "max": 1800.0,
                              "max_source": "clinical"}}


class TagChecker(HTMLParser):
    """Every element opened is closed, in order (void and self-closed elements aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def check_html(text: str) -> TagChecker:
    checker = TagChecker()
    checker.feed(text)
    checker.close()
    assert text.startswith("<!DOCTYPE html>")
    assert checker.problems == [] and checker.stack == []
    return checker


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    with RecordStore(tmp_path / "records.sqlite3") as s:
        yield s


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The clinic's time zone is the machine's: Central European time for this test."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def heat_session(store: RecordStore, patient: str = "P-1", samples: int = 10) -> SessionRow:
    temps = [(0.2 * i, {"temperature_c": 32.0 + 0.5 * i, "output_on": True})
             for i in range(samples)]
    sid = record_session(store, patient, "thermal",
                         {"cem43_min": 0.25, "max_pad_temp_c": 42.0, "output_s": 2.0},
                         samples=temps, values={"temperature_c": 40.0}, delivered_s=2.0)
    store.add_event(sid, "note", {"op": "confirm_stop", "text": "<img src=x onerror=y>"},
                    t_s=2.1)
    session = store.get_session(sid)
    assert session is not None
    return session


def test_the_page_holds_what_a_clinician_files(store: RecordStore, berlin: None) -> None:
    s = heat_session(store)
    store.add_note(s.id, actor="carol", body_site="left knee", skin_before="intact",
                   skin_after="mild redness", pain_before=6, pain_after=3,
                   text="tolerated well")
    text = session_report_html(store, s.id, clinic=CLINIC)
    check_html(text)
    assert "Riverside Physiotherapy" in text and "12 Quay Street\nRiverside" in text
    assert "P-1" in text and "carol" in text and "<h1>Heat therapy</h1>" in text
    # Local time (CET/CEST), never the raw UTC stamp on the page itself.
    start = s.started_at
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d CES?T", text)
    assert start not in text.split('<section class="appendix">')[0]
    # The prescription in clinical words and units; the outcome and its reason in words.
    assert "Pad temperature <b>40 °C</b>" in text and "Treatment time <b>60 s</b>" in text
    assert "Completed as planned: planned duration delivered." in text
    assert "The output was ended by the controller." in text
    assert "Output off confirmed by the device" in text
    # The dose, and a sentence on what it means.
    assert "Thermal dose (CEM43)" in text and "0.25 min" in text
    assert "as much as 0.25 minutes held at 43 °C" in text
    assert "Highest pad temperature" in text and "42 °C" in text
    # Notes, then lines for notes and a signature.
    for field in ("left knee", "intact", "mild redness", "6 → 3", "tolerated well"):
        assert field in text, field
    assert text.count('<div class="line"></div>') == 3 and "Signature" in text
    # The timeline and raw record are not on the page: they are behind --detail.
    assert "Events (" not in text and '"request_id"' not in text


def test_detail_adds_an_appendix_page(store: RecordStore) -> None:
    s = heat_session(store)
    rx = dict(s.prescription, limits=HEAT_LIMITS, defaults=[], derived={"cem43_min": 0.6},
              derived_limits={"cem43_min": {"max": 60.0, "max_source": "derived"}})
    s = replace(s, prescription=rx)
    text = render_html(s, session_samples(store, s.id), generated_at="T", clinic=CLINIC,
                       detail=True)
    check_html(text)
    appendix = text.split('<section class="appendix">')[1]
    assert "45 °C <span class=\"tier\">(clinical)</span>" in appendix
    assert "5 °C <span class=\"tier\">(absolute)</span>" in appendix
    assert "60 min <span class=\"tier\">(derived)</span>" in appendix
    assert f"Events ({len(s.events)})" in appendix and "decision" in appendix
    assert s.started_at in appendix and "<pre>" in appendix  # UTC stamps and the raw record
    assert "break-before: page" in text


def test_the_report_is_self_contained(store: RecordStore) -> None:
    s = heat_session(store)
    text = render_html(s, session_samples(store, s.id))
    tags = set(check_html(text).tags)
    assert not tags & {"script", "link", "img", "iframe", "object"}
    assert "<style>" in text and "@media print" in text and "@page { size: A4" in text
    assert not re.search(r"""(src|href)\s*=\s*["']https?:""", text)


def test_without_clinic_settings_the_header_is_empty_not_wrong(store: RecordStore) -> None:
    s = heat_session(store)
    text = render_html(s, session_samples(store, s.id), clinic=ClinicSettings())
    assert 'class="clinic-name"' not in text and "treatment record" in text


def test_every_recorded_text_is_escaped(store: RecordStore) -> None:
    sid = record_session(store, HOSTILE, "thermal", {"cem43_min": 1.0},
                         samples=[(0.5, {"temperature_c": 40.0})])
    store.add_event(sid, "fault", {"reason": "</td><b>bold</b> & more"}, t_s=1.0)
    store.add_note(sid, actor="carol", text="<b>note</b>", body_site="<i>knee</i>")
    hostile_clinic = ClinicSettings(name="<script>x</script>", address="<b>addr</b>")
    text = session_report_html(store, sid, clinic=hostile_clinic, detail=True)
    check_html(text)
    for raw in ("<script", "<b>bold", "<b>note", "<i>knee", "<b>addr"):
        assert raw not in text, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;/td&gt;&lt;b&gt;bold&lt;/b&gt; &amp; more" in text
    assert "&lt;b&gt;note&lt;/b&gt;" in text


def test_the_chart_is_an_svg_the_report_draws(store: RecordStore) -> None:
    s = heat_session(store, samples=10)
    text = render_html(s, session_samples(store, s.id))
    figure = re.search(r'<figure class="chart" data-samples="(\d+)">(.*?)</figure>', text,
                       re.S)
    assert figure is not None and int(figure.group(1)) == 10
    svg = figure.group(2)
    assert svg.count("<svg") == 1 and svg.count("</svg>") == 1
    assert 'xmlns="http://www.w3.org/2000/svg"' in svg and "Matplotlib" not in svg
    assert "Pad temperature (°C)" in svg and "prescribed" in svg
    assert "time since the session began (s)" in svg
    assert "output start commanded" in svg
    points = re.search(r'<polyline points="([^"]+)"', svg)
    assert points is not None and len(points.group(1).split()) == 10
    assert "10 telemetry samples, from 32 to 36.5 °C" in text
    assert NO_TELEMETRY_NOTE not in text


def test_the_same_record_gives_the_same_report(store: RecordStore) -> None:
    s = heat_session(store)
    samples = session_samples(store, s.id)
    first = render_html(s, samples, generated_at="T")
    assert render_html(s, samples, generated_at="T") == first


def test_long_sessions_are_charted_in_minutes_and_thinned(store: RecordStore) -> None:
    samples = [(0.2 * i, {"power_w": 7.5}) for i in range(1500)]   # 5 minutes at 5 Hz
    sid = record_session(store, "P-1", "ultrasound", US_CONT, samples=samples,
                         planned_s=300.0, delivered_s=300.0)
    text = session_report_html(store, sid)
    assert "time since the session began (min)" in text and "Acoustic power (W)" in text
    points = re.search(r'<polyline points="([^"]+)"', text)
    assert points is not None and len(points.group(1).split()) <= 600
    assert "<circle" not in text  # no dot per sample on a dense line


def test_no_telemetry_still_renders(store: RecordStore) -> None:
    sid = record_session(store, "P-1", "tens", None, outcome="rejected", delivered_s=0.0)
    text = session_report_html(store, sid)
    check_html(text)
    assert NO_TELEMETRY_NOTE in text and "<svg" not in text
    assert "No dose was recorded" in text and "Not started: refused before any output" in text


def test_dose_in_clinical_terms_per_modality(store: RecordStore) -> None:
    us = record_session(store, "P-1", "ultrasound", {**US_CONT, "era_cm2": 5.0},
                        delivered_s=300.0)
    text = session_report_html(store, us)
    assert "Acoustic energy" in text and "2250 J" in text and "450 J/cm²" in text
    assert "through an effective radiating area of 5 cm², that is 450 J/cm²" in text
    tens = record_session(store, "P-1", "tens", TENS_25, delivered_s=1200.0)
    text = session_report_html(store, tens)
    assert "Peak charge per phase" in text and "5 µC" in text and "0.2 mA/cm²" in text
    assert "20 min" in text
    cold = record_session(store, "P-1", "thermal", {"min_pad_temp_c": 12.5, "output_s": 600.0},
                          regimes=("cold",), values={"temperature_c": 12.0})
    text = session_report_html(store, cold)
    assert "<h1>Cold therapy</h1>" in text and "CEM43 measures heating" in text


def test_unknown_session(store: RecordStore) -> None:
    with pytest.raises(ReportError, match="no session NOPE"):
        session_report_html(store, "NOPE")


def test_stop_confirmation_from_the_events(store: RecordStore) -> None:
    def confirmation(events: list[tuple[str, dict[str, object]]], reason: str = "") -> object:
        sid = record_session(store, "P-1", "thermal", {}, close=False)
        for kind, detail in events:
            store.add_event(sid, kind, detail, t_s=1.0)
        store.close_session(sid, "fault", reason, None, 1.0, None)
        session = store.get_session(sid)
        assert session is not None
        return stop_confirmation(session)[0]

    assert confirmation([("reply", {"op": "confirm_stop", "output_on": False})]) is True
    assert confirmation([("fault", {"reason": "stop not confirmed by device"})]) is False
    assert confirmation([], reason="pad hot; stop not confirmed by device") is False
    sid = store.open_session(profile="hc-200", port="p", identity={}, operator="o",
                             patient="P-1", prescription={}, planned_s=1.0)
    store.close_session(sid, "rejected", "limits", None, 0.0, None)
    session = store.get_session(sid)
    assert session is not None
    assert stop_confirmation(session) == (None, "not applicable: no output was started")
    assert confirmation([]) is None  # started, then nothing recorded (as after a crash)


def test_device_identity_from_the_record_or_the_identify_reply(store: RecordStore) -> None:
    sid = store.open_session(profile="us-300", port="p", identity={}, operator="o",
                             patient="P-1", prescription={"modality": "ultrasound"},
                             planned_s=1.0)
    store.set_session_identity(sid, {"model": "US-300", "serial": "SN-77", "firmware": "2.1"})
    store.close_session(sid, "rejected", "limits", None, 0.0, None)
    text = session_report_html(store, sid)
    assert "Generic Therapy Devices US-300, serial SN-77, firmware 2.1" in text
    old = store.open_session(profile="us-300", port="p", identity={}, operator="o",
                             patient="P-1", prescription={"modality": "ultrasound"},
                             planned_s=1.0)
    store.add_event(old, "reply", {"op": "identify", "identity": {"serial": "OLD-1"}}, t_s=0.1)
    store.close_session(old, "rejected", "limits", None, 0.0, None)
    assert "serial OLD-1" in session_report_html(store, old)


def test_units_from_record_names() -> None:
    assert unit_for("intensity_w_cm2") == "W/cm²"
    assert unit_for("max_current_density_rms_ma_cm2") == "mA/cm²"
    assert unit_for("temperature_c") == "°C" and unit_for("cem43_min") == "min"
    assert unit_for("pulse_width_us") == "µs" and unit_for("channel") == ""


def ordinary_sessions(store: RecordStore) -> list[str]:
    """A 20-minute session of each modality, polled at 5 Hz, each with a filled-in note."""
    ids = []
    minutes = 20
    n = minutes * 60 * 5
    for modality, dose, key, value in (
            ("thermal", HEAT_44, "temperature_c", 40.0),
            ("ultrasound", {**US_CONT, "era_cm2": 5.0}, "power_w", 7.5),
            ("tens", TENS_25, "amplitude_ma", 25.0)):
        samples = [(0.2 * i, {key: value + (0.3 if i % 7 else 0.0)}) for i in range(n)]
        sid = record_session(store, "P-0042", modality, dose, samples=samples,
                             planned_s=minutes * 60.0, delivered_s=minutes * 60.0,
                             values={"temperature_c": 40.0} if modality == "thermal" else
                             {"amplitude_ma": 25.0, "pulse_width_us": 200, "frequency_hz": 100,
                              "electrode_area_cm2": 25.0} if modality == "tens" else
                             {"frequency_mhz": 1.0, "intensity_w_cm2": 1.5, "duty_pct": 100})
        store.add_note(sid, actor="carol", body_site="right shoulder, posterior",
                       skin_before="intact", skin_after="slight erythema, fading",
                       pain_before=6, pain_after=3,
                       text="Tolerated well. Patient reports warmth and less stiffness; "
                            "continue the plan at the next visit.")
        ids.append(sid)
    return ids


@pytest.mark.slow
@pytest.mark.skipif(find_converter() is None, reason="needs chromium to print the page "
                                                     "(.ci/run installs it)")
def test_an_ordinary_session_prints_on_one_a4_page(store: RecordStore, tmp_path: Path) -> None:
    for sid in ordinary_sessions(store):
        pdf = tmp_path / f"{sid}.pdf"
        html_to_pdf(session_report_html(store, sid, clinic=CLINIC), pdf)
        data = pdf.read_bytes()
        assert data.startswith(b"%PDF")
        assert pdf_page_count(data) == 1, f"session {sid}: the report takes more than a page"
        # A4 is 595 x 842 points.
        assert re.search(rb"/MediaBox\s*\[\s*0 0 59[45](\.\d+)? 84[12](\.\d+)?\s*\]", data)
    detailed = tmp_path / "detail.pdf"
    html_to_pdf(session_report_html(store, sid, clinic=CLINIC, detail=True), detailed)
    assert pdf_page_count(detailed.read_bytes()) >= 2  # the appendix starts a new page


def test_end_to_end_a_real_session_on_a_simulated_device(tmp_path: Path,
                                                         sim_device: SimFactory) -> None:
    device = sim_device("es-4")
    with RecordStore(tmp_path / "records.sqlite3") as store:
        report = run("es-4", device, 1.5, store=store, patient="P-E2E", operator="dana")
        assert report.outcome == "completed", report.reason
        text = session_report_html(store, report.session_id, detail=True)
    check_html(text)
    figure = re.search(r'<figure class="chart" data-samples="(\d+)">', text)
    assert figure is not None and int(figure.group(1)) >= 5  # polled every 0.2 s
    assert "Delivered amplitude (mA)" in text
    for field in (report.session_id, "P-E2E", "dana", "Completed as planned",
                  "TENS (transcutaneous electrical nerve stimulation)",
                  "Generic Therapy Devices ES-4, serial", "Peak charge per phase",
                  "yes: the device reported its output off", "amplitude_ma", "(clinical)"):
        assert field in text, field
