"""`records export --format fhir`: sessions as a FHIR R4 Bundle (type `collection`), built as
plain dicts (no FHIR library at run time; the tests validate every resource with
`fhir.resources`).

Per session a Procedure: status from the outcome, the therapy as a SNOMED CT code with its
display text, performedPeriod, the operator as performer, the patient as a logical reference by
identifier (the pseudonymous id in the clinic's system URI; no names), the device used, the body
site and the clinical notes. Per device (manufacturer, model, serial) one Device. Per delivered
dose figure an Observation with a UCUM quantity, and per pain score (0-10) an Observation coded
LOINC 72514-3. Resource ids are UUIDs derived from the session id (and figure), so exporting
the same records again gives the same ids: a receiving system can recognise what it has.

The code systems used and why are in docs/records.md ("FHIR export").
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from controller.records.clinical import (
    DeviceInfo,
    device_info,
    outcome_sentence,
    therapy_kind,
    therapy_name,
)
from controller.records.dose_text import dose_lines
from controller.records.notes_table import NoteRow
from controller.records.sessions import SessionRow

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
# modctl's own identifier and code systems (URNs: nothing to resolve, unique to modctl).
SESSION_SYSTEM = "urn:modctl:session"
OPERATOR_SYSTEM = "urn:modctl:operator"
DOSE_SYSTEM = "urn:modctl:dose"
# Namespace of the resource ids (UUIDv5 of "kind/key"): stable across exports.
ID_NAMESPACE = uuid.UUID("5b0c3d1e-6a4f-4e7b-9c1d-7d0f6f0e2a11")
# The therapy's SNOMED CT concept (docs/records.md says where each was found and why).
# "Heat therapy" has a concept of its own, but its id could not be confirmed from the
# sources at hand; the broader "Thermal techniques" (regime/therapy) stands for heat until a
# clinic's terminology server confirms it.
THERAPY_CODES: dict[str, tuple[str, str]] = {
    "heat": ("229569007", "Thermal techniques"),
    "cold": ("182660006", "Cold therapy"),
    "ultrasound": ("89002000", "Therapeutic ultrasound"),
    "tens": ("229559001", "Transcutaneous nerve stimulation therapy"),
}
# Procedure.category: physiotherapy (the code alone: its display varies by edition).
PHYSIOTHERAPY_CATEGORY = "91251008"
PAIN_CODE = ("72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported")
PAIN_UNIT = "{score}"
# Procedure.status (R4 EventStatus) per outcome: started but not finished is `stopped`,
# refused before any output `not-done`.
STATUS = {"completed": "completed", "aborted": "stopped", "fault": "stopped",
          "interrupted": "stopped", "rejected": "not-done"}
# Dose figures are floats from a dose meter: six significant digits is far below any
# measurement's precision and keeps the numbers readable.
SIGNIFICANT = 6


def _id(kind: str, key: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"{kind}/{key}"))


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}


def _ref(resource_id: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{resource_id}"}


def _round(value: float) -> float | int:
    rounded = float(f"{value:.{SIGNIFICANT}g}")
    return int(rounded) if rounded.is_integer() else rounded


def patient_reference(patient: str | None, system: str) -> dict[str, Any]:
    """A logical reference by the pseudonymous id; no names ever leave the records."""
    if not patient:
        return {"display": "patient not recorded"}
    return {"identifier": {"system": system, "value": patient}}


def device_resource(info: DeviceInfo) -> dict[str, Any]:
    key = f"{info.manufacturer}/{info.model}/{info.serial}"
    resource: dict[str, Any] = {"resourceType": "Device", "id": _id("device", key)}
    if info.serial:
        resource["serialNumber"] = info.serial
    if info.manufacturer:
        resource["manufacturer"] = info.manufacturer
    if info.model:
        resource["deviceName"] = [{"name": info.model, "type": "model-name"}]
        resource["modelNumber"] = info.reported_model or info.model
    if info.firmware:
        resource["version"] = [{"type": {"text": "firmware"}, "value": info.firmware}]
    return resource


def procedure_resource(session: SessionRow, notes: Sequence[NoteRow], patient_system: str,
                       device_id: str) -> dict[str, Any]:
    kind = therapy_kind(session.prescription, session.dose)
    code: dict[str, Any] = {}
    if kind in THERAPY_CODES:
        snomed, display = THERAPY_CODES[kind]
        code["coding"] = [{"system": SNOMED, "code": snomed, "display": display}]
    code["text"] = therapy_name(session.prescription, session.dose)
    resource: dict[str, Any] = {
        "resourceType": "Procedure", "id": _id("procedure", session.id),
        "identifier": [{"system": SESSION_SYSTEM, "value": session.id}],
        "status": STATUS.get(session.outcome or "", "in-progress" if session.status == "open"
                             else "unknown"),
        "category": {"coding": [{"system": SNOMED, "code": PHYSIOTHERAPY_CATEGORY}],
                     "text": "Physiotherapy"},
        "code": code,
        "subject": patient_reference(session.patient, patient_system),
        "performedPeriod": _period(session),
        "performer": [{"actor": {"identifier": {"system": OPERATOR_SYSTEM,
                                                "value": session.operator},
                                 "display": session.operator}}],
        "focalDevice": [{"manipulated": _ref(device_id)}],
        "outcome": {"text": outcome_sentence(session)},
    }
    if resource["status"] in ("stopped", "not-done") and session.reason:
        resource["statusReason"] = {"text": session.reason}
    sites = list(dict.fromkeys(n.body_site for n in notes if n.body_site))
    if sites:
        resource["bodySite"] = [{"text": site} for site in sites]
    annotations = [a for n in notes for a in _annotations(n)]
    if annotations:
        resource["note"] = annotations
    return resource


def _period(session: SessionRow) -> dict[str, str]:
    period = {"start": session.started_at}
    if session.ended_at:
        period["end"] = session.ended_at
    return period


def _annotations(note: NoteRow) -> list[dict[str, Any]]:
    texts = [f"Skin check before: {note.skin_before}" if note.skin_before else "",
             f"Skin check after: {note.skin_after}" if note.skin_after else "", note.text]
    return [{"authorString": note.actor, "time": note.recorded_at, "text": text}
            for text in texts if text]


def dose_observations(session: SessionRow, patient_system: str, procedure_id: str,
                      device_id: str) -> list[dict[str, Any]]:
    out = []
    for line in dose_lines(session.prescription, session.dose):
        out.append({
            "resourceType": "Observation", "id": _id("dose", f"{session.id}/{line.key}"),
            "status": "final", "partOf": [_ref(procedure_id)],
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "procedure",
                                      "display": "Procedure"}]}],
            "code": {"coding": [{"system": DOSE_SYSTEM, "code": line.key,
                                 "display": line.label}], "text": line.label},
            "subject": patient_reference(session.patient, patient_system),
            "effectivePeriod": _period(session), "device": _ref(device_id),
            "valueQuantity": {"value": _round(line.value), "unit": line.unit,
                              "system": UCUM_SYSTEM, "code": line.ucum}})
    return out


def pain_observations(session: SessionRow, notes: Sequence[NoteRow], patient_system: str,
                      procedure_id: str) -> list[dict[str, Any]]:
    out = []
    for note in notes:
        for when, score in (("before", note.pain_before), ("after", note.pain_after)):
            if score is None:
                continue
            at = session.started_at if when == "before" else (session.ended_at
                                                              or note.recorded_at)
            out.append({
                "resourceType": "Observation", "id": _id("pain", f"{note.id}/{when}"),
                "status": "final", "partOf": [_ref(procedure_id)],
                "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey",
                                          "display": "Survey"}]}],
                "code": {"coding": [{"system": LOINC, "code": PAIN_CODE[0],
                                     "display": PAIN_CODE[1]}],
                         "text": f"Pain {when} the treatment (0-10)"},
                "subject": patient_reference(session.patient, patient_system),
                "effectiveDateTime": at, "issued": note.recorded_at,
                "performer": [{"identifier": {"system": OPERATOR_SYSTEM, "value": note.actor},
                               "display": note.actor}],
                "valueQuantity": {"value": score, "unit": "score", "system": UCUM_SYSTEM,
                                  "code": PAIN_UNIT}})
    return out


def fhir_bundle(sessions: Sequence[SessionRow], notes: Mapping[str, Sequence[NoteRow]], *,
                patient_system: str, timestamp: str | None = None) -> dict[str, Any]:
    """A Bundle (type collection) of the sessions, their devices, doses and notes."""
    entries: list[dict[str, Any]] = []
    devices: dict[str, dict[str, Any]] = {}
    for session in sessions:
        device = device_resource(device_info(session))
        devices.setdefault(device["id"], device)
        session_notes = notes.get(session.id, ())
        procedure = procedure_resource(session, session_notes, patient_system, device["id"])
        entries.append(_entry(procedure))
        entries += [_entry(o) for o in dose_observations(session, patient_system,
                                                          procedure["id"], device["id"])]
        entries += [_entry(o) for o in pain_observations(session, session_notes,
                                                          patient_system, procedure["id"])]
    entries += [_entry(d) for d in devices.values()]
    stamp = timestamp or datetime.now(UTC).isoformat(timespec="seconds")
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": stamp}, "type": "collection", "timestamp": stamp,
            "entry": entries}


def fhir_json(sessions: Sequence[SessionRow], notes: Mapping[str, Sequence[NoteRow]], *,
              patient_system: str, timestamp: str | None = None) -> str:
    bundle = fhir_bundle(sessions, notes, patient_system=patient_system, timestamp=timestamp)
    return json.dumps(bundle, indent=2, ensure_ascii=False) + "\n"
