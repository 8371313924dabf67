"""Refuse a device that is not fit to use, keyed on the device itself, before any output.

Design invariant 1: no output starts on a device whose calibration is overdue, when its
profile sets a calibration interval. Calibrations belong to a registered device (`modctl
devices add`, by name). Outside testing reached an uncalibrated registered device by
spelling its port differently (`/dev/pts//N`, `/dev/pts/./N`, a by-id symlink) or by naming
a profile file of the same id without a `calibration:` section. So "the device" is found
three ways, and all must agree:

1. before connecting (`check_calibration`): by its registered name, or by the port's real
   path (every spelling and symlink of one device resolves to the same path);
2. after identification (`identity_gate`, passed to the Session as `on_identified`): by the
   model and serial number the device itself reports, whatever port reached it;
3. the calibration requirement and interval come from the profile the device was
   registered with (its pinned file), never from the file the command names; and a
   registered device's profile file must still have the hash pinned at registration
   (a changed file is refused until a technician registers it again: `devices pin`).

A device that no registration knows, on a port no registration knows, cannot be checked:
it is allowed (a demo with the simulator on a new machine) unless the clinic sets
`clinic.require_registered_devices: true` in the roles file. A registered device that was
never calibrated, whose registered profile sets an interval, counts as overdue.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from controller.profiles.loader import (
    LoadedProfile,
    ProfileError,
    load_profile_file,
    resolve_profile,
)
from controller.profiles.model import Profile
from controller.records.clinic_tables import DeviceRow
from controller.records.store import RecordStore


def real_port(port: str) -> str:
    """The port's real path: symlinks, `.`, `..` and `//` resolved. pyserial URLs
    (`loop://`, `socket://...`) are returned unchanged."""
    if "://" in port:
        return port
    return os.path.realpath(port)


def find_device(store: RecordStore, name_or_port: str) -> DeviceRow | None:
    """The registered device of that name, or the live one on that port (any spelling)."""
    device = store.device(name_or_port)
    if device is not None:
        return device
    real = real_port(name_or_port)
    return (store.device_on_real_port(real) or store.device_on_port(name_or_port)
            or store.device_on_port(real))


def check_calibration(store: RecordStore, profile: Profile, device_name_or_port: str,
                      at: datetime, *, require_registered: bool = False) -> str | None:
    """A refusal reason, or None when the device may be used at `at` as far as can be told
    before talking to it (the identity gate checks again once it has identified)."""
    device = find_device(store, device_name_or_port)
    if device is None:
        if require_registered:
            return (f"no registered device on {device_name_or_port}: this clinic requires "
                    "every device to be registered (modctl devices add) so its calibration "
                    "can be checked")
        return None
    return device_refusal(store, device, profile, at)


def device_refusal(store: RecordStore, device: DeviceRow, profile: Profile,
                   at: datetime) -> str | None:
    """Why this registered device may not run `profile` now, or None."""
    if device.removed:
        return (f"device '{device.name}' was taken out of service on "
                f"{(device.removed_at or '')[:10]} by {device.removed_by}; it may not be used")
    registered = registered_profile(device)
    if isinstance(registered, str):
        return f"device '{device.name}' {registered}"
    if registered.profile.id != profile.id:
        return f"device '{device.name}' is registered as a {registered.profile.id}, " \
               f"not a {profile.id}"
    calibration = registered.profile.calibration
    if calibration is None:
        return None
    status = store.calibration_status(device.name, at)
    if not status.overdue:
        return None
    return (f"device '{device.name}' ({registered.profile.id}) is out of calibration: "
            f"{status.reason}; its registered profile requires calibration every "
            f"{calibration.interval_days} days; a technician must calibrate it first "
            f"(modctl calibrate {device.name})")


def registered_profile(device: DeviceRow) -> LoadedProfile | str:
    """The profile the device was registered with, checked against its pinned hash; a
    sentence (completing "device NAME ...") when it cannot be used."""
    try:
        if device.profile_path and Path(device.profile_path).is_file():
            loaded = load_profile_file(device.profile_path)
        else:
            loaded = resolve_profile(device.profile)
    except ProfileError as exc:
        return (f"is registered with profile {device.profile}, which cannot be loaded: "
                + "; ".join(exc.problems))
    if device.profile_sha256 and loaded.sha256 != device.profile_sha256:
        return (f"is registered with profile file {loaded.source_path}, which has changed "
                f"since registration (SHA-256 {loaded.sha256[:12]}..., registered "
                f"{device.profile_sha256[:12]}...); a technician must check it and register "
                f"the device again (modctl devices pin {device.name})")
    return loaded


def identity_gate(store: RecordStore, profile: Profile, port: str, at: datetime, *,
                  require_registered: bool = False
                  ) -> Callable[[Mapping[str, str]], str | None]:
    """For `Session(on_identified=...)`: refuse by the identity the device reports."""
    expected = find_device(store, port)

    def gate(identity: Mapping[str, str]) -> str | None:
        model, serial = identity.get("model", ""), identity.get("serial", "")
        device = store.device_by_identity(model, serial) if model and serial else None
        if expected is not None and expected.serial and serial \
                and (expected.serial != serial or (expected.model or model) != model):
            return (f"the device on {port} reports {model} serial {serial}, but device "
                    f"'{expected.name}' registered there is serial {expected.serial}")
        if device is None:
            device = expected
        if device is None:
            if require_registered:
                return (f"{model} serial {serial} on {port} is not a registered device: this "
                        "clinic requires every device to be registered (modctl devices add)")
            return None
        return device_refusal(store, device, profile, at)

    return gate


def profile_mismatch(registered: str, profile: Profile) -> str | None:
    """Why a registered device's profile reference is not `profile`, or None when it is."""
    if registered == profile.id:
        return None
    try:
        found = resolve_profile(registered).profile.id
    except ProfileError as exc:
        return (f"is registered with profile {registered}, which cannot be loaded: "
                + "; ".join(exc.problems))
    if found != profile.id:
        return f"is registered as a {found}, not a {profile.id}"
    return None
