"""The room's devices and the live stream of their changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from controller.clinic import clock as clinic_time
from controller.modality.limits import effective_bound
from controller.profiles.model import DURATION
from controller.service.api_auth import Authenticated, Ctx
from controller.service.devices import DeviceSlot
from controller.service.events import CLOSING, MAX_LAG_S, Subscriber, sse
from controller.service.http_errors import ApiError
from controller.service.runs import Run

router = APIRouter(prefix="/api", tags=["devices"])

# A comment line on an idle stream this often keeps proxies from closing it and lets the
# service notice a client that has gone.
KEEPALIVE_S = 15.0
# How long a device's calibration status is shown before the records are read again.
CALIBRATION_CACHE_S = 30.0
# Events sent in one write at most (a client that lags gets them in batches, in order).
BATCH_MAX = 64


def calibration_json(ctx: Ctx, slot: DeviceSlot) -> dict[str, object]:
    """The device's calibration status for screens, read from the records at most every
    CALIBRATION_CACHE_S (the gate at a start always reads the records afresh)."""
    profile = slot.profile
    if profile is None or profile.calibration is None:
        return {"required": False, "status": "not required", "next_due": None}
    cached = slot.calibration_cache
    if cached is not None and time.monotonic() - cached[0] < CALIBRATION_CACHE_S:
        return cached[1]
    status = ctx.store.calibration_status(slot.name, clinic_time.now())
    due = status.next_due
    shown: dict[str, object] = {
        "required": True, "status": "overdue" if status.overdue else "ok",
        "reason": status.reason, "next_due": str(due) if due is not None else None}
    slot.calibration_cache = (time.monotonic(), shown)
    return shown


def device_json(ctx: Ctx, slot: DeviceSlot) -> dict[str, object]:
    run = slot.busy_with
    return {"name": slot.name, "profile": slot.row.profile,
            "modality": slot.profile.modality if slot.profile else None,
            "port": slot.row.port, "present": slot.watch.present or isinstance(run, Run),
            "problem": slot.watch.problem, "identity": slot.watch.identity,
            "calibration": calibration_json(ctx, slot),
            "state": ctx.runs.device_state(slot),
            "session": run.summary() if isinstance(run, Run) else None,
            "plan": getattr(run if not isinstance(run, Run) else run.reservation, "id", None)}


@router.get("/devices")
def devices(ctx: Ctx, login: Authenticated) -> dict[str, object]:
    return {"devices": [device_json(ctx, s) for s in ctx.slots.values()]}


@router.get("/devices/{name}")
def device(name: str, ctx: Ctx, login: Authenticated) -> dict[str, object]:
    slot = ctx.slots.get(name)
    if slot is None:
        raise ApiError(404, f"no registered device named '{name}'")
    return device_json(ctx, slot)


@router.get("/devices/{name}/form")
def form(name: str, ctx: Ctx, login: Authenticated) -> dict[str, object]:
    """What a start form needs: each parameter with its unit, its allowed range (the
    tightest of the device's, the clinic's and the code's ceilings; a regime such as cold
    may narrow it further, and the service says so at the request), step, choices and
    default; and the duration's range."""
    slot = ctx.slots.get(name)
    if slot is None:
        raise ApiError(404, f"no registered device named '{name}'")
    profile = slot.profile
    if profile is None:
        raise ApiError(409, slot.load_problem)
    params = []
    for pname, param in profile.parameters.items():
        bound = effective_bound(profile, pname, [])
        params.append({
            "name": pname, "type": param.type, "unit": param.unit,
            "description": param.description, "step": param.step, "allowed": param.allowed,
            "choices": list(param.choices) if param.choices else None,
            "default": param.default, "required": param.default is None,
            "min": bound.low.value if bound and bound.low else None,
            "max": bound.high.value if bound and bound.high else None})
    duration = effective_bound(profile, DURATION, [])
    return {"device": slot.name, "profile": profile.id, "modality": profile.modality,
            "model": f"{profile.vendor} {profile.model}", "parameters": params,
            "duration_s": {"min": duration.low.value if duration and duration.low else None,
                           "max": duration.high.value if duration and duration.high else None}}


@router.get("/alarms")
def alarms(ctx: Ctx, login: Authenticated, all: bool = False) -> dict[str, object]:
    """Open alarms, highest priority first (`all=true`: the acknowledged ones too)."""
    out: dict[str, object] = {"alarms": [asdict(a) for a in ctx.alarms.open()]}
    if all:
        out["acknowledged"] = [asdict(a) for a in ctx.alarms.acknowledged()]
    return out


@router.post("/alarms/{alarm_id}/ack")
def acknowledge(alarm_id: int, ctx: Ctx, login: Authenticated) -> dict[str, object]:
    """Silence an alarm (the condition stays on the device's state); audited with who."""
    alarm = ctx.alarms.acknowledge(alarm_id, login.account.name)
    if alarm is None:
        raise ApiError(404, f"no open alarm {alarm_id} (already acknowledged?)")
    ctx.store.audit(login.account.name, "alarm.ack", f"device/{alarm.device}",
                    {"alarm": asdict(alarm)})
    return asdict(alarm)


@router.get("/events")
async def events(request: Request, ctx: Ctx, login: Authenticated) -> StreamingResponse:
    """Server-Sent Events: `device` (state changes), `telemetry` (every poll of every
    session), `session` (a session's end, with `final: true`), `hello` first with the
    whole room, `dropped` when this client fell too far behind (reconnect)."""
    ctx.hub.bind(asyncio.get_running_loop())
    sub = ctx.hub.subscribe()
    if sub is None:
        raise ApiError(503, "too many live-stream clients; try again later")
    first: dict[str, object] = {"devices": [device_json(ctx, s) for s in ctx.slots.values()],
                                "alarms": [asdict(a) for a in ctx.alarms.open()]}
    return StreamingResponse(_stream(request, ctx, sub, first, login.token),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _stream(request: Request, ctx: Ctx, sub: Subscriber, first: dict[str, object],
                  token: str) -> AsyncIterator[str]:
    try:
        yield sse({"seq": 0, "kind": "hello", "data": first})
        while True:
            if sub.dropped:
                yield sse({"seq": 0, "kind": "dropped",
                           "data": {"reason": "this client fell behind; reconnect"}})
                return
            try:
                event = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                # An open room screen is activity: its login stays valid while it watches
                # (so that its E-STOP ALL still works hours later); a login that ended
                # (logout, disabled, password changed) ends the stream.
                if ctx.auth.current(token) is None:
                    yield sse({"seq": 0, "kind": "expired",
                               "data": {"reason": "this login has ended; log in again"}})
                    return
                yield ": keep-alive\n\n"
                continue
            # What else is waiting goes in the same write: one send per wake-up, not per
            # event (at 32 sessions x 5 polls/s the per-write cost is what loads the loop).
            if time.monotonic() - event.at > MAX_LAG_S:
                ctx.hub.dropped_clients += 1
                yield sse({"seq": 0, "kind": "dropped",
                           "data": {"reason": f"this client fell more than {MAX_LAG_S:g} s "
                                              "behind; reconnect"}})
                return
            batch = [event]
            while len(batch) < BATCH_MAX and not sub.queue.empty():
                batch.append(sub.queue.get_nowait())
            yield "".join(m.text for m in batch)
            if any(m.kind == CLOSING for m in batch):
                return
    finally:
        ctx.hub.unsubscribe(sub)
