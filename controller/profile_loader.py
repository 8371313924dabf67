"""Finding and loading device profiles: shipped ones by id, others by path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from controller.profile import Profile
from controller.yaml_source import SourceError, read_yaml_mapping, validation_problems

PROFILE_PACKAGE = "device_profiles"


class ProfileError(SourceError):
    """A profile could not be found, read or validated."""


@dataclass(frozen=True)
class LoadedProfile:
    profile: Profile
    source: str


def shipped_profile_paths() -> dict[str, Path]:
    """Shipped profile files by id (file stem), from the installed package."""
    root = resources.files(PROFILE_PACKAGE)
    found: dict[str, Path] = {}
    for entry in root.iterdir():
        if entry.name.endswith(".yaml"):
            found[entry.name.removesuffix(".yaml")] = Path(str(entry))
    return dict(sorted(found.items()))


def load_profile_file(path: str | Path) -> LoadedProfile:
    """Load and validate one profile file; ProfileError lists every problem."""
    try:
        doc = read_yaml_mapping(path, "device profile")
    except SourceError as exc:
        raise ProfileError(exc.path, exc.problems) from None
    try:
        profile = Profile.model_validate(doc.data)
    except ValidationError as exc:
        raise ProfileError(doc.path, validation_problems(doc, exc, Profile)) from None
    return LoadedProfile(profile, doc.path)


def resolve_profile(ref: str) -> LoadedProfile:
    """A shipped profile id (`hc-200`) or the path of a YAML file."""
    shipped = shipped_profile_paths()
    if ref in shipped:
        return load_profile_file(shipped[ref])
    if os.path.isfile(ref):   # False on any OSError (a name too long, say)
        return load_profile_file(ref)
    known = ", ".join(shipped) or "none"
    raise ProfileError(ref, [f"{ref}: no such profile: not a shipped profile id "
                             f"(shipped: {known}) nor a readable file"])
