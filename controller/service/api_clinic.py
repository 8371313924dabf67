"""The clinic's records as the CLI shows them: bookings, plans, a patient's history,
calibration status, the audit chain's check; and (admins) the accounts."""

from __future__ import annotations

import dataclasses
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from controller.clinic.patients import PatientIdError, check_patient_id
from controller.plans.plan import PlanError, load_plan
from controller.records.history import patient_history
from controller.service.accounts import AccountConflict, AccountError
from controller.service.api_auth import Authenticated, Ctx, account_json, role
from controller.service.api_devices import calibration_json
from controller.service.auth import Login
from controller.service.http_errors import ApiError

router = APIRouter(prefix="/api", tags=["clinic"])

Admin = Annotated[Login, Depends(role("admin", "manage accounts"))]


def _jsonable(row: object) -> dict[str, object]:
    assert dataclasses.is_dataclass(row) and not isinstance(row, type)
    out = dataclasses.asdict(row)
    return {k: (str(v) if not isinstance(v, (str, int, float, bool, list, dict, tuple))
                and v is not None else v) for k, v in out.items()}


@router.get("/bookings")
def bookings(ctx: Ctx, login: Authenticated,
             day: Annotated[date | None, Query(description="YYYY-MM-DD; all when absent")] = None,
             patient: Annotated[str | None, Query(max_length=64)] = None
             ) -> dict[str, object]:
    return {"bookings": [_jsonable(b) for b in ctx.store.bookings(day, patient=patient)]}


@router.get("/bookings/{booking_id}")
def booking(booking_id: int, ctx: Ctx, login: Authenticated) -> dict[str, object]:
    row = ctx.store.booking(booking_id)
    if row is None:
        raise ApiError(404, f"no booking {booking_id}")
    return _jsonable(row)


@router.get("/plans")
def plans(ctx: Ctx, login: Authenticated) -> dict[str, object]:
    """The plans the API runs by name: the service's plans folder, then the shipped presets."""
    names: dict[str, Path | str] = {}
    folder = resources.files("controller.plans") / "presets"
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".yaml"):
            names[item.name.removesuffix(".yaml")] = item.name.removesuffix(".yaml")
    if ctx.options.plans_dir is not None and ctx.options.plans_dir.is_dir():
        for path in sorted(ctx.options.plans_dir.glob("*.yaml")):
            names[path.stem] = path
    out: list[dict[str, object]] = []
    for name, ref in names.items():
        try:
            plan = load_plan(ref)
        except PlanError as exc:
            out.append({"name": name, "problems": exc.problems})
            continue
        out.append({"name": name, "title": plan.name, "example": plan.example,
                    "roles": plan.roles(),
                    "steps": [{"index": s.index, "name": s.name, "role": s.role,
                               "profile": s.profile.id, "settings": s.settings,
                               "duration_s": s.duration_s, "pause_after_s": s.pause_after_s,
                               "notes": s.notes}
                              for s in plan.steps]})
    return {"plans": out}


@router.get("/patients/{patient}/history")
def history(patient: str, ctx: Ctx, login: Authenticated) -> dict[str, object]:
    try:
        pid = check_patient_id(patient, "patient")
    except PatientIdError as exc:
        raise ApiError(422, str(exc)) from None
    return patient_history(ctx.store, pid).to_json()


@router.get("/calibration")
def calibration(ctx: Ctx, login: Authenticated) -> dict[str, object]:
    return {"devices": [{"device": s.name, **calibration_json(ctx, s)}
                        for s in ctx.slots.values()]}


@router.get("/records/verify")
def verify(ctx: Ctx, login: Authenticated) -> dict[str, object]:
    """The audit chain checked end to end (as `modctl records verify`)."""
    result = ctx.store.verify_audit()
    return _jsonable(result)


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    role: str
    password: str = Field(min_length=1, max_length=1024)


@router.get("/users")
def users(ctx: Ctx, login: Admin) -> dict[str, object]:
    return {"users": [account_json(a) for a in ctx.accounts.list()]}


@router.post("/users", status_code=201)
def add_user(body: NewUser, ctx: Ctx, login: Admin) -> dict[str, object]:
    try:
        return account_json(ctx.accounts.add(body.name, body.role, body.password,
                                             login.account.name))
    except AccountError as exc:
        raise ApiError(409 if isinstance(exc, AccountConflict) else 422, str(exc)) from None


@router.post("/users/{name}/disable")
def disable_user(name: str, ctx: Ctx, login: Admin) -> dict[str, object]:
    try:
        account = ctx.accounts.disable(name, login.account.name)
    except AccountError as exc:
        raise ApiError(404 if ctx.accounts.get(name) is None else 422, str(exc)) from None
    ctx.auth.tokens.revoke_account(name)
    return account_json(account)
