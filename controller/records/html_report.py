"""A printable, self-contained HTML report of one recorded session: the page a clinician files.

One A4 page for an ordinary session: the clinic's name and address (clinic settings of the
roles file), the patient id, the date and time in the clinic's time zone (records stay UTC),
the device (manufacturer, model, serial number, firmware), the prescription in clinical words
and units, the outcome and its reason in words, the dose with a sentence on what it means, the
chart (inline SVG drawn by `report_chart`), the clinical notes, and lines for notes and a
signature. `detail=True` adds an appendix page (`report_detail`): the limits each value was
checked against, the whole event timeline and the raw record.

One file: inline CSS with print rules, no scripts, no external resources. Every text from the
records (patient id, reason, notes, event details...) is HTML-escaped.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from datetime import datetime

from controller import __version__
from controller.clinic.roles import ClinicSettings, RolesError, load_roles
from controller.records import report_detail
from controller.records.clinical import (
    delivered_text,
    device_info,
    local_time,
    local_zone,
    outcome_sentence,
    prescription_lines,
    stop_confirmation,
    therapy_name,
    unit_for,
)
from controller.records.dose_text import dose_lines, dose_meaning
from controller.records.history import Sample, number, session_modality, session_samples
from controller.records.notes_table import NoteRow
from controller.records.report_chart import ChartSeries, Quantity, chart_svg
from controller.records.store import EventRow, RecordStore, SessionRow

__all__ = ["CHART_QUANTITY", "NO_TELEMETRY_NOTE", "ReportError", "chart_series",
           "render_html", "session_report_html", "stop_confirmation", "unit_for"]

_log = logging.getLogger(__name__)

NO_TELEMETRY_NOTE = "No telemetry was recorded for this session, so there is no chart."
# The main measured quantity per modality (as the live display shows it).
CHART_QUANTITY: dict[str, Quantity] = {
    "thermal": Quantity("temperature_c", "Pad temperature", "°C", prescribed="temperature_c"),
    "ultrasound": Quantity("power_w", "Acoustic power", "W"),
    "tens": Quantity("amplitude_ma", "Delivered amplitude", "mA", prescribed="amplitude_ma"),
}
START_OP = "start"
STOP_OPS = ("stop", "emergency_stop")
# Blank lines under "Notes" for the clinician's pen.
NOTE_LINES = 3
GOOD_OUTCOMES = ("completed",)

CSS = """
@page { size: A4; margin: 12mm 14mm; }
* { box-sizing: border-box; }
body { font: 9.5pt/1.35 "Helvetica Neue", Arial, sans-serif; color: #111; margin: 0 auto;
       max-width: 182mm; padding: 6mm 0; }
header.clinic { display: flex; justify-content: space-between; align-items: flex-start;
                border-bottom: 2px solid #333; padding-bottom: 3pt; margin-bottom: 6pt; }
.clinic-name { font-size: 13pt; font-weight: bold; }
.clinic-address { white-space: pre-line; color: #333; font-size: 8.5pt; }
.doc-kind { text-align: right; color: #333; font-size: 8.5pt; }
h1 { font-size: 14pt; margin: 0 0 4pt; }
h2 { font-size: 10.5pt; margin: 8pt 0 3pt; border-bottom: 1px solid #999; }
p { margin: 2pt 0; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 1.5pt 4pt; text-align: left; vertical-align: top; }
table.facts th { width: 15%; color: #333; font-weight: normal; }
table.facts td { width: 35%; font-weight: bold; }
table.grid th, table.grid td { border: 1px solid #bbb; }
table.grid th { background: #eee; }
table.dose th { width: 30%; }
ul.rx { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 2pt 14pt; }
ul.rx li b { font-weight: bold; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.outcome { font-weight: bold; }
.bad { color: #a00; font-weight: bold; }
.good { color: #060; }
.meaning, .note { color: #333; font-size: 9pt; }
figure { margin: 3pt 0; }
figure svg { width: 100%; height: auto; max-height: 58mm; }
figcaption { color: #444; font-size: 8.5pt; }
.line { border-bottom: 1px solid #777; height: 15pt; }
.sign { display: flex; gap: 14pt; margin-top: 10pt; }
.sign div { flex: 1; border-top: 1px solid #333; padding-top: 2pt; font-size: 8.5pt;
            color: #333; }
footer { margin-top: 8pt; color: #666; font-size: 7.5pt; }
section.appendix { break-before: page; page-break-before: always; }
td.detail, pre { font-family: Menlo, Consolas, monospace; font-size: 7.5pt;
                 word-break: break-all; white-space: pre-wrap; }
.tier { color: #555; font-size: 8pt; }
tr.fault td { background: #fdecec; }
thead { display: table-header-group; }
tr, figure, .sign { break-inside: avoid; page-break-inside: avoid; }
@media print { body { padding: 0; max-width: none; } }
""".strip()


class ReportError(Exception):
    """The report cannot be made; the message says why in plain words."""


# -- entry points -------------------------------------------------------------------------------

def session_report_html(store: RecordStore, session_id: str, generated_at: str | None = None,
                        *, clinic: ClinicSettings | None = None, detail: bool = False) -> str:
    """The HTML report of a recorded session (a unique id prefix is enough). `clinic`: the
    clinic settings to print (default: the roles file's, or none when it cannot be read)."""
    session = store.get_session(session_id)
    if session is None:
        raise ReportError(f"no session {session_id} in {store.path}")
    return render_html(session, session_samples(store, session.id), generated_at,
                       clinic=clinic or clinic_settings(), notes=store.notes(session.id),
                       detail=detail)


def clinic_settings() -> ClinicSettings:
    """The roles file's clinic settings; the defaults (no name, no address) when it cannot be
    read: a report is still made, and the log says why the header is empty."""
    try:
        return load_roles().clinic
    except RolesError as exc:
        _log.warning("session report without the clinic's name and address: %s", exc)
        return ClinicSettings()


def render_html(session: SessionRow, samples: Sequence[Sample], generated_at: str | None = None,
                *, clinic: ClinicSettings | None = None, notes: Sequence[NoteRow] = (),
                detail: bool = False) -> str:
    """The report as one HTML document."""
    clinic = clinic or ClinicSettings()
    when = generated_at or local_time(datetime.now().astimezone().isoformat())
    therapy = therapy_name(session.prescription, session.dose)
    title = f"Treatment record {session.patient or ''} {local_time(session.started_at)}".strip()
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{_e(title)}</title>", f"<style>\n{CSS}\n</style>", "</head>", "<body>",
        _clinic_header(clinic),
        f"<h1>{_e(therapy)}</h1>",
        _facts(session),
        "<h2>Prescription</h2>", _prescription(session),
        "<h2>Outcome</h2>", _outcome(session),
        "<h2>Dose delivered</h2>", _dose(session),
        "<h2>Chart</h2>", _chart_section(chart_series(session, samples)),
        "<h2>Clinical notes</h2>", _notes(notes),
        _signature(),
        f"<footer>Session {_e(session.id)} ({_e(session.status)}). Times in "
        f"{_e(local_zone())}; the records keep UTC. Generated by modctl {_e(__version__)} "
        f"at {_e(when)}. "
        + ("Appendix: limits, event timeline, raw record." if detail else
           "Limits, event timeline and raw record: records report --detail.") + "</footer>",
    ]
    if detail:
        parts.append(report_detail.appendix(session))
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


# -- the chart ----------------------------------------------------------------------------------

def chart_series(session: SessionRow, samples: Sequence[Sample]) -> ChartSeries | None:
    """The main measured quantity over time, or None when no sample holds it."""
    quantity = CHART_QUANTITY.get(session_modality(session.prescription, session.dose))
    if quantity is None:
        return None
    points = [(s.t_s, value) for s in samples
              if (value := number(s.data.get(quantity.telemetry))) is not None]
    if not points:
        return None
    values = session.prescription.get("values") or {}
    reference = number(values.get(quantity.prescribed)) if quantity.prescribed else None
    return ChartSeries(tuple(t for t, _ in points), tuple(v for _, v in points), quantity,
                       reference, _marks(session.events))


def _marks(events: Sequence[EventRow]) -> tuple[tuple[float, str], ...]:
    commands = [e for e in events if e.kind == "command"]
    start = next((e.t_s for e in commands if e.detail.get("op") == START_OP), None)
    stop = next((e.t_s for e in commands if e.detail.get("op") in STOP_OPS), None)
    marks = [] if start is None else [(start, "output start commanded")]
    return tuple(marks if stop is None else [*marks, (stop, "stop commanded")])


def _chart_section(series: ChartSeries | None) -> str:
    if series is None:
        return f'<p class="note no-telemetry">{_e(NO_TELEMETRY_NOTE)}</p>'
    q = series.quantity
    caption = (f"{q.label} ({q.unit}) over time: {len(series.values)} telemetry samples, "
               f"from {min(series.values):g} to {max(series.values):g} {q.unit}.")
    return (f'<figure class="chart" data-samples="{len(series.values)}">\n'
            f"{chart_svg(series)}\n<figcaption>{_e(caption)}</figcaption>\n</figure>")


# -- the sections -------------------------------------------------------------------------------

def _clinic_header(clinic: ClinicSettings) -> str:
    name = f'<div class="clinic-name">{_e(clinic.name)}</div>' if clinic.name else ""
    address = (f'<div class="clinic-address">{_e(clinic.address)}</div>'
               if clinic.address else "")
    return (f'<header class="clinic"><div>{name}{address}</div>'
            '<div class="doc-kind">Physiotherapy treatment record</div></header>')


def _facts(s: SessionRow) -> str:
    device = device_info(s)
    ended = local_time(s.ended_at) if s.ended_at else "not ended"
    rows = [
        ("Patient id", s.patient or "not recorded", "Date and time",
         f"{local_time(s.started_at)} to {ended.split(' ', 1)[-1] if _same_day(s) else ended}"),
        ("Operator", s.operator or "-", "Device", device.text()),
    ]
    body = "\n".join(
        f'<tr><th scope="row">{_e(a)}</th><td>{_e(b)}</td>'
        f'<th scope="row">{_e(c)}</th><td>{_e(d)}</td></tr>' for a, b, c, d in rows)
    return f'<table class="facts">\n{body}\n</table>'


def _same_day(s: SessionRow) -> bool:
    return bool(s.ended_at) and local_time(s.started_at)[:10] == local_time(s.ended_at)[:10]


def _prescription(s: SessionRow) -> str:
    items = "".join(f"<li>{_e(label)} <b>{_e(value)}</b></li>"
                    for label, value in prescription_lines(s.prescription, s.planned_s))
    return f'<ul class="rx">{items}</ul>'


def _outcome(s: SessionRow) -> str:
    css = "good" if s.outcome in GOOD_OUTCOMES else "bad"
    confirmed, confirmed_text = stop_confirmation(s)
    flag = ' class="bad"' if confirmed is False else ""
    stop = f" Output off confirmed by the device: <span{flag}>{_e(confirmed_text)}</span>."

    return (f'<p class="outcome {css}">{_e(outcome_sentence(s))}</p>'
            f"<p>Delivered {_e(delivered_text(s))}.{stop}</p>")


def _dose(s: SessionRow) -> str:
    lines = dose_lines(s.prescription, s.dose, others=False)
    if not lines:
        return '<p class="note">No dose was recorded (no output was delivered).</p>'
    cells = [f'<th scope="row">{_e(d.label)}</th><td class="num">{_e(d.text())}</td>'
             for d in lines]
    if len(cells) % 2:
        cells.append("<th></th><td></td>")
    rows = "".join(f"<tr>{cells[i]}{cells[i + 1]}</tr>" for i in range(0, len(cells), 2))
    meaning = dose_meaning(s.prescription, s.dose)
    return (f'<table class="grid dose">{rows}</table>'
            + (f'<p class="meaning">{_e(meaning)}</p>' if meaning else ""))


def _notes(notes: Sequence[NoteRow]) -> str:
    if not notes:
        blank = "&nbsp;" * 24
        return ('<table class="grid notes-form"><tr><th>Body site</th><th>Skin before</th>'
                "<th>Skin after</th><th>Pain before (0-10)</th><th>Pain after (0-10)</th></tr>"
                f"<tr>{f'<td>{blank}</td>' * 5}</tr></table>")
    head = ("<thead><tr><th>Recorded</th><th>Body site</th><th>Skin before / after</th>"
            "<th>Pain before → after (0-10)</th><th>Note</th></tr></thead>")
    rows = "\n".join(
        f"<tr><td>{_e(local_time(n.recorded_at))}<br>{_e(n.actor)}</td>"
        f"<td>{_e(n.body_site or '-')}</td>"
        f"<td>{_e(n.skin_before or '-')} / {_e(n.skin_after or '-')}</td>"
        f"<td>{_e(_pain(n.pain_before))} → {_e(_pain(n.pain_after))}</td>"
        f'<td class="note-text">{_e(n.text or "-")}</td></tr>' for n in notes)
    return f'<table class="grid notes">\n{head}\n<tbody>\n{rows}\n</tbody>\n</table>'


def _pain(score: int | None) -> str:
    return "-" if score is None else str(score)


def _signature() -> str:
    lines = '<div class="line"></div>' * NOTE_LINES
    return (f'<h2>Notes</h2>{lines}<div class="sign"><div>Clinician (name)</div>'
            "<div>Signature</div><div>Date</div></div>")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
