"""The printable HTML session report: fields, escaping, the matplotlib chart, no telemetry."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from controller.records.history import session_samples
from controller.records.html_report import (
    INSTALL_HINT,
    NO_TELEMETRY_NOTE,
    ReportError,
    render_html,
    session_report_html,
    stop_confirmation,
    unit_for,
)
from controller.records.store import RecordStore, SessionRow
from tests.conftest import SimFactory
from tests.session_helpers import run
from tests.test_history import record_session

VOID = {"meta", "br", "img", "hr", "link", "input", "col", "wbr", "source"}
HOSTILE = "<script>alert(1)</script>"
HEAT_LIMITS = {"temperature_c": {"min": 5.0, "min_source": "absolute", "max": 45.0,
                                 "max_source": "clinical"},
               "duration_s": {"min": 1.0, "min_source": "absolute", "max": 1800.0,
                              "max_source": "clinical"}}


class TagChecker(HTMLParser):
    """Every element opened is closed, in order (HTML void elements aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

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


def test_the_report_holds_every_field(store: RecordStore) -> None:
    s = heat_session(store)
    rx = dict(s.prescription, limits=HEAT_LIMITS, defaults=[], derived={"cem43_min": 0.6},
              derived_limits={"cem43_min": {"max": 60.0, "max_source": "derived"}})
    s = replace(s, prescription=rx)
    text = render_html(s, session_samples(store, s.id), generated_at="2025-01-01T00:00:00")
    check_html(text)
    for field in (s.id, "P-1", "hc-200", "/dev/pts/9", "carol", s.started_at, "completed",
                  "planned duration delivered", "controller", "Stop confirmed"):
        assert field in text, field
    # The prescription with the limit that applied to each value and its tier.
    assert "temperature_c" in text and "40 °C" in text
    assert "45 °C <span class=\"tier\">(clinical)</span>" in text
    assert "5 °C <span class=\"tier\">(absolute)</span>" in text
    assert "1800 s <span class=\"tier\">(clinical)</span>" in text
    assert "60 min <span class=\"tier\">(derived)</span>" in text
    # Dose figures and the events timeline.
    assert "thermal dose (CEM43)" in text and "0.25 min" in text
    assert "highest pad temperature" in text and "42 °C" in text
    assert f"Events ({len(s.events)})" in text and "decision" in text
    assert "2025-01-01T00:00:00" in text


def test_the_report_is_self_contained(store: RecordStore) -> None:
    s = heat_session(store)
    text = render_html(s, session_samples(store, s.id))
    tags = set(check_html(text).tags)
    assert not tags & {"script", "link", "img", "iframe", "object"}
    assert "<style>" in text and "@media print" in text and "@page" in text
    assert not re.search(r"""(src|href)\s*=\s*["']https?:""", text)


def test_every_recorded_text_is_escaped(store: RecordStore) -> None:
    sid = record_session(store, HOSTILE, "thermal", {"cem43_min": 1.0},
                         samples=[(0.5, {"temperature_c": 40.0})])
    store.add_event(sid, "fault", {"reason": "</td><b>bold</b> & more"}, t_s=1.0)
    session = store.get_session(sid)
    assert session is not None
    text = session_report_html(store, sid)
    check_html(text)
    assert "<script" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;/td&gt;&lt;b&gt;bold&lt;/b&gt; &amp; more" in text


def test_the_chart_is_an_inline_matplotlib_svg(store: RecordStore) -> None:
    s = heat_session(store, samples=10)
    text = render_html(s, session_samples(store, s.id))
    figure = re.search(r'<figure class="chart" data-samples="(\d+)">(.*?)</figure>', text,
                       re.S)
    assert figure is not None and int(figure.group(1)) == 10
    svg = figure.group(2)
    assert svg.count("<svg") == 1 and svg.count("</svg>") == 1
    assert 'xmlns="http://www.w3.org/2000/svg"' in svg
    assert re.search(r"Matplotlib v\d+\.\d+", svg)  # matplotlib's signature in its metadata
    assert "Pad temperature (°C)" in svg and "prescribed" in svg
    assert "time since the session began (s)" in svg
    assert "10 telemetry samples, from 32 to 36.5 °C" in text
    assert NO_TELEMETRY_NOTE not in text


def test_the_same_record_gives_the_same_report(store: RecordStore) -> None:
    s = heat_session(store)
    samples = session_samples(store, s.id)
    first = render_html(s, samples, generated_at="T")
    assert render_html(s, samples, generated_at="T") == first


def test_long_sessions_are_charted_in_minutes(store: RecordStore) -> None:
    samples = [(60.0 * i, {"power_w": 7.5}) for i in range(6)]
    sid = record_session(store, "P-1", "ultrasound", {"energy_j": 2250.0}, samples=samples,
                         planned_s=300.0, delivered_s=300.0)
    text = session_report_html(store, sid)
    assert "time since the session began (min)" in text and "Acoustic power (W)" in text


def test_no_telemetry_still_renders_without_matplotlib(store: RecordStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    sid = record_session(store, "P-1", "tens", None, outcome="rejected", delivered_s=0.0)
    text = session_report_html(store, sid)
    check_html(text)
    assert NO_TELEMETRY_NOTE in text and "<svg" not in text
    assert "No dose was recorded" in text and "rejected" in text


def test_a_chart_without_matplotlib_says_what_to_install(store: RecordStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    s = heat_session(store)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ReportError) as info:
        render_html(s, session_samples(store, s.id))
    assert str(info.value) == INSTALL_HINT and "install modctl[report]" in INSTALL_HINT


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
    # record_session always records a start: a session without any is "not applicable".
    sid = store.open_session(profile="hc-200", port="p", identity={}, operator="o",
                             patient="P-1", prescription={}, planned_s=1.0)
    store.close_session(sid, "rejected", "limits", None, 0.0, None)
    session = store.get_session(sid)
    assert session is not None
    assert stop_confirmation(session) == (None, "not applicable: no output was started")
    assert confirmation([]) is None  # started, then nothing recorded (as after a crash)


def test_identity_from_the_identify_reply(store: RecordStore) -> None:
    sid = store.open_session(profile="us-300", port="p", identity={}, operator="o",
                             patient="P-1", prescription={"modality": "ultrasound"},
                             planned_s=1.0)
    store.add_event(sid, "reply", {"op": "identify", "identity": "US-300 SIM0001"}, t_s=0.1)
    store.close_session(sid, "rejected", "limits", None, 0.0, None)
    assert "US-300 SIM0001" in session_report_html(store, sid)


def test_units_from_record_names() -> None:
    assert unit_for("intensity_w_cm2") == "W/cm²"
    assert unit_for("max_current_density_rms_ma_cm2") == "mA/cm²"
    assert unit_for("temperature_c") == "°C" and unit_for("cem43_min") == "min"
    assert unit_for("pulse_width_us") == "µs" and unit_for("channel") == ""


def test_end_to_end_a_real_session_on_a_simulated_device(tmp_path: Path,
                                                         sim_device: SimFactory) -> None:
    device = sim_device("es-4")
    with RecordStore(tmp_path / "records.sqlite3") as store:
        report = run("es-4", device, 1.5, store=store, patient="P-E2E", operator="dana")
        assert report.outcome == "completed", report.reason
        text = session_report_html(store, report.session_id)
    check_html(text)
    figure = re.search(r'<figure class="chart" data-samples="(\d+)">', text)
    assert figure is not None and int(figure.group(1)) >= 5  # polled every 0.2 s
    assert "Delivered amplitude (mA)" in text and "Matplotlib v" in text
    for field in (report.session_id, "P-E2E", "es-4", "dana", "completed",
                  "yes: the device reported its output off", "stimulation time",
                  "amplitude_ma", "(clinical)"):
        assert field in text, field
