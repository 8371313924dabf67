"""A printable, self-contained HTML report of one recorded session.

One file: inline CSS (with print rules), no scripts, no external resources. The chart of the
modality's main measured quantity over time is drawn by matplotlib and embedded as inline SVG
(vector, so it prints sharply). matplotlib is imported only when a chart is drawn: the rest of
modctl works without it, and a session without telemetry needs no chart. No display is used:
the figure is built with matplotlib's object API on an Agg canvas, never through pyplot.

Every text from the records (patient id, reason, event details...) is HTML-escaped.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controller import __version__
from controller.records.history import (
    Sample,
    format_number,
    number,
    session_modality,
    session_samples,
)
from controller.records.store import EventRow, RecordStore, SessionRow

INSTALL_HINT = ("the session chart needs matplotlib, which is not installed: "
                "install modctl[report] (pip install 'modctl[report]')")
NO_TELEMETRY_NOTE = "No telemetry was recorded for this session, so there is no chart."


@dataclass(frozen=True)
class Quantity:
    """The measured quantity charted for a modality."""

    telemetry: str
    label: str
    unit: str
    prescribed: str | None = None
    """The prescription parameter drawn as a reference line, when it is the same quantity."""


# The main measured quantity per modality (as the live display shows it).
CHART_QUANTITY: dict[str, Quantity] = {
    "thermal": Quantity("temperature_c", "Pad temperature", "°C", prescribed="temperature_c"),
    "ultrasound": Quantity("power_w", "Acoustic power", "W"),
    "tens": Quantity("amplitude_ma", "Delivered amplitude", "mA", prescribed="amplitude_ma"),
}
CHART_SIZE_IN = (7.0, 3.0)          # fits an A4 page inside its margins
CHART_MINUTES_AFTER_S = 180.0       # longer sessions are charted in minutes
CHART_MARKER_SIZE = 3.0
LEGEND_COLUMNS = 4
START_OP = "start"
STOP_OPS = ("stop", "emergency_stop")
CONFIRM_OP = "confirm_stop"
NOT_CONFIRMED = "stop not confirmed by device"

# Units from the suffix of a record name (the names are the modality contract's).
UNIT_SUFFIXES = sorted({
    "_ma_cm2": "mA/cm²", "_w_cm2": "W/cm²", "_cm2": "cm²", "_mhz": "MHz", "_hz": "Hz",
    "_pct": "%", "_us": "µs", "_uc": "µC", "_ma": "mA", "_min": "min", "_ohm": "Ω",
    "_c": "°C", "_j": "J", "_w": "W", "_s": "s",
}.items(), key=lambda item: -len(item[0]))
DOSE_LABELS = {
    "cem43_min": "thermal dose (CEM43)",
    "output_s": "output time",
    "max_pad_temp_c": "highest pad temperature",
    "min_pad_temp_c": "lowest pad temperature",
    "energy_j": "delivered energy",
    "nominal_energy_j": "nominal energy (intensity × ERA × duty × time)",
    "treatment_s": "treatment time (coupled)",
    "hold_s": "time held without contact",
    "era_cm2": "effective radiating area (ERA)",
    "max_applicator_temp_c": "highest applicator temperature",
    "stimulation_s": "stimulation time",
    "max_amplitude_ma": "peak amplitude",
    "max_charge_per_phase_uc": "peak charge per phase",
    "max_current_density_rms_ma_cm2": "peak r.m.s. current density",
}

CSS = """
@page { size: A4; margin: 14mm; }
* { box-sizing: border-box; }
body { font: 10pt/1.4 "Helvetica Neue", Arial, sans-serif; color: #111; margin: 0 auto;
       max-width: 190mm; padding: 8mm 0; }
h1 { font-size: 16pt; margin: 0 0 2pt; }
h2 { font-size: 12pt; margin: 14pt 0 4pt; border-bottom: 1px solid #999; }
p.sub { margin: 0 0 8pt; color: #444; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #bbb; padding: 2pt 5pt; text-align: left; vertical-align: top; }
th { background: #eee; }
table.meta th { width: 28%; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.detail { font-family: Menlo, Consolas, monospace; font-size: 8pt; word-break: break-all; }
.tier { color: #555; font-size: 8.5pt; }
.bad { color: #a00; font-weight: bold; }
.good { color: #060; }
tr.fault td { background: #fdecec; }
figure { margin: 6pt 0; }
figure svg { width: 100%; height: auto; }
figcaption, .note { color: #444; font-size: 9pt; }
footer { margin-top: 14pt; color: #666; font-size: 8pt; }
thead { display: table-header-group; }
tr, figure { break-inside: avoid; page-break-inside: avoid; }
@media print { body { padding: 0; max-width: none; } a { color: inherit; } }
""".strip()


class ReportError(Exception):
    """The report cannot be made; the message says why in plain words."""


@dataclass(frozen=True)
class ChartSeries:
    times_s: tuple[float, ...]
    values: tuple[float, ...]
    quantity: Quantity
    reference: float | None = None
    marks: tuple[tuple[float, str], ...] = field(default_factory=tuple)


# -- entry points -------------------------------------------------------------------------------

def session_report_html(store: RecordStore, session_id: str,
                        generated_at: str | None = None) -> str:
    """The HTML report of a recorded session (a unique id prefix is enough)."""
    session = store.get_session(session_id)
    if session is None:
        raise ReportError(f"no session {session_id} in {store.path}")
    return render_html(session, session_samples(store, session.id), generated_at)


def render_html(session: SessionRow, samples: Sequence[Sample],
                generated_at: str | None = None) -> str:
    """The report as one HTML document. Raises ReportError when a chart is needed and
    matplotlib is missing."""
    modality = session_modality(session.prescription, session.dose)
    series = chart_series(session, samples)
    chart = _chart_section(series)
    when = generated_at or datetime.now(UTC).isoformat(timespec="seconds")
    title = f"Session report {session.id}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{_e(title)}</title>", f"<style>\n{CSS}\n</style>", "</head>", "<body>",
        "<h1>Treatment session report</h1>",
        f'<p class="sub">{_e(modality)} · {_e(session.profile)} · session {_e(session.id)}</p>',
        "<h2>Session</h2>", _meta_table(session),
        "<h2>Prescription as applied</h2>", _prescription_table(session),
        "<h2>Dose</h2>", _dose_table(session.dose),
        "<h2>Chart</h2>", chart,
        f"<h2>Events ({len(session.events)})</h2>", _events_table(session.events),
        f"<footer>Generated by modctl {_e(__version__)} at {_e(when)}. Times are UTC; "
        "event times are seconds since the session began.</footer>",
        "</body>", "</html>", ""]
    return "\n".join(parts)


# -- the chart ------------------------------------------------------------------------------------

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


def chart_svg(series: ChartSeries) -> str:
    """The chart as an inline `<svg>` element drawn by matplotlib."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ReportError(INSTALL_HINT) from exc
    minutes = series.times_s[-1] > CHART_MINUTES_AFTER_S
    scale = 60.0 if minutes else 1.0
    q = series.quantity
    fig = Figure(figsize=CHART_SIZE_IN, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([t / scale for t in series.times_s], series.values, marker="o",
            markersize=CHART_MARKER_SIZE, linewidth=1.5, label="measured")
    if series.reference is not None:
        ax.axhline(series.reference, color="0.4", linestyle="--", linewidth=1,
                   label="prescribed")
    for (t, label), style in zip(series.marks, (":", "-."), strict=False):
        ax.axvline(t / scale, color="0.55", linestyle=style, linewidth=1, label=label)
    ax.set_xlabel(f"time since the session began ({'min' if minutes else 's'})")
    ax.set_ylabel(f"{q.label} ({q.unit})")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", ncols=LEGEND_COLUMNS, fontsize="small", frameon=False)
    out = io.StringIO()
    # Text stays text (smaller, selectable); fixed ids and no date: the same data, the same SVG.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "modctl"}):
        fig.savefig(out, format="svg", metadata={"Date": None})
    text = out.getvalue()
    return text[text.index("<svg"):].strip()


def _chart_section(series: ChartSeries | None) -> str:
    if series is None:
        return f'<p class="note no-telemetry">{_e(NO_TELEMETRY_NOTE)}</p>'
    q = series.quantity
    caption = (f"{q.label} ({q.unit}) over time: {len(series.values)} telemetry samples, "
               f"from {min(series.values):g} to {max(series.values):g} {q.unit}.")
    return (f'<figure class="chart" data-samples="{len(series.values)}">\n'
            f"{chart_svg(series)}\n<figcaption>{_e(caption)}</figcaption>\n</figure>")


# -- the tables -----------------------------------------------------------------------------------

def stop_confirmation(session: SessionRow) -> tuple[bool | None, str]:
    """Whether the device confirmed its output off after the stop, from the events."""
    events = session.events
    if any(e.kind == "reply" and e.detail.get("op") == CONFIRM_OP for e in events):
        return True, "yes: the device reported its output off"
    if NOT_CONFIRMED in (session.reason or "") or any(
            e.kind == "fault" and e.detail.get("reason") == NOT_CONFIRMED for e in events):
        return False, f"NO: {NOT_CONFIRMED}"
    if not any(e.kind == "command" and e.detail.get("op") == START_OP for e in events):
        return None, "not applicable: no output was started"
    return None, "unknown: no confirmation was recorded"


def _device_identity(session: SessionRow) -> str:
    if session.identity:
        return _compact(session.identity)
    found = next((e.detail.get("identity") for e in session.events
                  if e.kind == "reply" and e.detail.get("op") == "identify"), None)
    if found is None:
        return "-"
    return found if isinstance(found, str) else _compact(found)


def _meta_table(s: SessionRow) -> str:
    confirmed, confirmed_text = stop_confirmation(s)
    bad_outcome = s.outcome not in ("completed", None)
    rows: list[tuple[str, str, str]] = [
        ("Session id", s.id, ""), ("Patient id", s.patient or "-", ""),
        ("Profile", s.profile, ""), ("Device port", s.port, ""),
        ("Device identity", _device_identity(s), "detail"),
        ("Operator", s.operator or "-", ""), ("Started", s.started_at, ""),
        ("Ended", s.ended_at or "-", ""), ("Record status", s.status, ""),
        ("Outcome", s.outcome or "-", "bad" if bad_outcome else "good"),
        ("Reason", s.reason or "-", ""), ("Stop source", s.stop_source or "-", ""),
        ("Stop confirmed", confirmed_text, "bad" if confirmed is False else ""),
        ("Planned", _with_unit(s.planned_s, "s"), ""),
        ("Delivered", "-" if s.delivered_s is None else _with_unit(s.delivered_s, "s"), ""),
    ]
    body = "\n".join(f'<tr><th scope="row">{_e(name)}</th>'
                     f'<td{_cls(css)}>{_e(value)}</td></tr>' for name, value, css in rows)
    return f'<table class="meta">\n{body}\n</table>'


def _prescription_table(s: SessionRow) -> str:
    rx = s.prescription
    values: Mapping[str, Any] = rx.get("values") or {}
    limits: Mapping[str, Any] = rx.get("limits") or {}
    derived: Mapping[str, Any] = rx.get("derived") or {}
    derived_limits: Mapping[str, Any] = rx.get("derived_limits") or {}
    defaults = set(rx.get("defaults") or ())
    rows = [_rx_row(name, value, limits.get(name) or {},
                    "default" if name in defaults else "") for name, value in values.items()]
    rows.append(_rx_row("duration_s", rx.get("duration_s", s.planned_s),
                        limits.get("duration_s") or {}, ""))
    rows += [_rx_row(name, value, derived_limits.get(name) or {}, "derived")
             for name, value in derived.items()]
    head = ("<thead><tr><th>Parameter</th><th>Value</th><th>Lowest allowed (tier)</th>"
            "<th>Highest allowed (tier)</th><th>Note</th></tr></thead>")
    table = f"<table>\n{head}\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"
    pending = [str(p) for p in rx.get("pending") or ()]
    if pending:
        table += (f'\n<p class="note">Limits on {_e(", ".join(pending))} were checked once '
                  "the device reported its facts (such as the ultrasound ERA); this record "
                  "holds the prescription from before, without them.</p>")
    regimes = [str(r) for r in rx.get("regimes") or ()]
    if regimes:
        table += f'\n<p class="note">Active regime: {_e(", ".join(regimes))}.</p>'
    return table


def _rx_row(name: str, value: Any, limit: Mapping[str, Any], note: str) -> str:
    unit = unit_for(name)
    cells = [f"<td>{_e(name)}</td>", f'<td class="num">{_e(_with_unit(value, unit))}</td>']
    if "allowed" in limit:
        allowed = list(limit["allowed"])
        choices = ", ".join(format_number(v) for v in allowed)
        if unit and all(number(v) is not None for v in allowed):
            choices += f" {unit}"
        cells.append(f'<td colspan="2">one of {_e(choices)}</td>')
    else:
        cells += [_limit_cell(limit, "min", unit), _limit_cell(limit, "max", unit)]
    cells.append(f"<td>{_e(note)}</td>")
    return "<tr>" + "".join(cells) + "</tr>"


def _limit_cell(limit: Mapping[str, Any], side: str, unit: str) -> str:
    if side not in limit:
        return "<td>-</td>"
    tier = limit.get(f"{side}_source") or "-"
    return (f'<td class="num">{_e(_with_unit(limit[side], unit))} '
            f'<span class="tier">({_e(tier)})</span></td>')


def _dose_table(dose: Mapping[str, Any] | None) -> str:
    if not dose:
        return '<p class="note">No dose was recorded (no output was delivered).</p>'
    rows = "\n".join(
        f"<tr><td>{_e(DOSE_LABELS.get(key, key))}</td><td>{_e(key)}</td>"
        f'<td class="num">{_e(_with_unit(value, unit_for(key)))}</td></tr>'
        for key, value in dose.items())
    head = "<thead><tr><th>Figure</th><th>Record name</th><th>Value</th></tr></thead>"
    return f"<table>\n{head}\n<tbody>\n{rows}\n</tbody>\n</table>"


def _events_table(events: Sequence[EventRow]) -> str:
    if not events:
        return '<p class="note">No events were recorded.</p>'
    head = ("<thead><tr><th>#</th><th>t (s)</th><th>At (UTC)</th><th>Kind</th>"
            "<th>Detail</th></tr></thead>")
    rows = "\n".join(
        f'<tr{_cls("fault" if e.kind == "fault" else "")}><td class="num">{e.seq}</td>'
        f'<td class="num">{e.t_s:.3f}</td><td>{_e(e.at)}</td><td>{_e(e.kind)}</td>'
        f'<td class="detail">{_e(_compact(e.detail))}</td></tr>' for e in events)
    return f"<table>\n{head}\n<tbody>\n{rows}\n</tbody>\n</table>"


# -- formatting -----------------------------------------------------------------------------------

def unit_for(name: str) -> str:
    """The unit a record name carries in its suffix (`intensity_w_cm2` → W/cm²), or ''."""
    return next((unit for suffix, unit in UNIT_SUFFIXES if name.endswith(suffix)), "")


def _with_unit(value: Any, unit: str) -> str:
    text = format_number(value)
    return f"{text} {unit}" if unit and number(value) is not None else text


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def _cls(css: str) -> str:
    return f' class="{css}"' if css else ""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
