"""What technicians do to the room's devices over the API: register a device, and release
a device's port to a CLI tool (calibration, `devices pin`) and hold it again.

A registration identifies the device first (read-only), as `modctl devices add` does, and
pins the profile file's hash, in the service's room; the service then holds and watches it
like the others.
Calibration itself stays on the CLI (`modctl calibrate`): it needs the technician at the
device with a reference instrument, and the service gives the port up for it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from controller.calibration.gate import real_port
from controller.device.idle import idle_variables
from controller.device.link import DeviceLink, identify
from controller.profiles.identity import IdentityError
from controller.profiles.loader import ProfileError, resolve_profile, shipped_profile_paths
from controller.records.clinic_tables import ClinicError
from controller.service.api_auth import Ctx, role
from controller.service.api_devices import device_json
from controller.service.api_sessions import slot_named
from controller.service.auth import Login
from controller.service.devices import DeviceSlot
from controller.service.http_errors import ApiError
from protocols.errors import ProtocolError

router = APIRouter(prefix="/api", tags=["devices"])

Technician = Annotated[Login, Depends(role("technician", "register or release devices"))]


class NewDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=40)
    profile: str = Field(min_length=1, max_length=64, description="a shipped profile id")
    port: str = Field(min_length=1, max_length=256)


@router.post("/devices", status_code=201)
def register(body: NewDevice, ctx: Ctx, login: Technician) -> dict[str, object]:
    if body.profile not in shipped_profile_paths():
        raise ApiError(422, f"profile '{body.profile}' is not a shipped profile id (known: "
                            f"{', '.join(sorted(shipped_profile_paths()))}); register a "
                            "profile file with `modctl devices add` on the clinic PC")
    if body.name in ctx.slots:
        raise ApiError(409, f"device '{body.name}' is already registered")
    try:
        loaded = resolve_profile(body.profile)
    except ProfileError as exc:
        raise ApiError(422, "; ".join(exc.problems)) from None
    try:
        link = DeviceLink.open(loaded.profile, body.port)
    except ProtocolError as exc:
        text = str(exc)  # the transport's sentence already names the port
        raise ApiError(409, text if text.startswith("cannot open") else
                       f"cannot open {body.port}: {text}") from None
    try:
        found = identify(link, idle_variables(loaded.profile)[0])
    except (ProtocolError, IdentityError) as exc:
        raise ApiError(409, f"the device on {body.port} did not identify as the "
                            f"{loaded.profile.model} of the profile: {exc}") from None
    finally:
        link.close()
    try:
        row = ctx.store.add_device(body.name, loaded.profile.id, body.port, login.account.name,
                                   serial=found.identity.get("serial"),
                                   model=found.identity.get("model"),
                                   profile_path=loaded.source_path,
                                   profile_sha256=loaded.sha256, port_real=real_port(body.port),
                                   room=ctx.options.room)
    except ClinicError as exc:
        raise ApiError(409, str(exc)) from None
    slot = ctx.add_slot(row)
    return device_json(ctx, slot)


def _idle(slot: DeviceSlot) -> None:
    if slot.busy_with is not None:
        raise ApiError(409, f"device '{slot.name}' is running a session; stop it first")


@router.post("/devices/{name}/release")
def release(name: str, ctx: Ctx, login: Technician) -> dict[str, object]:
    slot = slot_named(ctx, name)
    with slot.lock:
        _idle(slot)
        slot.release(login.account.name)
    ctx.store.audit(login.account.name, "service.device_release", f"device/{name}", {})
    return device_json(ctx, slot)


@router.post("/devices/{name}/hold")
def hold(name: str, ctx: Ctx, login: Technician) -> dict[str, object]:
    slot = slot_named(ctx, name)
    slot.hold()
    slot.look()
    ctx.store.audit(login.account.name, "service.device_hold", f"device/{name}", {})
    return device_json(ctx, slot)
