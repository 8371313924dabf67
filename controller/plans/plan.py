"""Treatment plans: named steps on named devices, validated like profiles.

A plan is YAML (see docs/plans.md). `load_plan` reads it strictly (unknown keys,
duplicate keys and wrong types are refused), then checks what spans fields
(every step's device role exists, step names are unique, pauses are sensible)
and finally every step against its profile's limits with `build_prescription`.
Every problem is collected and reported as one line with the file, the line and
the field path; a step over a limit names the step, the parameter, the value
and the limit. Nothing here touches a device.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from controller.modality.prescription import (
    DurationError,
    Prescription,
    PrescriptionRejected,
    build_prescription,
    parse_duration,
)
from controller.profiles.loader import ProfileError, resolve_profile, shipped_profile_paths
from controller.profiles.model import DURATION, Profile
from controller.profiles.yaml_source import (
    SourceError,
    YamlDocument,
    one_line,
    read_yaml_mapping,
    validation_problems,
)
from controller.session.exit_codes import EXIT_FAULT, EXIT_OK, EXIT_REJECTED, EXIT_STOPPED
from controller.session.report import SessionReport
from protocols.map_common import Identifier, StrictModel

PLAN_FORMAT = 1
PRESET_PACKAGE = "controller.plans"
PRESET_DIR = "presets"
# A plan is one visit: more steps than this is a list of visits, or a mistake.
MAX_STEPS = 12
# A pause longer than this is a new visit (book it), not a pause between steps.
MAX_PAUSE_S = 30 * 60.0
# Steps and pauses together; longer than a clinic visit is almost surely a typo (15h for 15m).
MAX_PLAN_S = 2 * 3600.0
# Step names are shown in prompts and reports; keep them to one short line.
MAX_NAME_CHARS = 60


class PlanError(SourceError):
    """A plan could not be found, read or validated; `problems` lists every reason."""


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


@dataclass(frozen=True)
class PlanStep:
    """One step, ready to become a prescription."""

    index: int
    """1-based position in the plan."""
    name: str
    role: str
    profile: Profile
    settings: dict[str, str]
    """As `NAME=VALUE` text, exactly as the operator would type it."""
    duration_s: float
    pause_after_s: float
    notes: str

    def label(self) -> str:
        return f"step {self.index} '{self.name}' ({self.profile.id})"

    def prescription(self, facts: Mapping[str, float] | None = None) -> Prescription:
        """A fresh prescription (a new operator request); PrescriptionRejected when over a limit."""
        return build_prescription(self.profile, self.settings, self.duration_s, facts=facts)


@dataclass(frozen=True)
class Plan:
    spec: PlanSpec
    source: str
    """The file the plan came from."""
    steps: tuple[PlanStep, ...]
    profiles: dict[str, Profile]
    """Profile of each device role."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def example(self) -> bool:
        return self.spec.example

    def roles(self) -> dict[str, str]:
        """Each device role and the profile id it needs."""
        return {role: p.id for role, p in self.profiles.items()}

    def treatment_s(self) -> float:
        return sum(s.duration_s for s in self.steps)

    def pauses_s(self) -> float:
        return sum(s.pause_after_s for s in self.steps)


EXAMPLE_WARNING = ("EXAMPLE PLAN: an example for a clinician to review and adapt to the "
                   "patient; it is not a prescription.")


def format_duration(seconds: float) -> str:
    """`15m`, `1m30s`, `2s`, `1h5m`, `1.5s`: short and exact enough for a plan."""
    if seconds < 60 and not float(seconds).is_integer():
        return f"{seconds:g}s"
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s or not total else ""]
    return "".join(parts)


def preset_paths() -> dict[str, Path]:
    """Shipped preset files by name (file stem), from the installed package."""
    root = resources.files(PRESET_PACKAGE) / PRESET_DIR
    found: dict[str, Path] = {}
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.endswith(".yaml"):
                found[entry.name.removesuffix(".yaml")] = Path(str(entry))
    return dict(sorted(found.items()))


def load_plan(ref: str | Path) -> Plan:
    """A preset name (`low-back-pain`) or a plan file's path; PlanError lists every problem."""
    presets = preset_paths()
    text = str(ref)
    if text in presets:
        return load_plan_file(presets[text])
    if os.path.isfile(text):   # False on any OSError (a name too long, say)
        return load_plan_file(text)
    known = ", ".join(presets) or "none"
    raise PlanError(text, [f"{text}: no such plan: not a preset (presets: {known}) nor a "
                           "readable file"])


def load_plan_file(path: str | Path) -> Plan:
    try:
        doc = read_yaml_mapping(path, "treatment plan")
    except SourceError as exc:
        raise PlanError(exc.path, exc.problems) from None
    try:
        spec = PlanSpec.model_validate(doc.data)
    except ValidationError as exc:
        raise PlanError(doc.path, validation_problems(doc, exc, PlanSpec)) from None
    problems: list[str] = []
    profiles = _load_profiles(doc, spec, problems)
    steps = tuple(_step(i, s, profiles[s.device]) for i, s in enumerate(spec.steps)
                  if s.device in profiles)
    for step in steps:
        problems += _limit_problems(doc, step)
    if problems:
        raise PlanError(doc.path, problems)
    return Plan(spec, doc.path, steps, profiles)


def _load_profiles(doc: YamlDocument, spec: PlanSpec, problems: list[str]) -> dict[str, Profile]:
    base = Path(doc.path).parent
    shipped = shipped_profile_paths()
    out: dict[str, Profile] = {}
    for role, device in spec.devices.items():
        where = ("devices", role, "profile")
        ref = device.profile
        candidate = ref if ref in shipped or Path(ref).is_absolute() else str(base / ref)
        if ref not in shipped and not os.path.isfile(candidate):
            problems.append(_at(doc, where, f"no such profile '{ref}': not a shipped profile "
                                f"id (shipped: {', '.join(shipped)}) nor a file "
                                f"(looked for {candidate})"))
            continue
        try:
            out[role] = resolve_profile(candidate).profile
        except ProfileError as exc:
            problems.append(_at(doc, where, f"profile '{ref}' is not valid "
                                f"({len(exc.problems)} problems follow)"))
            problems += [f"  {p}" for p in exc.problems]
    return out


def _step(i: int, spec: StepSpec, profile: Profile) -> PlanStep:
    settings = {k: _text(v) for k, v in spec.set.items()}
    return PlanStep(i + 1, spec.name, spec.device, profile, settings, spec.duration,
                    spec.pause_after, spec.notes)


def _text(value: str | int | float) -> str:
    # repr keeps every digit of a float, so the value checked is the value written.
    return repr(value) if isinstance(value, float) else str(value)


def _limit_problems(doc: YamlDocument, step: PlanStep) -> list[str]:
    try:
        step.prescription()
    except PrescriptionRejected as exc:
        i = step.index - 1
        out = []
        for p in exc.problems:
            if p.name in step.settings:
                loc: tuple[str | int, ...] = ("steps", i, "set", p.name)
            elif p.name == DURATION:
                loc = ("steps", i, "duration")
            else:
                loc = ("steps", i, "set") if step.settings else ("steps", i)
            out.append(_at(doc, loc, f"step '{step.name}' ({step.profile.id}): {p.message}"))
        return out
    return []


def _at(doc: YamlDocument, loc: tuple[str | int, ...], message: str) -> str:
    """`FILE:LINE: field.path: message`, the same shape as yaml_source's lines."""
    line = doc.line_of(loc)
    where = f"{doc.path}:{line}" if line else doc.path
    field = ""
    for part in loc:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else part)
    return f"{where}: {field}: {one_line(message)}"


def _plain(text: str) -> str:
    """Operator text inside a problem line: '; ' separates problems, so it must not appear."""
    return text.replace("; ", ", ")


# -- the plan report ----------------------------------------------------------------
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
    def planned(cls, step: PlanStep, port: str) -> StepResult:
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
