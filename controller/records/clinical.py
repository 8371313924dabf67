"""Session records in a clinician's words: the therapy's name, the prescription with units,
the outcome and who or what ended the output, the device, and times in the clinic's time zone.

One module for every place that shows a session to a person (the printable report,
`records show`, `records patient`, the FHIR export's display texts), so they say the same
thing. The dose figures and what they mean are `controller.records.dose_text`.

Records stay in UTC; `local_time` shows them in the machine's time zone, which is the clinic's
(as for bookings, `controller.clinic.clock`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from controller.records.history import format_number, number, session_modality
from controller.records.sessions import SessionRow

COLD_REGIME = "cold"
# What a modality is called on a clinical record (SNOMED CT codes: controller.records.fhir).
THERAPY_NAMES = {"heat": "Heat therapy", "cold": "Cold therapy",
                 "ultrasound": "Therapeutic ultrasound",
                 "tens": "TENS (transcutaneous electrical nerve stimulation)"}
UNKNOWN_THERAPY = "Treatment (modality not recorded)"
# A modality's name where heat and cold are counted together (patient totals).
MODALITY_NAMES = {"thermal": "Heat and cold therapy", "ultrasound": "Therapeutic ultrasound",
                  "tens": "TENS"}
# Prescription parameters as a clinician names them (the modality contract's record names).
PARAMETER_LABELS = {
    "temperature_c": "Pad temperature", "frequency_mhz": "Frequency",
    "intensity_w_cm2": "Intensity", "duty_pct": "Duty cycle", "frequency_hz": "Pulse rate",
    "pulse_width_us": "Pulse width", "amplitude_ma": "Amplitude (peak)",
    "electrode_area_cm2": "Electrode area (each)", "channel": "Channel",
    "waveform": "Waveform", "mode": "Mode", "duration_s": "Treatment time",
}
# Units from the suffix of a record name (the names are the modality contract's).
UNIT_SUFFIXES = sorted({
    "_ma_cm2": "mA/cm²", "_w_cm2": "W/cm²", "_j_cm2": "J/cm²", "_cm2": "cm²", "_mhz": "MHz",
    "_hz": "Hz", "_pct": "%", "_us": "µs", "_uc": "µC", "_ma": "mA", "_min": "min",
    "_ohm": "Ω", "_c": "°C", "_j": "J", "_w": "W", "_s": "s",
}.items(), key=lambda item: -len(item[0]))
# The same units in UCUM (FHIR Quantity.code, system http://unitsofmeasure.org).
UCUM = {"mA/cm²": "mA/cm2", "W/cm²": "W/cm2", "J/cm²": "J/cm2", "cm²": "cm2", "MHz": "MHz",
        "Hz": "Hz", "%": "%", "µs": "us", "µC": "uC", "mA": "mA", "min": "min", "Ω": "Ohm",
        "°C": "Cel", "J": "J", "W": "W", "s": "s"}
OUTCOME_WORDS = {
    "completed": "Completed as planned",
    "aborted": "Stopped early",
    "fault": "Stopped by a fault",
    "rejected": "Not started: refused before any output",
    "interrupted": "Interrupted: the controller stopped without closing the session",
}
STOP_SOURCE_WORDS = {
    "controller": "the controller", "operator": "the operator",
    "patient": "the patient's stop switch", "interlock": "a device safety interlock",
    "device_timer": "the device's own session timer",
    "device_watchdog": "the device's watchdog (the controller went silent)",
}
CONFIRM_OP = "confirm_stop"
START_OP = "start"
NOT_CONFIRMED = "stop not confirmed by device"
# Shorter than this a duration reads best in seconds ("90 s"), longer in minutes ("12 min").
SECONDS_UP_TO = 120.0


# -- the therapy and its prescription -----------------------------------------------------------

def therapy_kind(prescription: Mapping[str, Any] | None,
                 dose: Mapping[str, Any] | None = None) -> str:
    """`heat`, `cold`, `ultrasound`, `tens`, or `unknown`: the modality, with thermal split by
    its regime (a setpoint below skin temperature is cold therapy)."""
    modality = session_modality(prescription, dose)
    if modality == "thermal":
        regimes = [str(r) for r in (prescription or {}).get("regimes") or ()]
        return "cold" if COLD_REGIME in regimes else "heat"
    return modality if modality in THERAPY_NAMES else "unknown"


def therapy_name(prescription: Mapping[str, Any] | None,
                 dose: Mapping[str, Any] | None = None) -> str:
    return THERAPY_NAMES.get(therapy_kind(prescription, dose), UNKNOWN_THERAPY)


def modality_name(modality: str) -> str:
    return MODALITY_NAMES.get(modality, modality)


def unit_for(name: str) -> str:
    """The unit a record name carries in its suffix (`intensity_w_cm2` → W/cm²), or ''."""
    return next((unit for suffix, unit in UNIT_SUFFIXES if name.endswith(suffix)), "")


def with_unit(value: Any, unit: str) -> str:
    """`40 °C`, `2250 J`; a value that is not a number is shown as it is, without a unit."""
    text = format_number(value)
    return f"{text} {unit}" if unit and number(value) is not None else text


def duration_text(seconds: float | None) -> str:
    """`90 s`, `2 s`, `20 min`, `12 min 30 s`, `1 h 5 min`; `-` when unknown."""
    if seconds is None:
        return "-"
    if seconds < SECONDS_UP_TO:
        return f"{format_number(round(seconds, 1))} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "",
             f"{secs} s" if secs else ""]
    return " ".join(p for p in parts if p)


def parameter_text(name: str, value: Any) -> str:
    """One prescription value in clinical words and units."""
    if name == "duration_s":
        return duration_text(number(value))
    text = with_unit(value, unit_for(name))
    if name == "duty_pct" and number(value) is not None:
        text += " (continuous)" if number(value) == 100.0 else " (pulsed)"
    return text


def prescription_lines(prescription: Mapping[str, Any], planned_s: float) -> list[tuple[str, str]]:
    """(label, value) per prescribed value, then the treatment time. A record without
    `values` (written by hand or by an early modctl) shows the parameters it names."""
    values: Mapping[str, Any] = prescription.get("values") or {
        k: v for k, v in prescription.items() if k in PARAMETER_LABELS and k != "duration_s"}
    lines = [(PARAMETER_LABELS.get(name, name.replace("_", " ").capitalize()),
              parameter_text(name, value)) for name, value in values.items()]
    lines.append((PARAMETER_LABELS["duration_s"],
                  duration_text(number(prescription.get("duration_s", planned_s)))))
    return lines


def prescription_summary(prescription: Mapping[str, Any], planned_s: float) -> str:
    """`Pad temperature 40 °C, treatment time 20 min`."""
    parts = [f"{label} {value}" for label, value in prescription_lines(prescription, planned_s)]
    return ", ".join(p if i == 0 else p[0].lower() + p[1:] for i, p in enumerate(parts))


# -- how it ended -------------------------------------------------------------------------------

def outcome_words(session: SessionRow) -> str:
    if session.outcome is None:
        return "In progress (the session is still open)"
    return OUTCOME_WORDS.get(session.outcome, session.outcome)


def outcome_sentence(session: SessionRow) -> str:
    """`Stopped early: patient stop pressed. The output was ended by the patient's stop
    switch.`"""
    text = outcome_words(session)
    if session.reason:
        text += f": {session.reason}"
    text += "."
    stopped_by = session.stop_source or ""
    source = STOP_SOURCE_WORDS.get(stopped_by, f"the {stopped_by.replace('_', ' ')}")
    if stopped_by and session.outcome != "rejected":
        text += f" The output was ended by {source}."
    return text


def stop_confirmation(session: SessionRow) -> tuple[bool | None, str]:
    """Whether the device confirmed its output off after the stop, from the events."""
    events = session.events
    if any(e.kind == "reply" and e.detail.get("op") == CONFIRM_OP for e in events):
        return True, "yes: the device reported its output off"
    if NOT_CONFIRMED in (session.reason or "") or any(
            e.kind == "fault" and e.detail.get("reason") == NOT_CONFIRMED for e in events):
        return False, f"NO: {NOT_CONFIRMED}"
    if not any(e.kind == "command" and e.detail.get("op") == START_OP for e in events):
        return None, "not applicable: no output was started"
    return None, "unknown: no confirmation was recorded"


def delivered_text(session: SessionRow) -> str:
    """`20 min of 20 min planned`."""
    return f"{duration_text(session.delivered_s)} of {duration_text(session.planned_s)} planned"


# -- the device ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceInfo:
    manufacturer: str
    model: str
    serial: str
    firmware: str
    reported_model: str = ""
    """The model the device itself reported, when it differs from the profile's name."""

    def text(self) -> str:
        """`Generic Therapy Devices US-300, serial 1001, firmware 1.00`."""
        name = " ".join(p for p in (self.manufacturer, self.model) if p) or "unknown device"
        parts = [name]
        if self.reported_model:
            parts.append(f"reports model {self.reported_model}")
        parts.append(f"serial {self.serial or 'not reported'}")
        if self.firmware:
            parts.append(f"firmware {self.firmware}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, str]:
        return {"manufacturer": self.manufacturer, "model": self.model, "serial": self.serial,
                "firmware": self.firmware, "reported_model": self.reported_model}


def device_info(session: SessionRow | Mapping[str, Any]) -> DeviceInfo:
    """Who made the device and what it is (from its profile), and the identity it reported
    at identification (serial number, firmware), as recorded on the session."""
    def get(key: str) -> Any:
        return session.get(key) if isinstance(session, Mapping) else getattr(session, key)

    identity = _identity(get("identity") or {}, get("events") or ())
    vendor, model = profile_maker(str(get("profile") or ""), str(get("profile_path") or ""))
    reported = _text(identity.get("model"))
    return DeviceInfo(
        manufacturer=vendor or _text(identity.get("idn.vendor") or identity.get("vendor")),
        model=model or reported, serial=_text(identity.get("serial")),
        firmware=_text(identity.get("firmware")),
        reported_model=reported if model and reported and reported != model else "")


def _identity(identity: Mapping[str, Any], events: Any) -> Mapping[str, Any]:
    if identity:
        return identity
    for e in events:  # records from before the identity was kept on the session row
        kind = e.kind if hasattr(e, "kind") else e.get("kind")
        detail = e.detail if hasattr(e, "detail") else e.get("detail") or {}
        if kind == "reply" and detail.get("op") == "identify":
            found = detail.get("identity")
            return found if isinstance(found, Mapping) else {"model": found}
    return {}


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, default=str)


@lru_cache(maxsize=64)
def profile_maker(profile: str, profile_path: str = "") -> tuple[str, str]:
    """(vendor, model) of a device profile: the file the session ran on, else the shipped
    profile of that id; ("", "") when neither can be read (a profile since removed)."""
    # Imported here: the loader brings pydantic, which `records list` need not pay for.
    from controller.profiles.loader import ProfileError, load_profile_file, resolve_profile
    try:
        if profile_path and Path(profile_path).is_file():
            loaded = load_profile_file(profile_path)
        elif profile:
            loaded = resolve_profile(profile)
        else:
            return "", ""
    except (ProfileError, OSError, ValueError):
        return "", ""
    return loaded.profile.vendor, loaded.profile.model


# -- times --------------------------------------------------------------------------------------

def local_time(iso: str | None, *, seconds: bool = False) -> str:
    """A record's UTC time stamp in the clinic's time zone: `2026-12-04 13:02 CET`."""
    if not iso:
        return "-"
    try:
        moment = datetime.fromisoformat(iso).astimezone()
    except ValueError:
        return iso
    return moment.strftime(f"%Y-%m-%d %H:%M{':%S' if seconds else ''} %Z").strip()


def local_zone() -> str:
    """The clinic's time zone as the machine names it (`CET`, `UTC`)."""
    return datetime.now().astimezone().strftime("%Z") or "local time"
