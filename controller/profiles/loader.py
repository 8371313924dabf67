"""Finding and loading device profiles: shipped ones by id, others by path."""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from controller.profiles.model import Profile
from controller.profiles.yaml_source import SourceError, read_yaml_mapping, validation_problems

PROFILE_PACKAGE = "device_profiles"


class ProfileError(SourceError):
    """A profile could not be found, read or validated."""


@dataclass(frozen=True)
class LoadedProfile:
    """A validated profile and where it came from, for records and registrations."""

    profile: Profile
    source: str
    """The path as given (or the shipped file's path)."""
    source_path: str = ""
    """Absolute path of the file, symlinks resolved."""
    sha256: str = ""
    """Hex SHA-256 of the exact bytes that were parsed and validated."""


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
    _FILES[id(profile)] = (doc.real_path, doc.sha256)
    weakref.finalize(profile, _FILES.pop, id(profile), None)
    return LoadedProfile(profile, doc.path, doc.real_path, doc.sha256)


# The file each loaded Profile object came from (path, SHA-256), for records: a Profile is
# frozen data with no room for provenance, and callers pass Profiles around. Keyed by id and
# dropped when the object is collected, so a reused id never finds a stale entry.
_FILES: dict[int, tuple[str, str]] = {}


def profile_file(profile: Profile) -> tuple[str, str]:
    """(absolute path, SHA-256) of the file `profile` was loaded from; ("", "") for a
    profile built in code."""
    return _FILES.get(id(profile), ("", ""))


def resolve_profile(ref: str) -> LoadedProfile:
    """A shipped profile id (a file stem under device_profiles/) or the path of a YAML file."""
    shipped = shipped_profile_paths()
    if ref in shipped:
        return load_profile_file(shipped[ref])
    if os.path.isfile(ref):   # False on any OSError (a name too long, say)
        return load_profile_file(ref)
    known = ", ".join(shipped) or "none"
    raise ProfileError(ref, [f"{ref}: no such profile: not a shipped profile id "
                             f"(shipped: {known}) nor a readable file"])
