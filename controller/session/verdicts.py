"""How a session ends, in words every route shares: outcomes, stop sources, verdicts, and the
faults a device reports through its profile's table (docs/design.md §4.4).

The modality rules (`controller.modality.rules`) and the session checks
(`controller.session.checks`) both speak this vocabulary; it depends on neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from controller.modality.readings import finite
from controller.profiles.model import Profile


class Outcome(StrEnum):
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAULT = "fault"
    REJECTED = "rejected"


class StopSource(StrEnum):
    """Who or what ended the output."""

    CONTROLLER = "controller"
    DEVICE_TIMER = "device_timer"
    DEVICE_WATCHDOG = "device_watchdog"
    INTERLOCK = "interlock"
    OPERATOR = "operator"
    PATIENT = "patient"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    stop_source: StopSource
    reason: str


# What a fault class (the profile's word for a code or event) means for the session.
CLASS_VERDICTS: dict[str, tuple[Outcome, StopSource]] = {
    "interlock": (Outcome.FAULT, StopSource.INTERLOCK),
    "device_fault": (Outcome.FAULT, StopSource.INTERLOCK),
    "link": (Outcome.FAULT, StopSource.DEVICE_WATCHDOG),
    "patient": (Outcome.ABORTED, StopSource.PATIENT),
    "timer": (Outcome.FAULT, StopSource.DEVICE_TIMER),
}
# Reasons for the classes whose cause is the same on every device.
WATCHDOG_REASON = "device watchdog expired"
TIMER_REASON = "device session timer ended the output"
UNKNOWN_LABEL = "unknown"


def class_verdict(fault_class: str, reason: str) -> Verdict:
    """The verdict of a fault class, with the shared words for link and timer faults."""
    outcome, source = CLASS_VERDICTS[fault_class]
    if fault_class == "link":
        reason = WATCHDOG_REASON
    elif fault_class == "timer":
        reason = TIMER_REASON
    return Verdict(outcome, source, reason)


@dataclass(frozen=True)
class ReportedFault:
    """A fault code a device reports, read through the profile's table."""

    telemetry: str
    code: int | str
    label: str
    fault_class: str

    def verdict(self) -> Verdict:
        return class_verdict(self.fault_class, f"device fault {self.code}: {self.label}")


def reported_faults(profile: Profile, t: Mapping[str, object]) -> list[ReportedFault]:
    """Every fault a fault-code telemetry value reports, in the profile's words.

    A code the profile does not list is a device fault (never "no fault"), and so is a
    value that is no whole number: text must never read as 0 and switch reporting off.
    """
    out = []
    for name in profile.faults:
        value = t.get(name)
        if value is None:
            continue   # not read (yet): nothing reported
        number = finite(value)
        if number is None or not number.is_integer():
            out.append(ReportedFault(name, str(value), f"unreadable fault code {value!r}",
                                     "device_fault"))
            continue
        code = int(number)
        entry = profile.fault(name, code)
        if entry is None:
            out.append(ReportedFault(name, code, UNKNOWN_LABEL, "device_fault"))
        elif entry.class_ != "none":
            out.append(ReportedFault(name, code, entry.label, entry.class_))
    return out


def mismatch(what: str, got: object, want: object, tol: float, unit: str) -> str | None:
    """Why a read-back value is not the commanded one (beyond `tol`), or None."""
    g, w = finite(got), finite(want)
    if g is None or w is None:
        return f"{what}: device reports {got!r}, commanded {want!r}"
    if abs(g - w) > tol:
        return f"{what}: device reports {g:g} {unit}, commanded {w:g} {unit} (tolerance {tol:g})"
    return None


