"""The appendix of a session report (`records report ID --detail`): for whoever checks the
record rather than files it.

On its own page: the session's technical facts (port, profile file and hash, stop source,
device-reported output time), every prescribed value with the lowest and highest value allowed
and the tier that set each limit, the whole event timeline (faults highlighted) and the raw
session record as JSON. Every text is HTML-escaped.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from controller.records.clinical import duration_text, stop_confirmation, unit_for, with_unit
from controller.records.history import format_number, number
from controller.records.sessions import EventRow, SessionRow


def appendix(session: SessionRow) -> str:
    """The appendix section (it starts a new printed page)."""
    return "\n".join([
        '<section class="appendix">',
        "<h2>Appendix: record details</h2>", _technical(session),
        "<h2>Prescription as applied, with its limits</h2>", _limits_table(session),
        f"<h2>Events ({len(session.events)})</h2>", _events_table(session.events),
        "<h2>Raw record</h2>",
        f"<pre>{_e(json.dumps(_raw(session), indent=1, ensure_ascii=False, default=str))}</pre>",
        "</section>"])


def _raw(session: SessionRow) -> dict[str, Any]:
    data = session.to_json()
    data.pop("events", None)  # listed above
    return data


def _technical(s: SessionRow) -> str:
    _, confirmed = stop_confirmation(s)
    rows = [("Session id", s.id), ("Profile", s.profile), ("Device port", s.port),
            ("Profile file", f"{s.profile_path} (sha256 {s.profile_sha256})"
             if s.profile_path else "-"),
            ("Started (UTC)", s.started_at), ("Ended (UTC)", s.ended_at or "-"),
            ("Record status", s.status), ("Outcome", s.outcome or "-"),
            ("Stop source", s.stop_source or "-"), ("Stop confirmed", confirmed),
            ("Planned", duration_text(s.planned_s)),
            ("Delivered (host)", duration_text(s.delivered_s)),
            ("Output time (device)", duration_text(s.device_elapsed_s))]
    body = "\n".join(f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in rows)
    return f'<table class="grid meta">\n{body}\n</table>'


def _limits_table(s: SessionRow) -> str:
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
    table = (f'<table class="grid">\n{head}\n<tbody>\n' + "\n".join(rows)
             + "\n</tbody>\n</table>")
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
    cells = [f"<td>{_e(name)}</td>", f'<td class="num">{_e(with_unit(value, unit))}</td>']
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
    return (f'<td class="num">{_e(with_unit(limit[side], unit))} '
            f'<span class="tier">({_e(tier)})</span></td>')


def _events_table(events: Sequence[EventRow]) -> str:
    if not events:
        return '<p class="note">No events were recorded.</p>'
    head = ("<thead><tr><th>#</th><th>t (s)</th><th>At (UTC)</th><th>Kind</th>"
            "<th>Detail</th></tr></thead>")
    rows = "\n".join(
        f'<tr class="{_e(e.kind)}"><td class="num">{e.seq}</td>'
        f'<td class="num">{e.t_s:.3f}</td><td>{_e(e.at)}</td><td>{_e(e.kind)}</td>'
        f'<td class="detail">{_e(_compact(e.detail))}</td></tr>' for e in events)
    return f'<table class="grid events">\n{head}\n<tbody>\n{rows}\n</tbody>\n</table>'


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
