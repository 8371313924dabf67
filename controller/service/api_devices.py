"""The room's devices and the live stream of their changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from controller.clinic import clock as clinic_time
from controller.service.api_auth import Authenticated, Ctx
from controller.service.devices import DeviceSlot
from controller.service.events import CLOSING, Subscriber, sse
from controller.service.http_errors import ApiError
from controller.service.runs import Run

router = APIRouter(prefix="/api", tags=["devices"])

# A comment line on an idle stream this often keeps proxies from closing it and lets the
# service notice a client that has gone.
KEEPALIVE_S = 15.0


def calibration_json(ctx: Ctx, slot: DeviceSlot) -> dict[str, object]:
    profile = slot.profile
    if profile is None or profile.calibration is None:
        return {"required": False, "status": "not required", "next_due": None}
    status = ctx.store.calibration_status(slot.name, clinic_time.now())
    due = status.next_due
    return {"required": True, "status": "overdue" if status.overdue else "ok",
            "reason": status.reason, "next_due": str(due) if due is not None else None}


def device_json(ctx: Ctx, slot: DeviceSlot) -> dict[str, object]:
    run = slot.busy_with
    return {"name": slot.name, "profile": slot.row.profile,
            "modality": slot.profile.modality if slot.profile else None,
            "port": slot.row.port, "present": slot.watch.present or isinstance(run, Run),
            "problem": slot.watch.problem, "identity": slot.watch.identity,
            "calibration": calibration_json(ctx, slot),
            "state": ctx.runs.device_state(slot),
            "session": run.summary() if isinstance(run, Run) else None}


@router.get("/devices")
def devices(ctx: Ctx, login: Authenticated) -> dict[str, object]:
    return {"devices": [device_json(ctx, s) for s in ctx.slots.values()]}


@router.get("/devices/{name}")
def device(name: str, ctx: Ctx, login: Authenticated) -> dict[str, object]:
    slot = ctx.slots.get(name)
    if slot is None:
        raise ApiError(404, f"no registered device named '{name}'")
    return device_json(ctx, slot)


@router.get("/events")
async def events(request: Request, ctx: Ctx, login: Authenticated) -> StreamingResponse:
    """Server-Sent Events: `device` (state changes), `telemetry` (every poll of every
    session), `session` (a session's end, with `final: true`), `hello` first with the
    whole room, `dropped` when this client fell too far behind (reconnect)."""
    ctx.hub.bind(asyncio.get_running_loop())
    sub = ctx.hub.subscribe()
    if sub is None:
        raise ApiError(503, "too many live-stream clients; try again later")
    first: dict[str, object] = {"devices": [device_json(ctx, s) for s in ctx.slots.values()]}
    return StreamingResponse(_stream(request, ctx, sub, first), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _stream(request: Request, ctx: Ctx, sub: Subscriber,
                  first: dict[str, object]) -> AsyncIterator[str]:
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
                yield ": keep-alive\n\n"
                continue
            yield sse(event)
            if event.get("kind") == CLOSING:
                return
    finally:
        ctx.hub.unsubscribe(sub)
