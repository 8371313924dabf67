"""Deeply nested YAML ends in a clean error naming the file and line (issue 10 §7).

PyYAML composes recursively; before the bound, a few thousand `[` ended in
"internal error: RecursionError" (exit 70). Every YAML file the project reads
goes through controller.profiles.yaml_source, so one bound covers profiles, plans, roles
and calibration readings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.calibration.readings import ReadingsError, load_readings
from controller.clinic.roles import RolesError, load_roles
from controller.plans.plan import PlanError, load_plan
from controller.profiles.loader import ProfileError, load_profile_file, resolve_profile
from controller.profiles.yaml_source import MAX_YAML_DEPTH, SourceError, read_yaml_mapping

DEEP = 5000   # far past Python's recursion limit


def flow(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


def block(depth: int) -> str:
    return "a:\n" + "".join(" " * (i + 1) + "k:\n" for i in range(depth))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize("text", [flow(DEEP), "a: " + "{b: " * DEEP + "1" + "}" * DEEP,
                                  block(MAX_YAML_DEPTH + 5)])
def test_deep_nesting_is_a_source_error_with_file_and_line(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "deep.yaml", text)
    with pytest.raises(SourceError) as exc:
        read_yaml_mapping(path, "device profile")
    [problem] = exc.value.problems
    assert problem.startswith(f"{path}:")
    assert f"nesting is deeper than {MAX_YAML_DEPTH} levels" in problem
    line = int(problem.split(":")[1])
    assert 1 <= line <= text.count("\n") + 1


def test_nesting_up_to_the_bound_still_loads(tmp_path: Path) -> None:
    # The top mapping is level 1, so MAX_YAML_DEPTH - 1 brackets fit.
    doc = read_yaml_mapping(write(tmp_path, "ok.yaml", flow(MAX_YAML_DEPTH - 1)), "x")
    assert isinstance(doc.data["a"], list)


def test_every_loader_refuses_it_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path, "deep.yaml", flow(DEEP))
    with pytest.raises(ProfileError, match="nesting is deeper"):
        load_profile_file(path)
    with pytest.raises(PlanError, match="nesting is deeper"):
        load_plan(str(path))
    with pytest.raises(RolesError, match="nesting is deeper"):
        load_roles(path)
    with pytest.raises(ReadingsError, match="nesting is deeper"):
        load_readings(path, resolve_profile("hc-200").profile, [None])


@pytest.mark.parametrize("command", [["profiles", "validate"], ["plan", "validate"]])
def test_the_cli_exits_with_the_invalid_status_not_internal_error(tmp_path: Path,
                                                                   command: list[str]) -> None:
    path = write(tmp_path, "deep.yaml", flow(DEEP))
    done = subprocess.run([sys.executable, "-m", "controller.cli.main", *command, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr   # EXIT_INVALID, as for any bad file
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    assert f"{path}:1: nesting is deeper than {MAX_YAML_DEPTH} levels" in done.stderr
