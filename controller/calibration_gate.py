"""Refuse a device whose calibration is overdue, before anything could start an output.

DESIGN §2.1: no output starts on a device whose calibration is overdue, when its profile sets a
calibration interval. Session, plan and booking commands call `check_calibration` once they know
the profile and where the device is, and refuse (exit 3) when it returns a reason.

Which device is "the device": calibrations belong to a registered device (`modctl devices add`),
by name. `device_name_or_port` is a registered name, or the port a session was given; a port
resolves to the registered (not removed) device on that port. A bare port with no registered
device cannot be checked: the controller cannot tell which physical unit is behind it before it
has talked to it, and it keeps a calibration history only for registered devices. Such a
session is allowed (a demo with the simulator on a new machine), unless the clinic sets
`clinic.require_registered_devices: true` in the roles file, which refuses it.

A device that was never calibrated, whose profile sets an interval, counts as overdue.
"""

from __future__ import annotations

from datetime import datetime

from controller.profile import Profile
from controller.profile_loader import ProfileError, resolve_profile
from controller.records import RecordStore


def check_calibration(store: RecordStore, profile: Profile, device_name_or_port: str,
                      at: datetime, *, require_registered: bool = False) -> str | None:
    """A refusal reason, or None when the device may be used at `at`."""
    ref = device_name_or_port
    device = store.device(ref)
    if device is not None and device.removed:
        return (f"device '{device.name}' was taken out of service on "
                f"{(device.removed_at or '')[:10]} by {device.removed_by}; it may not be used")
    if device is None:
        device = store.device_on_port(ref)
    if device is None:
        if require_registered:
            return (f"no registered device on {ref}: this clinic requires every device to be "
                    "registered (modctl devices add) so its calibration can be checked")
        return None
    mismatch = profile_mismatch(device.profile, profile)
    if mismatch:
        return f"device '{device.name}' {mismatch}"
    if profile.calibration is None:
        return None
    status = store.calibration_status(device.name, at)
    if not status.overdue:
        return None
    return (f"device '{device.name}' ({profile.id}) is out of calibration: {status.reason}; "
            f"the {profile.id} profile requires calibration every "
            f"{profile.calibration.interval_days} days; a technician must calibrate it first "
            f"(modctl calibrate {device.name})")


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
