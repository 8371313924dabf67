"""The prescription record: a validated request, the limit each value met, and why one is refused.

Built by controller.modality.prescription (`build_prescription`, `apply_device_facts`);
the checks that fill it are in controller.modality.prescription_limits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from controller.modality.limits import Side
from controller.modality.rules import Value

# Relative float-noise allowance on computed (derived) quantities only; operator
# values are compared exactly.
DERIVED_SLACK = 1e-9


@dataclass(frozen=True)
class Problem:
    """One reason a prescription is refused."""

    name: str
    """The parameter, `duration_s`, or a derived quantity's name."""
    value: str
    message: str

    def __str__(self) -> str:
        return self.message


class PrescriptionRejected(Exception):
    """The request breaks one or more limits or rules; nothing was sent."""

    def __init__(self, profile_id: str, problems: list[Problem]) -> None:
        self.profile_id = profile_id
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))

    def messages(self) -> list[str]:
        return [p.message for p in self.problems]


@dataclass(frozen=True)
class AppliedLimit:
    """The effective limit a value met, each side naming the tier that set it."""

    low: Side | None = None
    high: Side | None = None
    allowed: tuple[float | str, ...] | None = None
    """A discrete set from the parameter's definition (numbers or choice names)."""

    def record(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.low is not None:
            out.update(min=self.low.value, min_source=self.low.source)
        if self.high is not None:
            out.update(max=self.high.value, max_source=self.high.source)
        if self.allowed is not None:
            out["allowed"] = list(self.allowed)
        return out


@dataclass(frozen=True)
class Prescription:
    """A validated request. Treat the dicts as read-only."""

    profile_id: str
    modality: str
    values: dict[str, Value]
    """Engineering units, defaults filled in; choices by name."""
    device_values: dict[str, float | int]
    """As `values`, with choice names mapped to the device's codes."""
    duration_s: float
    regimes: tuple[str, ...]
    """The profile's regimes that apply (their clinical limits and interlocks)."""
    limits: dict[str, AppliedLimit]
    """Every parameter and `duration_s`: the limit applied and its provenance."""
    derived: dict[str, float] = field(default_factory=dict)
    derived_limits: dict[str, AppliedLimit] = field(default_factory=dict)
    session_values: dict[str, float] = field(default_factory=dict)
    """Session variables the modality decided (`ramp_up_s`, `channel_mask`)."""
    facts: dict[str, float] = field(default_factory=dict)
    """Device facts the derived limits were checked with (`era_cm2`)."""
    pending: tuple[str, ...] = ()
    """Derived limits not yet checked for want of device facts: no output may start."""
    defaults: tuple[str, ...] = ()
    """Parameters the operator did not give (their defaults were used)."""
    ceiling_regimes: tuple[str, ...] = ()
    """Regimes of the code's ceiling table that apply (ceilings.py: cold)."""
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """One operator action: a TENS output is never restarted on the same id."""

    def record(self) -> dict[str, object]:
        """JSON-ready form for the session report and records."""
        return {
            "request_id": self.request_id, "profile": self.profile_id,
            "modality": self.modality, "values": dict(self.values),
            "device_values": dict(self.device_values), "duration_s": self.duration_s,
            "regimes": list(self.regimes), "ceiling_regimes": list(self.ceiling_regimes),
            "defaults": list(self.defaults),
            "limits": {k: v.record() for k, v in self.limits.items()},
            "derived": dict(self.derived),
            "derived_limits": {k: v.record() for k, v in self.derived_limits.items()},
            "session_values": dict(self.session_values), "facts": dict(self.facts),
            "pending": list(self.pending),
        }
