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

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from controller.modality.prescription import Prescription, PrescriptionRejected, build_prescription
from controller.plans.report import EXIT_BY_PLAN_OUTCOME, PlanReport, StepResult
from controller.plans.spec import (
    MAX_NAME_CHARS,
    MAX_PAUSE_S,
    MAX_PLAN_S,
    MAX_STEPS,
    PLAN_FORMAT,
    DeviceRole,
    PauseSeconds,
    PlanSpec,
    Seconds,
    SettingValue,
    StepName,
    StepSpec,
    Text,
    format_duration,
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

# The format (spec.py) and the report (report.py) live apart; their names stay importable here.
__all__ = [
    "EXAMPLE_WARNING", "EXIT_BY_PLAN_OUTCOME", "MAX_NAME_CHARS", "MAX_PAUSE_S", "MAX_PLAN_S",
    "MAX_STEPS", "PLAN_FORMAT", "PRESET_DIR", "PRESET_PACKAGE", "DeviceRole", "PauseSeconds",
    "Plan", "PlanError", "PlanReport", "PlanSpec", "PlanStep", "Seconds", "SettingValue",
    "StepName", "StepResult", "StepSpec", "Text", "format_duration", "load_plan",
    "load_plan_file", "preset_paths",
]

PRESET_PACKAGE = "controller.plans"
PRESET_DIR = "presets"


class PlanError(SourceError):
    """A plan could not be found, read or validated; `problems` lists every reason."""


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
