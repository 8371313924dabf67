"""Per-modality judgement of telemetry and device events during a session.

Three questions, asked on every sample while output should run: does the
device still deliver what was commanded (within the profile's tolerances)?
If the output is off, who or what stopped it? Does an event end the session?
Interlocks on measured values (pad temperature, applicator, impedance) are
the dose meters' job (`controller.modality`); this module reads the device's
own state and flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from controller.prescription import Prescription
from controller.profile import Profile
from protocols.engine import DeviceEvent
from protocols.map_framed import EventKind

# Outcomes and who ended the output (docs/design.md §4.4).
COMPLETED, ABORTED, FAULT, REJECTED = "completed", "aborted", "fault", "rejected"
BY_CONTROLLER, BY_DEVICE_TIMER, BY_DEVICE_WATCHDOG = "controller", "device_timer", \
    "device_watchdog"
BY_INTERLOCK, BY_OPERATOR, BY_PATIENT = "interlock", "operator", "patient"

@dataclass(frozen=True)
class Verdict:
    outcome: str
    stop_source: str
    reason: str


# What a fault class (the profile's word for a code or event) means for the session.
CLASS_VERDICTS: dict[str, tuple[str, str]] = {
    "interlock": (FAULT, BY_INTERLOCK),
    "device_fault": (FAULT, BY_INTERLOCK),
    "link": (FAULT, BY_DEVICE_WATCHDOG),
    "patient": (ABORTED, BY_PATIENT),
    "timer": (FAULT, BY_DEVICE_TIMER),
}
# Reasons for the classes whose cause is the same on every device.
WATCHDOG_REASON = "device watchdog expired"
TIMER_REASON = "device session timer ended the output"
UNKNOWN_LABEL = "unknown"


@dataclass(frozen=True)
class ReportedFault:
    """A fault code a device reports, read through the profile's table."""

    telemetry: str
    code: int | str
    label: str
    fault_class: str

    def verdict(self) -> Verdict:
        outcome, source = CLASS_VERDICTS[self.fault_class]
        if self.fault_class == "link":
            return Verdict(outcome, source, WATCHDOG_REASON)
        if self.fault_class == "timer":
            return Verdict(outcome, source, TIMER_REASON)
        return Verdict(outcome, source, f"device fault {self.code}: {self.label}")


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
        number = _float(value)
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


def output_running(profile: Profile, t: Mapping[str, object]) -> bool:
    return bool(t.get("output_on"))


def explain_stop(profile: Profile, t: Mapping[str, object]) -> Verdict:
    """Why the device's output is off when the controller did not stop it."""
    m = profile.modality
    faults = reported_faults(profile, t)
    if m == "thermal":
        if t.get("watchdog_expired"):
            return Verdict(FAULT, BY_DEVICE_WATCHDOG, "device watchdog expired")
        if t.get("timer_expired"):
            return Verdict(FAULT, BY_DEVICE_TIMER, "device session timer ended the output")
        if t.get("trip_high"):
            return Verdict(FAULT, BY_INTERLOCK, "over-temperature: device trip latched")
        if t.get("trip_low"):
            return Verdict(FAULT, BY_INTERLOCK, "under-temperature: device trip latched")
        if t.get("pad_connected") is False:
            return Verdict(FAULT, BY_INTERLOCK, "pad off: the pad is disconnected")
        if faults:
            return faults[0].verdict()
    elif m == "ultrasound":
        if faults:
            return faults[0].verdict()
        if t.get("state") == "done":
            return Verdict(FAULT, BY_DEVICE_TIMER, "device session timer ended the output")
    elif m == "tens":
        if t.get("channel_state") == "lead_off":
            return Verdict(FAULT, BY_INTERLOCK, "lead off: the device stopped the channel")
        if t.get("patient_stop"):
            return Verdict(ABORTED, BY_PATIENT, "patient stop switch pressed")
        if t.get("watchdog_expired"):
            return Verdict(FAULT, BY_DEVICE_WATCHDOG, "device watchdog expired")
        if t.get("estop_latched"):
            return Verdict(FAULT, BY_INTERLOCK, "device e-stop latched (over-current or "
                                                "patient stop)")
        if faults:
            return faults[0].verdict()
        if _int(t.get("remaining_s")) == 0:
            return Verdict(FAULT, BY_DEVICE_TIMER, "device session timer ended the output")
    return Verdict(FAULT, BY_INTERLOCK, "the device stopped the output for no reported reason")


def device_interlock(profile: Profile, t: Mapping[str, object]) -> Verdict | None:
    """A cause the device reports for an output being off that is a fault or a patient
    stop (not a plain "off", not its timer): it outranks a stop the controller sent."""
    verdict = explain_stop(profile, t)
    if verdict.stop_source in (BY_INTERLOCK, BY_PATIENT) and \
            "no reported reason" not in verdict.reason:
        return verdict
    return None


def latched_fault(profile: Profile, t: Mapping[str, object]) -> str | None:
    """A latched fault reported at identification: no output may start."""
    m = profile.modality
    faults = reported_faults(profile, t)
    if m == "thermal":
        if t.get("trip_high") or t.get("trip_low") or faults:
            label = faults[0].label if faults else "trip"
            return f"device reports a latched fault ({label})"
        if t.get("pad_connected") is False:
            return "the pad is not connected"
    elif m == "ultrasound":
        if t.get("state") == "fault" or faults:
            shown = f"fault {faults[0].code} ({faults[0].label})" if faults else \
                "a latched fault"
            return f"device reports {shown}"
    elif faults:
        f = faults[0]
        return f"device reports fault {f.code} ({f.label})"
    if m == "tens" and t.get("estop_latched"):
        return "device e-stop is latched"
    if t.get("output_on"):
        return "the device output is already on (left running by another controller?)"
    return None


def verify(profile: Profile, rx: Prescription, t: Mapping[str, object]) -> Verdict | None:
    """Telemetry against what was commanded, within the profile's tolerances."""
    tol = profile.safety.tolerances
    m, v = profile.modality, rx.values
    problem = None
    if m == "thermal" and "setpoint_c" in tol:
        problem = _mismatch("setpoint", t.get("setpoint_c"), v.get("temperature_c"),
                            tol["setpoint_c"], "degC")
    elif m == "ultrasound":
        if "intensity_w_cm2" in tol:
            problem = _mismatch("intensity", t.get("intensity_w_cm2"),
                                v.get("intensity_w_cm2"), tol["intensity_w_cm2"], "W/cm2")
        power, era = _float(t.get("power_w")), _float(t.get("era_cm2"))
        if problem is None and "power_rel" in tol and t.get("state") == "running" \
                and power is not None and era:
            expected = float(v["intensity_w_cm2"]) * era * float(v["duty_pct"]) / 100.0
            if expected > 0 and abs(power - expected) > tol["power_rel"] * expected:
                problem = (f"measured power {power:.2f} W is not the commanded "
                           f"{expected:.2f} W (tolerance {tol['power_rel']:.0%})")
    elif m == "tens" and "amplitude_ma" in tol and t.get("channel_state") == "running":
        problem = _mismatch("delivered amplitude", t.get("amplitude_ma"),
                            v.get("amplitude_ma"), tol["amplitude_ma"], "mA")
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
    outcome, source = CLASS_VERDICTS[fault_class]
    if fault_class == "link":
        return Verdict(outcome, source, WATCHDOG_REASON)
    if fault_class == "timer":
        return Verdict(outcome, source, TIMER_REASON)
    if kind is None:
        return Verdict(outcome, source, f"device event {event.kind} ({event.fields})")
    return Verdict(outcome, source, kind.text(event.fields.get("value")))


# The event channel byte that means "every channel".
ALL_CHANNELS = 0xFF


def _event_kind(profile: Profile, name: str) -> EventKind | None:
    events = getattr(profile.protocol, "events", None)
    if events is None:
        return None
    return next((k for k in events.kinds.values() if k.name == name), None)


def _mismatch(what: str, got: object, want: object, tol: float, unit: str) -> str | None:
    g, w = _float(got), _float(want)
    if g is None or w is None:
        return f"{what}: device reports {got!r}, commanded {want!r}"
    if abs(g - w) > tol:
        return f"{what}: device reports {g:g} {unit}, commanded {w:g} {unit} (tolerance {tol:g})"
    return None


def _float(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _int(value: object) -> int:
    f = _float(value)
    return int(f) if f is not None else 0
