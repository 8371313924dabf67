"""What a booking must satisfy, when it is made and again when the clinician starts it.

The store checks the two races (device double-booked, another booking of the same modality for
the patient too close) inside its insert transaction; everything else is checked here: the
patient id, the time, the device, its calibration, the prescription's limits, a plan's summed
dose per modality, and the patient's recorded sessions. The patient rules (id, minimum interval)
and the plan dose budget are shared with `session run` and `plan run` (`patient_rules`,
`dose_budget`). Each check returns plain reasons; an empty list means the booking may go on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from controller.calibration.gate import check_calibration, profile_mismatch
from controller.clinic.clock import show
from controller.clinic.patients import PatientIdError, interval_conflict
from controller.clinic.patients import check_patient_id as _check_patient_id
from controller.modality.dose_budget import plan_budget_problems
from controller.modality.prescription import Prescription, PrescriptionRejected, build_prescription
from controller.plans.plan import Plan, PlanError, load_plan
from controller.profiles.loader import ProfileError, resolve_profile
from controller.profiles.model import Profile
from controller.records.clinic_tables import DeviceRow
from controller.records.store import RecordStore

# `--at 09:30` typed during 09:30 means now, not the past.
PAST_GRACE_S = 60.0
# A booking may be started this long before its time (the patient is early, the room is free).
START_EARLY_S = 30 * 60.0
# The device role of a one-session booking (a plan booking uses the plan's roles).
PROFILE_ROLE = "device"

Booked = dict[str, tuple[DeviceRow, Profile]]
"""Registered device and its profile, by device role."""


class BookingInputError(ValueError):
    """A value typed at the command line is malformed (a usage error); names the option."""


def check_patient_id(text: str) -> str:
    """The one patient id rule (`patient_rules`), as a booking usage error."""
    try:
        return _check_patient_id(text)
    except PatientIdError as exc:
        raise BookingInputError(str(exc)) from None


def load_profile(ref: str) -> Profile | str:
    """The profile, or why it cannot be loaded."""
    try:
        return resolve_profile(ref).profile
    except ProfileError as exc:
        return f"profile {ref}: " + "; ".join(exc.problems)


def device_and_profile(store: RecordStore, name: str) -> tuple[DeviceRow, Profile] | str:
    """The registered device and its profile, or why it cannot be used."""
    device = store.device(name)
    if device is None:
        known = ", ".join(d.name for d in store.devices()) or "none registered"
        return f"--device: there is no registered device '{name}' (devices: {known})"
    if device.removed:
        return (f"--device: device '{name}' was taken out of service on "
                f"{(device.removed_at or '')[:10]}")
    profile = load_profile(device.profile)
    if isinstance(profile, str):
        return f"device '{name}': {profile}"
    return device, profile


def load_plan_or_reasons(ref: str) -> Plan | list[str]:
    """The plan, or every reason it cannot be booked (its steps' summed doses included)."""
    try:
        plan = load_plan(ref)
    except PlanError as exc:
        return [f"--plan {ref}: {p}" for p in exc.problems]
    over = plan_budget_problems(plan)
    return [f"--plan {ref}: {p}" for p in over] if over else plan


def booked_devices(store: RecordStore, given: Sequence[str],
                   plan: Plan | None) -> Booked | list[str]:
    """Each device role and its registered device and profile, from `--device` values.

    A one-session booking takes one `--device NAME` (role `device`). A plan booking takes one
    device per device role of the plan: `--device ROLE=NAME`, or just `NAME` when its profile
    fits exactly one role."""
    found: dict[str, tuple[DeviceRow, Profile]] = {}
    explicit: dict[str, str] = {}
    problems: list[str] = []
    for text in given:
        role, sep, name = text.partition("=")
        name = name.strip() if sep else role.strip()
        got = device_and_profile(store, name)
        if isinstance(got, str):
            problems.append(got)
            continue
        if name in found:
            problems.append(f"--device: '{name}' is given twice")
            continue
        found[name] = got
        if sep:
            explicit[name] = role.strip()
    if problems:
        return problems
    if plan is None:
        if len(found) != 1 or explicit:
            return ["--device: a one-session booking takes exactly one --device NAME"]
        return {PROFILE_ROLE: next(iter(found.values()))}
    return _match_roles(plan, found, explicit)


def _match_roles(plan: Plan, found: Mapping[str, tuple[DeviceRow, Profile]],
                 explicit: Mapping[str, str]) -> Booked | list[str]:
    roles = plan.profiles
    out: Booked = {}
    problems: list[str] = []
    for name, role in explicit.items():
        if role not in roles:
            problems.append(f"--device {role}={name}: the plan has no device role '{role}' "
                            f"(roles: {', '.join(roles)})")
        elif role in out:
            problems.append(f"--device: role '{role}' is given twice")
        else:
            out[role] = found[name]
    free = [n for n in found if n not in explicit]
    for role, prof in roles.items():
        if role in out:
            continue
        fits = [n for n in free if profile_mismatch(found[n][0].profile, prof) is None]
        if len(fits) == 1:
            out[role] = found[fits[0]]
            free.remove(fits[0])
        elif fits:
            problems.append(f"--device: {', '.join(fits)} could all be the plan's '{role}' "
                            f"device; say which with --device {role}=NAME")
        else:
            problems.append(f"--device: the plan's '{role}' role needs a device with profile "
                            f"{prof.id}; none of the given devices has it")
    problems += [f"--device {n}: the plan has no device role for it" for n in free]
    for role, (device, _) in out.items():
        mismatch = profile_mismatch(device.profile, roles[role])
        if mismatch:
            problems.append(f"--device {role}={device.name}: device '{device.name}' {mismatch}")
    return problems or {role: out[role] for role in roles if role in out}


def prescription_or_reasons(profile: Profile, settings: Mapping[str, str],
                            duration_s: float) -> Prescription | list[str]:
    try:
        return build_prescription(profile, settings, duration_s)
    except PrescriptionRejected as exc:
        return exc.messages()


def check_new_booking(store: RecordStore, devices: Booked, *, settings: Mapping[str, str],
                      is_plan: bool, duration_s: float, starts_at: datetime, patient: str,
                      now: datetime, min_interval_s: float) -> list[str]:
    """Every reason to refuse the booking known before the store's own conflict checks."""
    reasons: list[str] = []
    if starts_at < now - timedelta(seconds=PAST_GRACE_S):
        reasons.append(f"--at {show(starts_at)} is in the past (now {show(now)})")
    if not is_plan:
        profile = devices[PROFILE_ROLE][1]
        rx = prescription_or_reasons(profile, settings, duration_s)
        if isinstance(rx, list):
            reasons += [f"prescription: {m}" for m in rx]
    end = starts_at + timedelta(seconds=duration_s)
    reasons += _device_checks(store, devices, patient, starts_at, end, end, min_interval_s,
                              f" (checked at the end of the booking, {show(end)})")
    return reasons


def check_start(store: RecordStore, starts_at: datetime, devices: Booked, patient: str,
                duration_s: float, now: datetime, min_interval_s: float) -> list[str]:
    """Re-validate a booking at the moment the clinician starts it."""
    reasons: list[str] = []
    if now < starts_at - timedelta(seconds=START_EARLY_S):
        reasons.append(f"the booking is for {show(starts_at)}; it can be started from "
                       f"{START_EARLY_S / 60:g} min before its time")
    elif now.astimezone().date() != starts_at.astimezone().date():
        reasons.append(f"the booking was for {show(starts_at)}, another day; book again")
    end = now + timedelta(seconds=duration_s)
    reasons += _device_checks(store, devices, patient, now, end, now, min_interval_s, "")
    return reasons


def _device_checks(store: RecordStore, devices: Booked, patient: str, start: datetime,
                   end: datetime, calibrated_at: datetime, min_interval_s: float,
                   when: str) -> list[str]:
    reasons: list[str] = []
    seen: set[str] = set()
    for device, profile in devices.values():
        refusal = check_calibration(store, profile, device.name, calibrated_at)
        if refusal:
            reasons.append(refusal + when)
        if profile.modality not in seen:
            seen.add(profile.modality)
            near = session_too_close(store, patient, profile, start, end, min_interval_s)
            if near:
                reasons.append(near)
    return reasons


def session_too_close(store: RecordStore, patient: str, profile: Profile, start: datetime,
                      end: datetime, min_interval_s: float) -> str | None:
    """A recorded session of the same modality for the patient closer than the interval (the
    rule every route shares: `patient_rules.interval_conflict`)."""
    return interval_conflict(store, patient, profile.modality, start, end, min_interval_s)
