"""Plans and bookings over HTTP: run a preset or plan on a device per role, start a booking
(its session or its plan) with the checks `modctl book start` makes, follow and stop them."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from controller.clinic import bookings as rules
from controller.clinic import clock as clinic_time
from controller.clinic.patients import PatientIdError, check_patient_id
from controller.plans.plan import Plan, PlanError, load_plan
from controller.plans.report import PlanReport
from controller.records.clinic_tables import BookingRow
from controller.service.api_auth import Authenticated, Ctx, role
from controller.service.api_sessions import slot_named
from controller.service.auth import Login
from controller.service.http_errors import ApiError
from controller.service.plan_runs import PlanRefused, PlanState
from controller.service.runs import STOP_WAIT_S, Run, StartRefused

router = APIRouter(prefix="/api", tags=["plans"])

PLAN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")

Clinician = Annotated[Login, Depends(role("clinician", "run plans and bookings"))]


class PlanBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plan: str = Field(min_length=1, max_length=64, description="a preset plan's name")
    devices: dict[str, str] = Field(description="device role -> registered device name",
                                    max_length=8)
    patient: str | None = Field(default=None, max_length=64)


def _patient(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return check_patient_id(text, "patient")
    except PatientIdError as exc:
        raise ApiError(422, str(exc)) from None


@router.post("/plans/run", status_code=201)
def run_plan(body: PlanBody, ctx: Ctx, login: Clinician) -> dict[str, object]:
    patient = _patient(body.patient)
    plan = load_named_plan(ctx, body.plan)
    slots = {role: slot_named(ctx, name) for role, name in body.devices.items()}
    try:
        state = ctx.plans.start(plan, slots, operator=login.account.name, patient=patient)
    except PlanRefused as exc:
        raise ApiError(exc.status, exc.message) from None
    return state.summary()


def plan_path(ctx: Ctx, name: str) -> Path | None:
    """The service's own plan file of that name (`modctl serve --plans DIR`), or None."""
    folder = ctx.options.plans_dir
    if folder is None:
        return None
    path = folder / f"{name}.yaml"
    return path if path.is_file() else None


def load_named_plan(ctx: Ctx, name: str) -> Plan:
    """A plan by name: the service's plans folder first, then the shipped presets. Never a
    path: the API names plans an admin has put where the service reads them."""
    if not PLAN_NAME.fullmatch(name):
        raise ApiError(422, f"plan '{name}': a plan's name is letters, digits, '.', '_' and "
                            "'-' (GET /api/plans lists them)")
    try:
        return load_plan(plan_path(ctx, name) or name)
    except PlanError as exc:
        raise ApiError(422, "; ".join(exc.problems), exc.problems) from None


def _plan(ctx: Ctx, plan_id: str) -> PlanState:
    state = ctx.plans.get(plan_id)
    if state is None:
        raise ApiError(404, f"no plan run {plan_id} in this service")
    return state


@router.get("/plans/runs")
def plan_runs(ctx: Ctx, login: Authenticated) -> dict[str, object]:
    """The plans running in this service (any browser or client started them)."""
    return {"plans": [state.summary() for state in ctx.plans.running()]}


@router.get("/plans/runs/{plan_id}")
def plan_run(plan_id: str, ctx: Ctx, login: Authenticated) -> dict[str, object]:
    return _plan(ctx, plan_id).summary()


@router.post("/plans/runs/{plan_id}/stop")
def stop_plan(plan_id: str, ctx: Ctx, login: Authenticated) -> dict[str, object]:
    return _stop(ctx, plan_id, login, emergency=False)


@router.post("/plans/runs/{plan_id}/estop")
def estop_plan(plan_id: str, ctx: Ctx, login: Authenticated) -> dict[str, object]:
    return _stop(ctx, plan_id, login, emergency=True)


def _stop(ctx: Ctx, plan_id: str, login: Login, *, emergency: bool) -> dict[str, object]:
    state = _plan(ctx, plan_id)
    ctx.plans.stop(state, emergency=emergency, by=login.account.name)
    state.done.wait(STOP_WAIT_S)
    return state.summary()


@router.post("/bookings/{booking_id}/start", status_code=201)
def start_booking(booking_id: int, ctx: Ctx, login: Clinician) -> dict[str, object]:
    """As `modctl book start ID`: the booking must be `booked`, its devices registered and
    fit, its time near enough, its prescription (or plan) within every limit now."""
    booking = ctx.store.booking(booking_id)
    if booking is None:
        raise ApiError(404, f"there is no booking {booking_id}")
    if booking.status != "booked":
        raise ApiError(409, f"booking {booking.id} is {booking.status}, not booked; make a "
                            "new booking")
    reasons: list[str] = []
    devices: rules.Booked = {}
    for role_name, name in booking.devices.items():
        got = rules.device_and_profile(ctx.store, name)
        if isinstance(got, str):
            reasons.append(got.removeprefix("--device: "))
        else:
            devices[role_name] = got
    if not reasons:
        reasons = rules.check_start(ctx.store, booking.starts_at, devices, booking.patient,
                                    booking.duration_s, clinic_time.now(),
                                    ctx.runs.rules.min_interval_s)
    if reasons:
        raise ApiError(409, "; ".join(reasons), reasons)
    operator = login.account.name
    if booking.plan is not None:
        return _start_plan_booking(ctx, booking, devices, operator)
    device, profile = devices[rules.PROFILE_ROLE]
    checked = rules.prescription_or_reasons(profile, booking.settings, booking.duration_s)
    if isinstance(checked, list):
        raise ApiError(422, "; ".join(f"prescription: {m}" for m in checked), checked)
    slot = slot_named(ctx, device.name)
    ctx.store.mark_booking(booking.id, "started", operator)
    try:
        run = ctx.runs.start(slot, checked, operator=operator, patient=booking.patient)
    except StartRefused as exc:
        sessions = [exc.report.session_id] if exc.report and exc.report.session_id else []
        ctx.store.mark_booking(booking.id, "booked", operator, sessions,
                               note=f"refused before any output: {exc.message}")
        raise ApiError(exc.status, exc.message) from None
    threading.Thread(target=_close_booking, args=(ctx, booking, run, operator), daemon=True,
                     name=f"booking {booking.id}").start()
    return {"booking": booking.id, "session": run.summary()}


def _close_booking(ctx: Ctx, booking: BookingRow, run: Run, operator: str) -> None:
    run.done.wait()
    report = run.session.report
    sessions = [report.session_id] if report is not None and report.session_id else []
    if report is None or not report.output_started:  # nothing delivered: it may start again
        ctx.store.mark_booking(booking.id, "booked", operator, sessions,
                               note=f"ended before any output: "
                                    f"{report.reason if report else 'no report'}")
    else:
        ctx.store.mark_booking(booking.id, "done", operator, sessions, note=report.outcome)


def _start_plan_booking(ctx: Ctx, booking: BookingRow, devices: rules.Booked,
                        operator: str) -> dict[str, object]:
    assert booking.plan is not None
    try:
        plan = load_plan(booking.plan)
    except PlanError as exc:
        raise ApiError(422, "; ".join(exc.problems), exc.problems) from None
    slots = {role_name: slot_named(ctx, device.name)
             for role_name, (device, _profile) in devices.items()}

    def finished(report: PlanReport) -> None:
        again = not any((s := ctx.store.get_session(sid)) is not None
                        and (s.delivered_s or 0) > 0 for sid in report.session_ids)
        ctx.store.mark_booking(booking.id, "booked" if again else "done", operator,
                               report.session_ids,
                               note=f"plan run exit status {report.exit_status}")

    ctx.store.mark_booking(booking.id, "started", operator)
    try:
        state = ctx.plans.start(plan, slots, operator=operator, patient=booking.patient,
                                booking_id=str(booking.id), finished=finished)
    except PlanRefused as exc:
        ctx.store.mark_booking(booking.id, "booked", operator, [], note=exc.message)
        raise ApiError(exc.status, exc.message) from None
    return {"booking": booking.id, "plan": state.summary()}
