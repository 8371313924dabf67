"""The checks a plan passes before its first step, on the session-start service's clock and
rules: shared by `modctl plan run` and the clinic service's `POST /api/plans/run`."""

from __future__ import annotations

from datetime import timedelta

from controller.calibration.gate import check_calibration
from controller.clinic.patients import interval_conflict
from controller.plans.plan import Plan
from controller.plans.precheck import DeviceCheck, PlanCheck
from controller.profiles.model import Profile
from controller.session.service import SessionStarter


def calibration_gate(starter: SessionStarter) -> DeviceCheck:
    """Design invariant 1: no output on a device whose calibration is overdue (checked up
    front; each step's session checks again by the identity its device reports)."""
    def check(role: str, profile: Profile, port: str) -> str | None:
        assert starter.store is not None
        return check_calibration(starter.store, profile, port, starter.now(),
                                 require_registered=starter.rules.require_registered)
    return check


def interval_gate(starter: SessionStarter, patient: str | None) -> PlanCheck | None:
    """The patient's minimum interval, per modality of the plan, checked once before the first
    step (patient_rules): the plan's steps are one treatment and never block each other."""
    if patient is None:
        return None

    store = starter.store
    assert store is not None

    def check(plan: Plan) -> list[str]:
        now = starter.now()
        end = now + timedelta(seconds=plan.treatment_s() + plan.pauses_s())
        reasons: list[str] = []
        for modality in dict.fromkeys(p.modality for p in plan.profiles.values()):
            conflict = interval_conflict(store, patient, modality, now, end,
                                         starter.rules.min_interval_s)
            if conflict:
                reasons.append(conflict)
        return reasons
    return check
