"""Everything checked before a plan's first step: ports, limits, dose budgets, the devices.

Every device role has a port, every step gets a fresh prescription inside its
limits, the summed dose of each modality's steps is within its budget, and every
device is reached, identifies itself as its profile's model, reports no latched
fault and supplies the facts the remaining limits need (the ultrasound ERA).
Every problem is returned; nothing here commands output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from controller.device.link import DeviceLink, identify
from controller.modality.dose_budget import budget_problems
from controller.modality.prescription import Prescription, PrescriptionRejected, apply_device_facts
from controller.plans.plan import Plan, PlanError
from controller.profiles.model import IdentityError, Profile
from controller.session.worker import Session
from protocols.errors import ProtocolError

LinkFactory = Callable[[Profile, str], DeviceLink]
DeviceCheck = Callable[[str, Profile, str], str | None]
"""(role, profile, port) -> a reason the device may not be used (calibration overdue), or None."""
PlanCheck = Callable[[Plan], list[str]]
"""plan -> reasons the plan may not start for this patient (the minimum interval), or []."""


def match_devices(plan: Plan, devices: Mapping[str, tuple[str, str]],
                  by_role: Mapping[str, str] | None = None) -> dict[str, str]:
    """Ports by role from devices given as `NAME -> (profile id, port)`.

    With `by_role` (role -> device name) each role takes the device named for it;
    otherwise the one device with the role's profile. PlanError when a role has no
    device, one of the wrong profile, or more than one to choose from.
    """
    ports: dict[str, str] = {}
    problems: list[str] = []
    have = ", ".join(f"{n} ({p})" for n, (p, _) in sorted(devices.items())) or "none"
    for role, pid in plan.roles().items():
        if by_role:
            name = by_role.get(role)
            if name is not None and name in devices and devices[name][0] == pid:
                fits = [name]
            else:
                what = (f"no device is booked for it (booked: {have})" if name is None else
                        f"the device booked for it, '{name}', is " +
                        (f"a {devices[name][0]}" if name in devices else "not available"))
                problems.append(f"device role '{role}' needs a {pid} device: {what}")
                continue
        else:
            fits = sorted(name for name, (prof, _) in devices.items() if prof == pid)
        if len(fits) == 1:
            ports[role] = devices[fits[0]][1]
        elif not fits:
            problems.append(f"device role '{role}' needs a {pid} device, and none is booked "
                            f"(booked: {have})")
        else:
            problems.append(f"device role '{role}' needs a {pid} device: {', '.join(fits)} "
                            "all are, so which one is ambiguous")
    if problems:
        raise PlanError(plan.source, problems)
    return ports


def precheck(plan: Plan, ports: Mapping[str, str], device_check: DeviceCheck | None = None,
             link_factory: LinkFactory = DeviceLink.open,
             plan_check: PlanCheck | None = None) -> tuple[dict[int, Prescription], list[str]]:
    """Fresh prescriptions by step index, and every reason the plan may not start.

    Devices are only contacted when the ports, the limits, the summed dose of each modality's
    steps (`dose_budget`) and `plan_check` are in order; the doses that need a device fact (the
    ultrasound energy) are summed again once the devices have reported it.
    """
    problems: list[str] = []
    for role, profile in plan.profiles.items():
        if not ports.get(role, "").strip():
            problems.append(f"device role '{role}' ({profile.id}) has no port: give "
                            f"--device {role}=PORT")
    problems += [f"device {role}={port}: the plan has no device role '{role}' (roles: "
                 f"{', '.join(plan.profiles)})" for role, port in ports.items()
                 if role not in plan.profiles]
    rxs: dict[int, Prescription] = {}
    for step in plan.steps:
        try:
            rxs[step.index] = step.prescription()
        except PrescriptionRejected as exc:
            problems += [f"{step.label()}: {m}" for m in exc.messages()]
    problems += budget_problems(_planned(plan, rxs))
    if plan_check is not None:
        problems += plan_check(plan)
    if device_check is not None:
        for role, profile in plan.profiles.items():
            port = ports.get(role, "").strip()
            reason = device_check(role, profile, port) if port else None
            if reason:
                problems.append(f"device role '{role}' ({profile.id}) on {port}: {reason}")
    if problems:
        return rxs, problems
    for role, profile in plan.profiles.items():
        steps = [s for s in plan.steps if s.role == role]
        port = ports[role]
        facts, problem = _probe(profile, rxs[steps[0].index], port, link_factory)
        if problem:
            problems.append(f"device role '{role}' ({profile.id}) on {port}: {problem}")
            continue
        for step in steps:
            try:
                rxs[step.index] = apply_device_facts(profile, rxs[step.index], facts)
            except PrescriptionRejected as exc:
                problems += [f"{step.label()}: {m}" for m in exc.messages()]
    if not problems:  # the first sum found nothing: only doses known from facts are new
        problems += budget_problems(_planned(plan, rxs))
    return rxs, problems


def _planned(plan: Plan, rxs: Mapping[int, Prescription]) -> list[tuple[str, Prescription]]:
    return [(s.label(), rxs[s.index]) for s in plan.steps if s.index in rxs]


def _probe(profile: Profile, rx: Prescription, port: str,
           link_factory: LinkFactory) -> tuple[dict[str, float], str]:
    """Identify the device (read-only) and read its facts; a reason when it cannot be used."""
    variables = Session(profile, rx, port).variables
    try:
        link = link_factory(profile, port)
    except ProtocolError as exc:
        text = str(exc)
        return {}, text if text.startswith("cannot open") else f"cannot open the port: {text}"
    try:
        found = identify(link, variables)
    except (ProtocolError, IdentityError) as exc:
        return {}, f"did not identify as the {profile.vendor} {profile.model} of the profile: {exc}"
    finally:
        link.close()
    if found.latched_fault:
        return {}, f"not ready: {found.latched_fault}"
    return found.facts, ""
