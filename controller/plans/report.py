"""The plan report: what became of each step and of the whole plan run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from controller.session.exit_codes import EXIT_FAULT, EXIT_OK, EXIT_REJECTED, EXIT_STOPPED
from controller.session.report import SessionReport


class _Profiled(Protocol):
    @property
    def id(self) -> str: ...


class PlannedStep(Protocol):
    """What a report reads of a plan step (controller.plans.plan.PlanStep): a structural
    type, so this module never imports the plan module that imports it."""

    @property
    def index(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def profile(self) -> _Profiled: ...
    @property
    def duration_s(self) -> float: ...

EXIT_BY_PLAN_OUTCOME = {"completed": EXIT_OK, "rejected": EXIT_REJECTED,
                        "stopped": EXIT_STOPPED, "fault": EXIT_FAULT}


@dataclass
class StepResult:
    """What became of one step; `session_id` links its session record."""

    index: int
    name: str
    role: str
    profile: str
    port: str
    planned_s: float
    outcome: str = "not_started"
    """A session outcome (completed, aborted, fault, rejected), skipped or not_started."""
    reason: str = ""
    session_id: str = ""
    delivered_s: float = 0.0
    stop_source: str = ""
    output_started: bool = False
    dose: dict[str, float] = field(default_factory=dict)

    @classmethod
    def planned(cls, step: PlannedStep, port: str) -> StepResult:
        return cls(step.index, step.name, step.role, step.profile.id, port, step.duration_s)

    def take(self, session: SessionReport) -> None:
        self.outcome, self.reason = session.outcome, session.reason
        self.session_id, self.delivered_s = session.session_id, session.delivered_s
        self.stop_source, self.dose = session.stop_source, dict(session.dose)
        self.output_started = session.output_started


@dataclass
class PlanReport:
    """The plan report: `modctl plan run --json` prints it as the last line of stdout."""

    plan_run_id: str
    """Links the `plan.start` and `plan.end` audit entries of this run."""
    plan: str
    source: str
    example: bool
    booking_id: str | None
    operator: str
    patient: str | None
    outcome: str
    """completed, rejected (nothing started), stopped (operator or patient), fault."""
    reason: str
    started_at: str
    ended_at: str = ""
    planned_s: float = 0.0
    delivered_s: float = 0.0
    steps: list[StepResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Every reason the plan was refused before anything started."""
    audit: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        return EXIT_BY_PLAN_OUTCOME.get(self.outcome, EXIT_FAULT)

    @property
    def session_ids(self) -> list[str]:
        return [s.session_id for s in self.steps if s.session_id]

    def any_output(self) -> bool:
        return any(s.output_started for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["session_ids"] = self.session_ids
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str)
