"""Operators and roles: the roles file, its permissions, enforcement and its absence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.clinic import roles
from controller.clinic.roles import (
    DEFAULT_MIN_INTERVAL_H,
    ROLES_ENV,
    RoleRefused,
    RolesError,
    load_roles,
    require,
)

GOOD = """\
default_operator: alice
operators:
  alice: [clinician]
  tom: [technician]
  ada: [admin]
  both: [clinician, technician]
clinic:
  min_interval_hours: 6
  calibration_warning_days: 30
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "etc" / "roles.yaml"
    path.parent.mkdir(mode=0o755, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_no_file_means_roles_are_not_enforced_but_the_operator_is_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROLES_ENV, raising=False)
    monkeypatch.setattr(roles, "DEFAULT_ROLES_PATH", tmp_path / "absent.yaml")
    config = load_roles()
    assert not config.enforced
    assert config.clinic.min_interval_hours == DEFAULT_MIN_INTERVAL_H
    assert config.require("technician", "anyone") == "anyone"
    assert config.require("admin", None, env={"USER": "maria"}) == "maria"
    monkeypatch.setenv("USER", "maria")
    assert require("clinician", "") == "maria"


def test_a_named_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RolesError, match=r"absent.yaml \(\$MODCTL_ROLES\) does not exist"):
        load_roles(env={ROLES_ENV: str(tmp_path / "absent.yaml")})


def test_roles_are_enforced_and_refusals_name_the_role_and_operator(tmp_path: Path) -> None:
    config = load_roles(env={ROLES_ENV: str(write(tmp_path, GOOD))})
    assert config.enforced and config.clinic.min_interval_hours == 6
    assert config.clinic.calibration_warning_days == 30
    assert config.require("clinician", "alice") == "alice"
    assert config.require("clinician", None) == "alice"  # default_operator
    assert config.require("technician", "tom") == "tom"
    assert config.require("technician", "ada") == "ada"  # admin may do all
    assert config.require("clinician", "both") == "both"
    with pytest.raises(RoleRefused) as info:
        config.require("technician", "alice", "register a device")
    text = str(info.value)
    assert "operator 'alice' may not register a device" in text
    assert "the technician role is needed" in text and "alice has: clinician" in text
    assert (info.value.role, info.value.operator) == ("technician", "alice")
    with pytest.raises(RoleRefused, match=r"'eve' is not listed in .*roles\.yaml: the clinician "
                                          r"role is needed"):
        config.require("clinician", "eve")


def test_module_require_reads_the_file_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROLES_ENV, str(write(tmp_path, GOOD)))
    assert require("technician", "tom") == "tom"
    with pytest.raises(RoleRefused, match="clinician role is needed"):
        require("clinician", "tom")


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_file_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, GOOD, mode)
    with pytest.raises(RolesError, match=r"writable by group or others .*chmod go-w"):
        load_roles(path)


def test_a_directory_others_may_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    path.parent.chmod(0o777)
    with pytest.raises(RolesError, match=r"its directory .* is writable by group or others"):
        load_roles(path)
    path.parent.chmod(0o1777)
    assert load_roles(path).enforced
    path.parent.chmod(0o755)


@pytest.mark.parametrize(("text", "message"), [
    ("operators:\n  alice: [nurse]\n", "operators.alice[0]"),
    ("operators:\n  alice: []\n", "give at least one role"),
    ("default_operator: bob\noperators:\n  alice: [admin]\n", "'bob' is not listed"),
    ("operators: {}\ncolour: red\n", "unknown key 'colour'"),
    ("clinic:\n  min_interval_hours: -1\n", "clinic.min_interval_hours"),
    ("operators:\n  'al ice': [admin]\n", "an operator name is"),
    ("- just a list\n", "the top level is a list"),
    ("operators: [alice\n", "YAML syntax error"),
])
def test_bad_files_are_refused_naming_the_field(tmp_path: Path, text: str,
                                                message: str) -> None:
    with pytest.raises(RolesError, match=r"roles\.yaml") as info:
        load_roles(write(tmp_path, text))
    assert message in str(info.value)


def test_an_unreadable_file_is_refused_not_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, 0o000)
    if os.access(path, os.R_OK):
        pytest.skip("root reads any file")
    with pytest.raises(RolesError, match="cannot read"):
        load_roles(path)
