"""Per-modality judgement of telemetry and device events during a session.

Three questions, asked on every sample while output should run: does the
device still deliver what was commanded (within the profile's tolerances)?
If the output is off, who or what stopped it? Does an event end the session?
Interlocks on measured values (pad temperature, applicator, impedance) are
the dose meters' job (`controller.modality.rules`); this module reads the device's
own state and flags.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.modality.prescription import Prescription
from controller.modality.rules import modality_for
from controller.profiles.model import Profile
from controller.session.verdicts import (
    Outcome,
    StopSource,
    Verdict,
    class_verdict,
    reported_faults,
)
from protocols.engine import DeviceEvent
from protocols.map_framed import EventKind

__all__ = ["ABORTED", "BY_CONTROLLER", "BY_DEVICE_TIMER", "BY_DEVICE_WATCHDOG", "BY_INTERLOCK",
           "BY_OPERATOR", "BY_PATIENT", "COMPLETED", "FAULT", "REJECTED", "Verdict",
           "device_interlock", "event_verdict", "explain_stop", "latched_fault",
           "output_running", "verify"]

# Outcomes and who ended the output (docs/design.md §4.4), as the rest of the code names them.
COMPLETED, ABORTED, FAULT, REJECTED = (Outcome.COMPLETED, Outcome.ABORTED, Outcome.FAULT,
                                       Outcome.REJECTED)
BY_CONTROLLER, BY_DEVICE_TIMER, BY_DEVICE_WATCHDOG = (
    StopSource.CONTROLLER, StopSource.DEVICE_TIMER, StopSource.DEVICE_WATCHDOG)
BY_INTERLOCK, BY_OPERATOR, BY_PATIENT = (StopSource.INTERLOCK, StopSource.OPERATOR,
                                         StopSource.PATIENT)
NO_REASON = "the device stopped the output for no reported reason"


def output_running(profile: Profile, t: Mapping[str, object]) -> bool:
    return bool(t.get("output_on"))


def explain_stop(profile: Profile, t: Mapping[str, object]) -> Verdict:
    """Why the device's output is off when the controller did not stop it."""
    found = modality_for(profile).explain_stop(t, reported_faults(profile, t))
    return found or Verdict(FAULT, BY_INTERLOCK, NO_REASON)


def device_interlock(profile: Profile, t: Mapping[str, object]) -> Verdict | None:
    """A cause the device reports for an output being off that is a fault or a patient
    stop (not a plain "off", not its timer): it outranks a stop the controller sent."""
    verdict = modality_for(profile).explain_stop(t, reported_faults(profile, t))
    if verdict is not None and verdict.stop_source in (BY_INTERLOCK, BY_PATIENT):
        return verdict
    return None


def latched_fault(profile: Profile, t: Mapping[str, object]) -> str | None:
    """A latched fault reported at identification: no output may start."""
    found = modality_for(profile).latched_fault(t, reported_faults(profile, t))
    if found is None and t.get("output_on"):
        return "the device output is already on (left running by another controller?)"
    return found


def verify(profile: Profile, rx: Prescription, t: Mapping[str, object]) -> Verdict | None:
    """Telemetry against what was commanded, within the profile's tolerances."""
    problem = modality_for(profile).verify(rx.values, t)
    return None if problem is None else Verdict(FAULT, BY_CONTROLLER, problem)


def event_verdict(profile: Profile, event: DeviceEvent, channel: int | None) -> Verdict | None:
    """What an unsolicited device event means for this session (None: not ours).

    The profile's event kinds give each kind's class and words. A patient stop and a
    watchdog (link) end every channel's session; other events only their channel's.
    """
    kind = _event_kind(profile, event.kind)
    fault_class = kind.class_ if kind is not None else "device_fault"
    if fault_class == "none":
        return None
    ev_channel = event.fields.get("channel")
    mine = channel is None or ev_channel in (None, ALL_CHANNELS, channel)
    if not mine and fault_class not in ("patient", "link"):
        return None
    if kind is None:
        return class_verdict(fault_class, f"device event {event.kind} ({event.fields})")
    return class_verdict(fault_class, kind.text(event.fields.get("value")))


# The event channel byte that means "every channel".
ALL_CHANNELS = 0xFF


def _event_kind(profile: Profile, name: str) -> EventKind | None:
    events = getattr(profile.protocol, "events", None)
    if events is None:
        return None
    return next((k for k in events.kinds.values() if k.name == name), None)


