"""The treatment plan file format, as written: the schema and its cross-field checks.

`PlanSpec` validates a plan file strictly (unknown keys and wrong types refused)
and checks what spans fields (every step's device role exists, step names are
unique, pauses are sensible). Checking steps against their profiles' limits is
`plan.load_plan_file`'s job; see docs/plans.md for the format.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from controller.modality.prescription import DurationError, parse_duration
from protocols.map_common import Identifier, StrictModel

PLAN_FORMAT = 1
# A plan is one visit: more steps than this is a list of visits, or a mistake.
MAX_STEPS = 12
# A pause longer than this is a new visit (book it), not a pause between steps.
MAX_PAUSE_S = 30 * 60.0
# Steps and pauses together; longer than a clinic visit is almost surely a typo (15h for 15m).
MAX_PLAN_S = 2 * 3600.0
# Step names are shown in prompts and reports; keep them to one short line.
MAX_NAME_CHARS = 60


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing"
    return repr(value)


def _to_seconds(value: object) -> float:
    """A YAML duration (`15m`, `90s`, `1m30s`, or a number of seconds) in seconds."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"a duration is text like 15m, 90s, 1m30s or a number of seconds, "
                         f"not {_kind(value)}")
    try:
        return parse_duration(str(value))
    except DurationError as exc:
        raise ValueError(str(exc)) from None


def _to_pause(value: object) -> float:
    """As `_to_seconds`, but 0 (or nothing) means no pause."""
    if value is None or (not isinstance(value, bool) and value in (0, "0", "0s")):
        return 0.0
    return _to_seconds(value)


def _setting(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"a setting is a number or a word (a choice), not {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a setting must be a finite number, not {value}")
    return value


Seconds = Annotated[float, BeforeValidator(_to_seconds)]
PauseSeconds = Annotated[float, BeforeValidator(_to_pause)]
SettingValue = Annotated[str | int | float, BeforeValidator(_setting)]
Text = Annotated[str, Field(max_length=4000)]
StepName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=r"^[^\n\r]*\S")]


class DeviceRole(StrictModel):
    """One device the plan needs, by role (`heat`, `ultrasound`, `tens`)."""

    profile: str = Field(min_length=1)
    """A shipped profile id, or the path of a profile file (relative to the plan file)."""
    notes: Text = ""


class StepSpec(StrictModel):
    name: StepName
    device: Identifier
    """A role from the plan's `devices`."""
    duration: Seconds
    set: dict[Identifier, SettingValue] = Field(default_factory=dict)
    pause_after: PauseSeconds = 0.0
    notes: Text = ""


class PlanSpec(StrictModel):
    """The plan file, as written."""

    plan_format: Literal[1]
    name: Annotated[str, Field(min_length=1, max_length=80)]
    description: Text = ""
    example: bool = False
    """An example for a clinician to review and adapt (every shipped preset is one)."""
    notes: Text = ""
    devices: Annotated[dict[Identifier, DeviceRole], Field(min_length=1)]
    steps: Annotated[list[StepSpec], Field(min_length=1, max_length=MAX_STEPS)]

    @model_validator(mode="after")
    def _cross_checks(self) -> PlanSpec:
        problems: list[str] = []
        roles = ", ".join(self.devices)
        seen: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            if step.device not in self.devices:
                problems.append(f"steps[{i}].device: unknown device role '{step.device}' "
                                f"(roles in devices: {roles})")
            key = step.name.strip().casefold()
            if key in seen:
                problems.append(f"steps[{i}].name: step name '{_plain(step.name)}' is used twice "
                                f"(also steps[{seen[key]}]): step names must be unique")
            else:
                seen[key] = i
            if step.pause_after > MAX_PAUSE_S:
                problems.append(f"steps[{i}].pause_after: a pause of "
                                f"{format_duration(step.pause_after)} is longer than "
                                f"{format_duration(MAX_PAUSE_S)} (book a new visit instead)")
        last = self.steps[-1]
        if last.pause_after > 0:
            problems.append(f"steps[{len(self.steps) - 1}].pause_after: the last step has no "
                            "step after it to pause for")
        used = {s.device for s in self.steps}
        problems += [f"devices.{role}: no step uses device role '{role}'"
                     for role in self.devices if role not in used]
        total = sum(s.duration + s.pause_after for s in self.steps)
        if total > MAX_PLAN_S:
            problems.append(f"steps: the plan takes {format_duration(total)} with its pauses, "
                            f"but a plan is one visit of at most {format_duration(MAX_PLAN_S)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def format_duration(seconds: float) -> str:
    """`15m`, `1m30s`, `2s`, `1h5m`, `1.5s`: short and exact enough for a plan."""
    if seconds < 60 and not float(seconds).is_integer():
        return f"{seconds:g}s"
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s or not total else ""]
    return "".join(parts)


def _plain(text: str) -> str:
    """Operator text inside a problem line: '; ' separates problems, so it must not appear."""
    return text.replace("; ", ", ")
