"""Operators, their roles and the clinic's settings: a small local YAML file an admin edits.

Default path `/etc/modctl/roles.yaml`; `$MODCTL_ROLES` names another (tests, CI, a second site).
Example::

    default_operator: frontdesk-pc      # used when a command has no --operator
    operators:
      alice: [clinician]
      tom: [technician]
      root-admin: [admin]               # admin may do everything
    clinic:
      min_interval_hours: 4             # same modality, same patient
      calibration_warning_days: 14
      require_registered_devices: false
      name: Riverside Physiotherapy     # printed on session reports (optional)
      address: "12 Quay Street, Riverside"
      patient_id_system: "urn:oid:1.2.3.4.5"   # FHIR identifier system of patient ids

Roles: `clinician` runs sessions and plans and books them; `technician` calibrates, uses service
mode and registers devices; `admin` may do all of it.

When no file exists (and `$MODCTL_ROLES` is not set) roles are **not enforced**: a single-user
install such as the demo on a new machine. The operator is still recorded: `--operator`, else
$USER. A file that exists but cannot be used (unreadable, invalid, writable by group or others,
in a directory others may write to) is refused: it never silently turns enforcement off.

Roles record accountability; they do not authenticate. Whoever can run modctl can type any
`--operator`; the OS account and the audit trail are what tie an action to a person.
"""

from __future__ import annotations

import getpass
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from controller.profiles.yaml_source import SourceError, read_yaml_mapping, validation_problems

ROLES_ENV = "MODCTL_ROLES"
DEFAULT_ROLES_PATH = Path("/etc/modctl/roles.yaml")
ROLES = ("clinician", "technician", "admin")
Role = Literal["clinician", "technician", "admin"]
ADMIN: Role = "admin"
# Same modality for the same patient: the gap between the end of one treatment and the start of
# the next. 4 h lets skin temperature and sensation return to baseline after heat, cold or TENS.
DEFAULT_MIN_INTERVAL_H = 4.0
# `modctl serve` warns this many days before a device's calibration falls due: long enough to
# book a technician.
DEFAULT_CALIBRATION_WARNING_DAYS = 14
# The clinic's name and address head every printed session report: a line and a short block.
CLINIC_NAME_MAX = 120
CLINIC_ADDRESS_MAX = 300
# FHIR exports name patients by identifier only: this system URI says whose ids they are. The
# default is a URN of modctl's own; a clinic sets its registry's URI (or OID URN) here.
DEFAULT_PATIENT_ID_SYSTEM = "urn:modctl:patient"
PATIENT_ID_SYSTEM_MAX = 255
# A URI as FHIR's `uri` type allows: a scheme, then no spaces (RFC 3986 at its plainest).
_URI_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$"
# Operator names go into records and columns; plain and short.
OPERATOR_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
# Any of these permission bits lets someone other than the owner rewrite the file.
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


class RolesError(Exception):
    """The roles file exists but cannot be used; the message names the file and why."""


class RoleRefused(Exception):
    """The operator lacks the role an action needs; the message names both."""

    def __init__(self, role: str, operator: str, message: str) -> None:
        super().__init__(message)
        self.role = role
        self.operator = operator


class ClinicSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_interval_hours: float = Field(DEFAULT_MIN_INTERVAL_H, ge=0, le=24 * 14)
    calibration_warning_days: int = Field(DEFAULT_CALIBRATION_WARNING_DAYS, ge=0, le=365)
    require_registered_devices: bool = False
    """Refuse sessions on a port that is not a registered device's (see calibration_gate)."""
    name: str = Field("", max_length=CLINIC_NAME_MAX)
    """The clinic's name on printed session reports ('' prints none)."""
    address: str = Field("", max_length=CLINIC_ADDRESS_MAX)
    """The clinic's address under its name (line breaks kept)."""
    patient_id_system: str = Field(DEFAULT_PATIENT_ID_SYSTEM, max_length=PATIENT_ID_SYSTEM_MAX,
                                   pattern=_URI_PATTERN)
    """The FHIR identifier system (a URI) of the pseudonymous patient ids."""

    @field_validator("name", "address")
    @classmethod
    def _plain_text(cls, value: str, info: ValidationInfo) -> str:
        allowed = "\n" if info.field_name == "address" else ""
        if any(ord(c) < 32 and c not in allowed for c in value):
            raise ValueError("control characters are not allowed"
                             + (" (line breaks are)" if allowed else ""))
        return value.strip()


class RolesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_operator: str | None = Field(None, pattern=OPERATOR_PATTERN)
    operators: dict[str, list[Role]] = Field(default_factory=dict)
    clinic: ClinicSettings = Field(default_factory=ClinicSettings)

    @model_validator(mode="after")
    def _check(self) -> RolesFile:
        problems = []
        for name, roles in self.operators.items():
            if not re.fullmatch(OPERATOR_PATTERN, name):
                problems.append(f"operators.{name}: an operator name is 1-64 letters, digits, "
                                "'.', '_', '@' or '-'")
            if not roles:
                problems.append(f"operators.{name}: give at least one role "
                                f"({', '.join(ROLES)})")
        if self.default_operator and self.default_operator not in self.operators:
            problems.append(f"default_operator: '{self.default_operator}' is not listed under "
                            "operators")
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True)
class RolesConfig:
    path: Path | None
    """None: there is no roles file and roles are not enforced."""
    operators: Mapping[str, frozenset[str]] = field(default_factory=dict)
    default_operator: str | None = None
    clinic: ClinicSettings = field(default_factory=ClinicSettings)

    @property
    def enforced(self) -> bool:
        return self.path is not None

    def resolve(self, operator: str | None, env: Mapping[str, str] | None = None) -> str:
        """Who acts: `--operator`, else the configured default, else $USER."""
        env = os.environ if env is None else env
        name = (operator or "").strip() or self.default_operator or env.get("USER", "")
        if not name:
            try:
                name = getpass.getuser()
            except (OSError, KeyError):
                name = "unknown"
        if any(ord(c) < 32 for c in name) or len(name) > 64:
            raise RoleRefused("", name, "--operator: give a plain name of at most 64 characters")
        return name

    def require(self, role: Role, operator: str | None, action: str = "",
                env: Mapping[str, str] | None = None) -> str:
        """The resolved operator, or RoleRefused naming the role needed and the operator."""
        name = self.resolve(operator, env)
        if not self.enforced:
            return name
        doing = f" {action}" if action else ""
        held = self.operators.get(name)
        if held is None:
            raise RoleRefused(role, name, f"operator '{name}' is not listed in {self.path}: "
                                          f"the {role} role is needed{doing}")
        if role not in held and ADMIN not in held:
            raise RoleRefused(role, name, f"operator '{name}' may not{doing or ' do this'}: "
                                          f"the {role} role is needed ({name} has: "
                                          f"{', '.join(sorted(held))})")
        return name


def roles_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env[ROLES_ENV]).expanduser() if env.get(ROLES_ENV) else DEFAULT_ROLES_PATH


def load_roles(path: str | os.PathLike[str] | None = None,
               env: Mapping[str, str] | None = None) -> RolesConfig:
    """The roles configuration; an unenforced one when there is no file at the default path."""
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get(ROLES_ENV))
    where = Path(path) if path is not None else roles_path(env)
    try:
        info = where.stat()
    except FileNotFoundError:
        if explicit:  # someone named a file: its absence is a mistake, not a single-user install
            source = f"${ROLES_ENV}" if path is None else "given"
            raise RolesError(f"roles file {where} ({source}) does not exist") from None
        return RolesConfig(None)
    except OSError as exc:
        raise RolesError(f"roles file {where}: cannot read it: {exc.strerror or exc}") from None
    _check_permissions(where, info)
    try:
        doc = read_yaml_mapping(where, "roles file")
        parsed = RolesFile.model_validate(doc.data)
    except SourceError as exc:
        raise RolesError("; ".join(exc.problems)) from None
    except ValidationError as exc:
        raise RolesError("; ".join(validation_problems(doc, exc, RolesFile))) from None
    return RolesConfig(where, {k: frozenset(v) for k, v in parsed.operators.items()},
                       parsed.default_operator, parsed.clinic)


def _check_permissions(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise RolesError(f"roles file {path}: not a regular file")
    if info.st_mode & _OTHERS_WRITE:
        raise RolesError(f"roles file {path} is writable by group or others (mode "
                         f"{stat.S_IMODE(info.st_mode):o}); refusing to use it: only an "
                         f"administrator may edit it (chmod go-w {path})")
    parent = path.resolve().parent
    try:
        pinfo = parent.stat()
    except OSError as exc:
        raise RolesError(f"roles file {path}: cannot check its directory: "
                         f"{exc.strerror or exc}") from None
    if pinfo.st_mode & _OTHERS_WRITE and not pinfo.st_mode & stat.S_ISVTX:
        raise RolesError(f"roles file {path}: its directory {parent} is writable by group or "
                         "others, who could replace the file; refusing to use it "
                         f"(chmod go-w {parent})")


def require(role: Role, operator: str | None, *, action: str = "",
            config: RolesConfig | None = None) -> str:
    """Load the roles file (unless given) and check `operator` holds `role`."""
    return (config or load_roles()).require(role, operator, action)
