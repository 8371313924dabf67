"""Patient history: one patient's sessions in time order, their dose figures and totals.

Patients are known by a pseudonymous id only. The history is built from session records
(`RecordStore.list_sessions`, or the sessions of a `RecordStore.export`), so it reads exactly
what the records hold: the delivered time and the dose figures the session closed with.

Totals are per modality: times and energies add up; peak figures (TENS amplitude and charge per
phase) take the highest value. A CEM43 sum is the cumulative thermal dose over the listed visits;
it does not model recovery between visits.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.records.csv_safe import LINE_END, safe_row
from controller.records.export import export_sessions
from controller.records.store import RecordStore, SampleRow, SessionRow

# list_sessions has no "all": the largest SQL integer is its way of saying so.
UNKNOWN_MODALITY = "unknown"
MODALITY_ORDER = ("thermal", "ultrasound", "tens")

Total = Literal["sum", "max"]


@dataclass(frozen=True)
class DoseFigure:
    """One dose figure of a modality, as named in a session's `dose` record."""

    key: str
    label: str
    unit: str
    total: Total
    """How sessions combine: `sum` (times, energy, thermal dose) or `max` (peaks)."""


DOSE_FIGURES: dict[str, tuple[DoseFigure, ...]] = {
    "thermal": (DoseFigure("cem43_min", "CEM43", "min", "sum"),),
    "ultrasound": (DoseFigure("energy_j", "energy", "J", "sum"),
                   DoseFigure("treatment_s", "treatment", "s", "sum")),
    "tens": (DoseFigure("stimulation_s", "stimulation", "s", "sum"),
             DoseFigure("max_amplitude_ma", "max amplitude", "mA", "max"),
             DoseFigure("max_charge_per_phase_uc", "max charge/phase", "µC", "max")),
}
# Older records may lack `prescription.modality`: each modality's first figure identifies it.
_MODALITY_BY_FIGURE = {figures[0].key: name for name, figures in DOSE_FIGURES.items()}
CSV_FIGURE_COLUMNS = tuple(f.key for figures in DOSE_FIGURES.values() for f in figures)
CSV_COLUMNS = ("row", "patient", "modality", "session_id", "started_at", "ended_at", "profile",
               "operator", "device_serial", "status", "outcome", "sessions", "planned_s",
               "delivered_s", *CSV_FIGURE_COLUMNS)
# What a session record keeps of the device's identity (read from it at identification).
DEVICE_FIELDS = ("model", "serial", "firmware")
ROW_SESSION = "session"
ROW_TOTAL = "total"
LARGE_NUMBER = 1000.0
SIGNIFICANT_DIGITS = 4


@dataclass(frozen=True)
class HistoryEntry:
    """One session of the patient, with the modality's dose figures."""

    session_id: str
    started_at: str
    ended_at: str | None
    profile: str
    modality: str
    regimes: tuple[str, ...]
    operator: str
    status: str
    outcome: str | None
    reason: str | None
    planned_s: float
    delivered_s: float | None
    """None when it is unknown (a session interrupted before anything was recorded)."""
    figures: dict[str, float]
    """The modality's `DOSE_FIGURES` present in the record, by key."""
    patient: str | None = None
    device: dict[str, str] = field(default_factory=dict)
    """What the device reported at identification: model, serial, firmware ('' unknown)."""

    @property
    def device_serial(self) -> str:
        return self.device.get("serial", "")

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "patient": self.patient,
                "started_at": self.started_at, "ended_at": self.ended_at,
                "profile": self.profile, "modality": self.modality,
                "regimes": list(self.regimes), "operator": self.operator,
                "device_serial": self.device_serial, "device": dict(self.device),
                "status": self.status, "outcome": self.outcome, "reason": self.reason,
                "planned_s": self.planned_s, "delivered_s": self.delivered_s,
                "dose": dict(self.figures)}


@dataclass(frozen=True)
class ModalityTotals:
    modality: str
    sessions: int
    delivered_s: float
    """Sum of the known delivered times."""
    figures: dict[str, float]
    outcomes: dict[str, int] = field(default_factory=dict)
    first_started_at: str = ""
    last_started_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "delivered_s": self.delivered_s,
                "dose": dict(self.figures), "outcomes": dict(self.outcomes),
                "first_started_at": self.first_started_at,
                "last_started_at": self.last_started_at}


@dataclass(frozen=True)
class PatientHistory:
    patient: str
    entries: tuple[HistoryEntry, ...]
    """Oldest first."""
    totals: tuple[ModalityTotals, ...]
    """One per modality the patient was treated with, thermal, ultrasound, tens first."""

    def to_json(self) -> dict[str, Any]:
        return {"patient": self.patient, "session_count": len(self.entries),
                "sessions": [e.to_json() for e in self.entries],
                "totals": {t.modality: t.to_json() for t in self.totals}}


Sample = SampleRow


# -- building ---------------------------------------------------------------------------------

def session_modality(prescription: Mapping[str, Any] | None,
                     dose: Mapping[str, Any] | None) -> str:
    """The modality a session record belongs to, or `unknown`."""
    named = (prescription or {}).get("modality")
    if isinstance(named, str) and named:
        return named
    return next((m for key, m in _MODALITY_BY_FIGURE.items() if key in (dose or {})),
                UNKNOWN_MODALITY)


def history_entry(session: Mapping[str, Any]) -> HistoryEntry:
    """A history entry from a session record (`SessionRow.to_json()` or an exported session)."""
    prescription = session.get("prescription") or {}
    dose = session.get("dose") or {}
    modality = session_modality(prescription, dose)
    figures = {f.key: value for f in DOSE_FIGURES.get(modality, ())
               if (value := number(dose.get(f.key))) is not None}
    identity = session.get("identity")
    identity = identity if isinstance(identity, Mapping) else {}
    device = {k: "" if identity.get(k) is None else str(identity.get(k)) for k in DEVICE_FIELDS}
    return HistoryEntry(
        session_id=str(session["id"]), started_at=str(session["started_at"]),
        ended_at=session.get("ended_at"), profile=str(session.get("profile", "")),
        modality=modality, regimes=tuple(str(r) for r in prescription.get("regimes") or ()),
        operator=str(session.get("operator", "")), status=str(session.get("status", "")),
        outcome=session.get("outcome"), reason=session.get("reason"),
        planned_s=float(session.get("planned_s") or 0.0),
        delivered_s=number(session.get("delivered_s")), figures=figures,
        patient=session.get("patient"), device=device)


def history_from_sessions(patient: str,
                          sessions: Iterable[Mapping[str, Any]]) -> PatientHistory:
    """The history of `patient` from their session records, in any order."""
    entries = sorted((history_entry(s) for s in sessions),
                     key=lambda e: (e.started_at, e.session_id))
    return PatientHistory(patient, tuple(entries), _totals(entries))


def patient_history(store: RecordStore, patient: str) -> PatientHistory:
    """Every session of `patient` in the store, oldest first, with totals per modality."""
    rows = store.list_sessions(None, patient=patient)
    return history_from_sessions(patient, (r.to_json() for r in rows))


def _totals(entries: Iterable[HistoryEntry]) -> tuple[ModalityTotals, ...]:
    groups: dict[str, list[HistoryEntry]] = {}
    for e in entries:
        groups.setdefault(e.modality, []).append(e)
    order = [m for m in MODALITY_ORDER if m in groups] + \
        sorted(m for m in groups if m not in MODALITY_ORDER)
    return tuple(_modality_totals(m, groups[m]) for m in order)


def _modality_totals(modality: str, entries: list[HistoryEntry]) -> ModalityTotals:
    figures: dict[str, float] = {}
    for f in DOSE_FIGURES.get(modality, ()):
        values = [e.figures[f.key] for e in entries if f.key in e.figures]
        if values:
            figures[f.key] = math.fsum(values) if f.total == "sum" else max(values)
    outcomes: dict[str, int] = {}
    for e in entries:
        key = e.outcome or e.status
        outcomes[key] = outcomes.get(key, 0) + 1
    return ModalityTotals(
        modality=modality, sessions=len(entries),
        delivered_s=math.fsum(e.delivered_s for e in entries if e.delivered_s is not None),
        figures=figures, outcomes=outcomes, first_started_at=entries[0].started_at,
        last_started_at=entries[-1].started_at)


def format_number(value: object) -> str:
    """A figure for people: 4 significant digits, whole numbers from 1000 up."""
    n = number(value)
    if n is None:
        return str(value)
    return f"{n:.0f}" if abs(n) >= LARGE_NUMBER else f"{n:.{SIGNIFICANT_DIGITS}g}"


def number(value: object) -> float | None:
    """`value` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# -- export -----------------------------------------------------------------------------------

def history_json(history: PatientHistory) -> str:
    return json.dumps(history.to_json(), indent=2, ensure_ascii=False) + "\n"


def history_csv(history: PatientHistory) -> str:
    """One `session` row per session (oldest first), then one `total` row per modality.

    Text cells go through `csv_safe` like every CSV the records write: typed text (a patient id
    looked up leniently, an operator's name) beginning with = + - @ would run as a spreadsheet
    formula; CR/LF inside a cell are quoted (RFC 4180 line ends), never a new row.
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator=LINE_END)
    writer.writeheader()
    for e in history.entries:
        writer.writerow(safe_row({
            "row": ROW_SESSION, "patient": history.patient, "modality": e.modality,
            "session_id": e.session_id, "started_at": e.started_at, "ended_at": e.ended_at,
            "profile": e.profile, "operator": e.operator,
            "device_serial": e.device_serial, "status": e.status,
            "outcome": e.outcome, "sessions": 1, "planned_s": e.planned_s,
            "delivered_s": e.delivered_s, **e.figures}))
    for t in history.totals:
        writer.writerow(safe_row({
            "row": ROW_TOTAL, "patient": history.patient, "modality": t.modality,
            "started_at": t.first_started_at, "sessions": t.sessions,
            "delivered_s": t.delivered_s, **t.figures}))
    return out.getvalue()


def export_patient_json(store: RecordStore, patient: str) -> str:
    """`RecordStore.export("json", patient)` plus the patient's history and totals, read
    from the same snapshot (the exported sessions)."""
    return patient_export_json(patient, store.sessions_oldest_first(patient))


def patient_export_json(patient: str, sessions: Sequence[SessionRow]) -> str:
    """The JSON export of `sessions` (one patient's, oldest first) plus that patient's history
    and totals, computed from the same sessions."""
    data = json.loads(export_sessions(sessions, "json"))
    data["patient"] = patient
    data["history"] = history_from_sessions(patient, data["sessions"]).to_json()
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# -- telemetry --------------------------------------------------------------------------------

def session_samples(store: RecordStore, session_id: str) -> list[Sample]:
    """A session's telemetry samples in time order. `session_id` is the full id."""
    return store.get_samples(session_id)
