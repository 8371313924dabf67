"""The session variables: the values a profile's operations take as `$name`.

Built once per session from the prescription and the profile's safety section; the
device link only reads them. Names are the contract between profiles and the controller
(docs/profiles.md): the prescription's device and session values, plus the backstops.
"""

from __future__ import annotations

import math

from controller.device.stopping import RAMP_DOWN
from controller.modality.prescription import Prescription
from controller.profiles.model import Profile
from controller.session.timing import CONTROLLED_RAMP_DOWN_S
from protocols.map_common import Scalar

SessionVariables = dict[str, Scalar]

WATCHDOG = "watchdog_s"
TIMER = "timer_s"
RAMP_UP = "ramp_up_s"
CHANNEL = "channel"
CHANNEL_MASK = "channel_mask"


def session_variables(profile: Profile, rx: Prescription) -> SessionVariables:
    safety = profile.safety
    out: SessionVariables = dict(rx.device_values)
    out.update(rx.session_values)
    out[WATCHDOG] = safety.watchdog_s
    # Device timers count whole seconds: round up so the controller ends first.
    out[TIMER] = float(math.ceil(rx.duration_s + safety.timer_margin_s))
    out[RAMP_DOWN] = CONTROLLED_RAMP_DOWN_S
    out.setdefault(RAMP_UP, 0.0)
    if CHANNEL in out:
        out[CHANNEL_MASK] = float(1 << int(out[CHANNEL]))
    return out


def stop_ramps(profile: Profile) -> bool:
    """Whether the profile's stop takes the ramp-down time (a controlled ramp)."""
    steps = profile.operations.stop or []
    return any(v == "$" + RAMP_DOWN for s in steps for v in s.args.values())
