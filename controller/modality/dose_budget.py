"""One session's dose budget, shared by every step of a plan that uses the same modality.

A profile's derived limit on an accumulating dose (thermal CEM43 minutes, ultrasound energy) is
a budget per session. A plan may split one modality into several steps (4 x 15 min at 44 degC,
each 30 CEM43 min under a 60 budget); each step alone meets the limit, yet together they deliver
twice the budget within one treatment. So the planned doses of one modality's steps are added up
and the sum must stay within the budget, or the plan is refused before any device is switched on.

The planned dose of each step is the one its prescription computed (`Prescription.derived`, from
the modality code through `build_prescription`): nothing is recomputed here. Which derived
quantities accumulate is the history's `DOSE_FIGURES` ("sum" figures); peaks (TENS charge per
phase, current density) are met by each step alone. A dose that needs a device fact (the
ultrasound energy needs the ERA) is added up once the device has reported it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from controller.modality.prescription import DERIVED_SLACK, Prescription, PrescriptionRejected
from controller.plans.plan import Plan
from controller.records.history import DOSE_FIGURES, format_number

Planned = tuple[str, Prescription]
"""A step's label (`step 2 'heat' (PROFILE)`) and its prescription."""


def accumulating(modality: str) -> dict[str, str]:
    """The dose figures of `modality` that add up over time, with their units."""
    return {f.key: f.unit for f in DOSE_FIGURES.get(modality, ()) if f.total == "sum"}


def budget_problems(steps: Sequence[Planned]) -> list[str]:
    """A sentence per modality and dose whose steps together plan more than one session's
    budget, naming every step's dose, the sum and the budget."""
    problems: list[str] = []
    modalities = list(dict.fromkeys(rx.modality for _, rx in steps))
    for modality in modalities:
        for name, unit in accumulating(modality).items():
            parts = [(label, rx) for label, rx in steps
                     if rx.modality == modality and name in rx.derived]
            budgets = [(limit.high.value, rx.profile_id) for _, rx in parts
                       if (limit := rx.derived_limits.get(name)) is not None
                       and limit.high is not None]
            if len(parts) < 2 or not budgets:
                continue  # one step alone was checked by its prescription
            budget, profile_id = min(budgets)
            total = math.fsum(rx.derived[name] for _, rx in parts)
            if total <= budget * (1 + DERIVED_SLACK):
                continue
            each = ", ".join(f"{label} {format_number(rx.derived[name])}" for label, rx in parts)
            problems.append(
                f"{modality} dose: the {len(parts)} {modality} steps plan {name} "
                f"{format_number(total)} {unit} in all ({each}), above the per-session budget "
                f"{budget:g} {unit} ({profile_id} limits.derived.{name}); the steps of one "
                "modality in a plan are one treatment and share one session's budget")
    return problems


def plan_budget_problems(plan: Plan) -> list[str]:
    """`budget_problems` of a plan's steps, with the facts known without a device (a step over
    its own limits is reported by the plan's loader, not here)."""
    steps: list[Planned] = []
    for step in plan.steps:
        try:
            steps.append((step.label(), step.prescription()))
        except PrescriptionRejected:
            continue
    return budget_problems(steps)
