"""Sessions over HTTP: start, look at, stop, e-stop; the whole room's e-stop.

Starting runs the same checks, in the same words, as `modctl session run`: 422 lists every
problem of the request (unknown parameter, limits, ceilings, duration), 409 says why the
device cannot take it (busy, absent, latched fault, calibration, the patient's minimum
interval, a refusal at identification), 403 a role that may not. Anyone logged in may
stop or e-stop anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime
from typing import Annotated, NoReturn

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from controller.clinic.patients import PatientIdError, check_patient_id
from controller.modality.prescription import (
    DurationError,
    PrescriptionRejected,
    build_prescription,
    parse_duration,
)
from controller.records.html_report import ReportError, session_report_html
from controller.records.notes_table import NoteError
from controller.records.sessions import SessionRow
from controller.service.api_auth import Authenticated, Ctx, role
from controller.service.auth import Login
from controller.service.devices import DeviceSlot
from controller.service.http_errors import ApiError
from controller.service.rooms import held_elsewhere
from controller.service.runs import STOP_WAIT_S, Run, StartRefused
from controller.session.report import SessionReport

router = APIRouter(prefix="/api", tags=["sessions"])

# Rows `GET /api/sessions` returns at most (newest first).
LIST_LIMIT_MAX = 500

Clinician = Annotated[Login, Depends(role("clinician", "start a session"))]


class StartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str = Field(min_length=1, max_length=64)
    duration: str | float = Field(description="seconds, or 90s, 5m, 1m30s")
    settings: dict[str, str | float | int] = Field(default_factory=dict, max_length=32)
    patient: str | None = Field(default=None, max_length=64)
    clear_fault: bool = False


def slot_named(ctx: Ctx, name: str) -> DeviceSlot:
    slot = ctx.slots.get(name)
    if slot is None:
        elsewhere = held_elsewhere(ctx, name)
        if elsewhere:  # registered, but another room's PC drives it
            raise ApiError(409, elsewhere)
        known = ", ".join(sorted(ctx.slots)) or "none registered"
        raise ApiError(404, f"no registered device named '{name}' (devices: {known})")
    return slot


def _settings_text(settings: dict[str, str | float | int]) -> dict[str, str]:
    out = {}
    for name, value in settings.items():
        if isinstance(value, bool):
            raise ApiError(422, f"setting '{name}': a number or a word, not true/false")
        out[name] = value if isinstance(value, str) else repr(value)
    return out


@router.post("/sessions", status_code=201)
def start_session(body: StartBody, ctx: Ctx, login: Clinician) -> dict[str, object]:
    slot = slot_named(ctx, body.device)
    if slot.profile is None:
        raise ApiError(409, slot.load_problem)
    problems: list[str] = []
    patient = None
    if body.patient is not None:
        try:
            patient = check_patient_id(body.patient, "patient")
        except PatientIdError as exc:
            problems.append(str(exc))
    duration = 0.0
    try:
        duration = parse_duration(str(body.duration))
    except DurationError as exc:
        problems.append(str(exc))
    if problems:
        raise ApiError(422, "; ".join(problems), problems)
    try:
        rx = build_prescription(slot.profile, _settings_text(body.settings), duration)
    except PrescriptionRejected as exc:
        messages = exc.messages()
        raise ApiError(422, "; ".join(messages), messages) from None
    try:
        run = ctx.runs.start(slot, rx, operator=login.account.name, patient=patient,
                             clear_fault=body.clear_fault)
    except StartRefused as exc:
        raise ApiError(exc.status, exc.message,
                       session_id=exc.report.session_id if exc.report else "") from None
    return {"id": run.id, "device": slot.name, "state": str(run.session.state.state),
            "prescription": run.session.rx.record(), "operator": run.operator}


def _row_json(row: SessionRow) -> dict[str, object]:
    out = row.to_json()
    out.pop("events", None)
    out["final"] = row.status != "open"
    return out


def report_json(report: SessionReport) -> dict[str, object]:
    out = report.to_dict()
    out["final"] = True
    return out


@router.get("/sessions/{session_id}")
def get_session(session_id: str, ctx: Ctx, login: Authenticated) -> dict[str, object]:
    found = ctx.runs.get(session_id)
    if isinstance(found, Run):
        return found.summary()
    if isinstance(found, SessionReport):
        return report_json(found)
    row = ctx.store.get_session(session_id)
    if row is None:
        raise ApiError(404, f"no session {session_id}")
    return row_report(row)


def row_report(row: SessionRow) -> dict[str, object]:
    """A recorded session with the keys of the CLI's `--json` report (the report of a
    session this service ran recently is served whole from memory instead)."""
    keys = SessionReport.__dataclass_fields__
    events = [{"t_s": e.t_s, "kind": e.kind, "detail": e.detail} for e in row.events]
    started = any(e.kind == "command" and e.detail.get("op") == "start"
                  for e in row.events) or (row.delivered_s or 0.0) > 0
    unconfirmed = any(e.kind == "fault" and "stop not confirmed" in str(e.detail.get("reason"))
                      for e in row.events)
    out: dict[str, object] = {
        "session_id": row.id, "outcome": row.outcome or row.status, "reason": row.reason or "",
        "profile": row.profile, "device": {"port": row.port, **row.identity},
        "prescription": row.prescription, "planned_s": row.planned_s,
        "delivered_s": row.delivered_s or 0.0, "stop_source": row.stop_source or "",
        "dose": row.dose or {}, "events": events,
        "stop_confirmed": (not unconfirmed) if started else None,
        "output_started": started,
        "device_elapsed_s": row.device_elapsed_s, "host_delivered_s": None,
        "profile_file": {"id": row.profile, "path": row.profile_path,
                         "sha256": row.profile_sha256}}
    assert set(out) == set(keys)
    out.update(status=row.status, operator=row.operator, patient=row.patient,
               started_at=row.started_at, ended_at=row.ended_at, final=row.status != "open")
    return out


@router.get("/sessions/{session_id}/report", response_class=HTMLResponse)
def printable_report(session_id: str, ctx: Ctx, login: Authenticated) -> HTMLResponse:
    """The printable session report (as `modctl records report ID`)."""
    try:
        return HTMLResponse(session_report_html(ctx.store, session_id))
    except ReportError as exc:
        raise ApiError(404 if ctx.store.get_session(session_id) is None else 409,
                       str(exc)) from None


class NoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body_site: str | None = Field(default=None, max_length=200)
    skin_before: str | None = Field(default=None, max_length=200)
    skin_after: str | None = Field(default=None, max_length=200)
    pain_before: int | None = None
    pain_after: int | None = None
    text: str = Field(default="", max_length=4000)


@router.post("/sessions/{session_id}/notes", status_code=201)
def add_note(session_id: str, body: NoteBody, ctx: Ctx, login: Clinician) -> dict[str, object]:
    """A clinician's note on a session (body site, skin checks, pain 0-10, text); audited."""
    if ctx.store.get_session(session_id) is None:
        raise ApiError(404, f"no session {session_id}")
    try:
        note = ctx.store.add_note(session_id, actor=login.account.name,
                                  **body.model_dump())
    except NoteError as exc:
        raise ApiError(422, str(exc)) from None
    return dataclasses.asdict(note)


@router.get("/sessions/{session_id}/notes")
def notes(session_id: str, ctx: Ctx, login: Authenticated) -> dict[str, object]:
    row = ctx.store.get_session(session_id)
    if row is None:
        raise ApiError(404, f"no session {session_id}")
    return {"notes": [dataclasses.asdict(n) for n in ctx.store.notes(row.id)]}


@router.get("/sessions")
def list_sessions(ctx: Ctx, login: Authenticated,
                  patient: Annotated[str | None, Query(max_length=64)] = None,
                  since: Annotated[datetime | None, Query()] = None,
                  limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = 50
                  ) -> dict[str, object]:
    rows = ctx.store.list_sessions(limit=None if since else limit, patient=patient)
    if since is not None:
        floor = since if since.tzinfo else since.astimezone()
        rows = [r for r in rows if datetime.fromisoformat(r.started_at) >= floor][:limit]
    return {"sessions": [_row_json(r) for r in rows]}


def _not_running(ctx: Ctx, session_id: str, report: SessionReport | None) -> NoReturn:
    """Why there is nothing to stop: the session has ended (409) or is unknown (404)."""
    row = None if report is not None else ctx.store.get_session(session_id)
    if row is not None and row.status == "open":
        where = ("in another room, which alone may stop it (the Rooms page shows it; stop it "
                 "there, or at the device)" if ctx.store.shared else
                 "outside this service (a command-line session: stop it there, or at the "
                 "device)")
        raise ApiError(409, f"session {session_id} runs {where}")
    if report is not None or row is not None:
        raise ApiError(409, f"session {session_id} has already ended")
    raise ApiError(404, f"no session {session_id}")


def _stopped(run: Run, report: SessionReport | None, response: Response) -> dict[str, object]:
    if report is None:
        response.status_code = 202
        return {**run.summary(), "note": "stop posted; not confirmed yet"}
    return report_json(report)


# Stops are `async`: the stop is posted from the event loop the moment the request is
# read, without waiting for a free worker thread (under a flood of requests that wait was
# the largest part of an operator stop); only the wait for the confirmation goes to a thread.
@router.post("/sessions/{session_id}/stop")
async def stop_session(session_id: str, ctx: Ctx, login: Authenticated,
                       response: Response) -> dict[str, object]:
    return await _stop(ctx, session_id, login, response, emergency=False)


@router.post("/sessions/{session_id}/estop")
async def estop_session(session_id: str, ctx: Ctx, login: Authenticated,
                        response: Response) -> dict[str, object]:
    return await _stop(ctx, session_id, login, response, emergency=True)


async def _stop(ctx: Ctx, session_id: str, login: Login, response: Response, *,
                emergency: bool) -> dict[str, object]:
    found = ctx.runs.get(session_id)
    if isinstance(found, Run):
        ctx.runs.post_stop(found, emergency=emergency, by=login.account.name)
        report = await asyncio.to_thread(found.session.wait, STOP_WAIT_S)
        return _stopped(found, report, response)
    await asyncio.to_thread(_not_running, ctx, session_id, found)  # a records read


@router.post("/estop")
async def estop_all(ctx: Ctx, login: Authenticated) -> dict[str, object]:
    """Every running output of this service, in one request: every stop is posted from the
    event loop before anything waits."""
    runs = ctx.runs.post_stop_all(emergency=True, reason=f"operator emergency stop of every "
                                  f"output by {login.account.name} (clinic service)")
    ctx.plans.end_all(by=login.account.name)    # a plan in a pause starts no further step
    return await asyncio.to_thread(_estopped, ctx, login, runs)


def _estopped(ctx: Ctx, login: Login, runs: list[Run]) -> dict[str, object]:
    ctx.runs.wait_all(runs)
    ctx.store.audit(login.account.name, "service.estop_all", "all",
                    {"sessions": [r.id for r in runs]})
    out = []
    for run in runs:
        report = run.session.report
        out.append({"id": run.id, "device": run.slot.name,
                    "outcome": report.outcome if report else "stopping",
                    "stop_confirmed": report.stop_confirmed if report else None})
    return {"stopped": out}
