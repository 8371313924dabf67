"""`modctl profiles ...` and the top-level options, in-process and as a real process.

In-process tests call `controller.cli.main.main` with capsys. The subprocess
tests run `python -m controller.cli.main` from an empty directory, so the
installed package (and its packaged profiles) is what runs, not the source tree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
import yaml

import controller
from controller.cli import profiles_cmd
from controller.cli.main import DEBUG_ENV, build_parser, main
from controller.profiles.loader import load_profile_file, resolve_profile, shipped_profile_paths
from controller.profiles.model import Profile

SHIPPED = {"hc-200": ("HC-200", "thermal"), "us-300": ("US-300", "ultrasound"),
           "es-4": ("ES-4", "tens")}
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run the CLI in-process: (exit status, stdout, stderr)."""
    def _run(*argv: str) -> tuple[int, str, str]:
        try:
            status = main(list(argv))
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            status = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return status, out, err
    return _run


def run_process(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", DEBUG_ENV)}
    return subprocess.run([sys.executable, "-m", "controller.cli.main", *argv], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def shipped_text(pid: str) -> str:
    return shipped_profile_paths()[pid].read_text(encoding="utf-8")


def _must_replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# The "done when" list: each must exit non-zero, name the file, and show no traceback.
BAD: dict[str, Callable[[str], str]] = {
    "unknown-top-level-key": lambda t: t + "\nwarp_drive: true\n",
    "empty": lambda _t: "",
    "broken-yaml": lambda t: _must_replace(t, "baudrate: 19200", "baudrate: [19200"),
    "min-above-max": lambda t: _must_replace(t, "temperature_c: {min: 5.0, max: 45.0}",
                                             "temperature_c: {min: 46.0, max: 45.0}"),
    "cut-to-first-third": lambda t: t[: len(t) // 3],
}
BAD_MESSAGE = {
    "unknown-top-level-key": "unknown key 'warp_drive'",
    "empty": "the file is empty",
    "broken-yaml": "YAML syntax error",
    "min-above-max": "limits.absolute.temperature_c: min (46) is above max (45)",
    "cut-to-first-third": "",
}


def write_bad(kind: str, directory: Path) -> Path:
    path = directory / f"{kind}.yaml"
    path.write_text(BAD[kind](shipped_text("hc-200")), encoding="utf-8")
    return path


def command_paths(parser: argparse.ArgumentParser,
                  prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand of the parser, found by walking its subparsers."""
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += command_paths(sub, (*prefix, name))
    return out


COMMANDS = command_paths(build_parser())


# -- top level -----------------------------------------------------------------------

def test_version(run: Run) -> None:
    status, out, _ = run("--version")
    assert status == 0
    assert out.strip() == f"modctl {controller.__version__}"
    # The version the code reports is the one the package was installed as.
    assert metadata.version("modctl") == controller.__version__


def test_the_profiles_commands_exist() -> None:
    assert {("profiles", c) for c in ("list", "show", "validate", "schema")} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "modctl")
def test_help_on_every_command(command: tuple[str, ...], run: Run) -> None:
    status, out, err = run(*command, "--help")
    assert status == 0, err
    assert out.startswith(f"usage: modctl {' '.join(command)}".rstrip())


@pytest.mark.parametrize("argv", [(), ("profiles",), ("profiles", "frobnicate"),
                                  ("profiles", "show"), ("profiles", "validate")])
def test_usage_errors_exit_2(argv: tuple[str, ...], run: Run) -> None:
    status, _, err = run(*argv)
    assert status == 2
    assert "usage: modctl" in err and "Traceback" not in err


# -- profiles list / show / schema ---------------------------------------------------------

def test_list_shows_models_modalities_and_sources(run: Run) -> None:
    status, out, err = run("profiles", "list")
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "MODEL", "MODALITY", "SOURCE"]
    listed = {row.split()[0]: row.split()[1:] for row in rows}
    paths = shipped_profile_paths()
    for pid, (model, modality) in SHIPPED.items():
        assert listed[pid] == [model, modality, str(paths[pid])]


@pytest.mark.parametrize("kind", ["broken-yaml", "empty"])
def test_list_flags_a_broken_shipped_profile(kind: str, run: Run, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # The listing reads id, model and modality only (fast, no pydantic); a file it cannot
    # read that far is flagged, and `profiles validate` named as the full check.
    bad = write_bad(kind, tmp_path)
    monkeypatch.setattr(profiles_cmd, "shipped_profile_paths",
                        lambda: {**shipped_profile_paths(), "hc-201": bad})
    status, out, err = run("profiles", "list")
    assert status == 1
    assert [r.split()[:3] for r in out.splitlines() if r.startswith("hc-201")] \
        == [["hc-201", "INVALID", "-"]]
    assert "hc-200" in out  # the good ones are still listed
    assert str(bad) in err and f"modctl profiles validate {bad}" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_list_matches_the_validated_profiles(run: Run) -> None:
    status, out, _ = run("profiles", "list")
    assert status == 0
    rows = {r.split()[0]: r.split()[1:3] for r in out.splitlines()[1:]}
    for pid, path in shipped_profile_paths().items():
        prof = load_profile_file(path).profile
        assert rows[pid] == [prof.model, prof.modality] and prof.id == pid


@pytest.mark.parametrize("pid", sorted(SHIPPED))
def test_show_prints_a_summary_without_nulls(pid: str, run: Run) -> None:
    status, out, err = run("profiles", "show", pid)
    assert status == 0, err
    prof = resolve_profile(pid).profile
    lines = out.splitlines()
    assert lines[0] == f"{pid}: {prof.vendor} {prof.model} ({prof.modality})"
    assert f"source: {shipped_profile_paths()[pid]}" in lines
    assert any(line.startswith(f"link: {prof.link.baudrate} baud") for line in lines)
    for section in ("parameters (effective range", "limits by tier:", "safety timing:",
                    "calibration:"):
        assert any(line.startswith(section) for line in lines), section
    for name in prof.parameters:
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "None" not in out and "null" not in out
    assert len(lines) < 40  # a summary, not the 500-line dump (--full)
    assert out.rstrip().endswith(f"modctl profiles show {pid} --full")


def test_show_summary_ranges_units_and_tiers(run: Run) -> None:
    _, out, _ = run("profiles", "show", "hc-200")
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["temperature_c"])
    assert row[1:5] == ["°C", "40", "step", "0.1"]
    assert "5..45; cold 10..45" in " ".join(row)
    tiers = next(line.split() for line in out.splitlines()
                 if line.split()[:2] == ["duration_s", "1..3595"])
    assert tiers == ["duration_s", "1..3595", "..1800", "..1200", "-"]
    assert "safety timing: device watchdog 2 s, poll every 200 ms" in out


def test_show_json_has_everything(run: Run) -> None:
    status, out, _ = run("profiles", "show", "us-300", "--json")
    assert status == 0
    data = json.loads(out)
    assert data["source"] == str(shipped_profile_paths()["us-300"])
    assert data["profile"] == resolve_profile("us-300").profile.model_dump(mode="json")
    assert data["effective_limits"]["intensity_w_cm2"]["range"] == "0.1..2"
    assert run("profiles", "show", "us-300", "--json", "--full")[0] == 2


def test_show_includes_the_effective_limits(run: Run) -> None:
    status, out, err = run("profiles", "show", "hc-200", "--full")
    assert status == 0, err
    assert out.splitlines()[0] == f"# source: {shipped_profile_paths()['hc-200']}"
    assert "# effective limits" in out
    shown = yaml.safe_load(out)
    assert shown["effective_limits"] == {
        "duration_s": {"range": "1..1800", "min_from": "absolute", "max_from": "clinical"},
        "duration_s (cold)": {"range": "1..1200", "min_from": "absolute",
                              "max_from": "clinical (cold)"},
        "temperature_c": {"range": "5..45", "min_from": "absolute", "max_from": "clinical"},
        "temperature_c (cold)": {"range": "10..45", "min_from": "clinical (cold)",
                                 "max_from": "clinical"},
    }


@pytest.mark.parametrize("pid", sorted(SHIPPED))
def test_show_output_is_itself_the_same_profile(pid: str, run: Run, tmp_path: Path) -> None:
    # What `show` prints is the validated profile: saved, it loads to the same thing.
    status, out, _ = run("profiles", "show", pid, "--full")
    assert status == 0
    shown = yaml.safe_load(out)
    del shown["effective_limits"]
    path = tmp_path / f"{pid}-shown.yaml"
    path.write_text(yaml.safe_dump(shown, sort_keys=False), encoding="utf-8")
    assert load_profile_file(path).profile == resolve_profile(pid).profile


def test_show_accepts_a_path(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "my-device.yaml"
    path.write_text(shipped_text("us-300"), encoding="utf-8")
    status, out, _ = run("profiles", "show", str(path), "--full")
    assert status == 0
    assert out.splitlines()[0] == f"# source: {path}"
    assert yaml.safe_load(out)["effective_limits"]["intensity_w_cm2"]["range"] == "0.1..2"


@pytest.mark.parametrize("ref", ["hc-300", "profiles/nowhere.yaml"])
def test_show_unknown_profile(ref: str, run: Run) -> None:
    status, out, err = run("profiles", "show", ref)
    assert status == 1
    assert out == ""
    assert err.strip() == (f"{ref}: no such profile: not a shipped profile id "
                           "(shipped: es-4, hc-200, us-300) nor a readable file")


def test_show_invalid_file(run: Run, tmp_path: Path) -> None:
    bad = write_bad("unknown-top-level-key", tmp_path)
    status, out, err = run("profiles", "show", str(bad))
    assert status == 1 and out == ""
    assert err.startswith(f"{bad}:") and "unknown key 'warp_drive'" in err


def test_schema_prints_the_json_schema(run: Run) -> None:
    status, out, _ = run("profiles", "schema")
    assert status == 0
    schema = json.loads(out)
    assert schema == Profile.model_json_schema()
    assert schema["title"] == "Profile" and schema["additionalProperties"] is False
    assert {"Link", "Safety", "ModbusMap", "ScpiMap", "FramedMap"} <= set(schema["$defs"])


# -- profiles validate ---------------------------------------------------------------

def test_validate_shipped_profiles(run: Run) -> None:
    paths = shipped_profile_paths()
    status, out, err = run("profiles", "validate", *(str(paths[p]) for p in SHIPPED))
    assert status == 0, err
    assert err == ""
    assert out.splitlines() == [f"{paths[p]}: ok ({p}, {m}, {mod})"
                                for p, (m, mod) in SHIPPED.items()]


@pytest.mark.parametrize("kind", sorted(BAD))
def test_validate_bad_profile(kind: str, run: Run, tmp_path: Path) -> None:
    bad = write_bad(kind, tmp_path)
    status, out, err = run("profiles", "validate", str(bad))
    assert status == 1
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines and all(line.startswith(f"{bad}:") for line in lines)
    assert BAD_MESSAGE[kind] in err


def test_validate_reports_each_file(run: Run, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(shipped_text("es-4"), encoding="utf-8")
    bad = write_bad("empty", tmp_path)
    missing = tmp_path / "missing.yaml"
    status, out, err = run("profiles", "validate", str(bad), str(good), str(missing))
    assert status == 1
    assert out == f"{good}: ok (es-4, ES-4, tens)\n"
    assert err.splitlines() == [
        f"{bad}: the file is empty; a device profile is a mapping of sections",
        f"{missing}: cannot read device profile: No such file or directory"]


def test_validate_a_directory(run: Run, tmp_path: Path) -> None:
    status, _, err = run("profiles", "validate", str(tmp_path))
    assert status == 1
    assert err.strip() == f"{tmp_path}: cannot read device profile: Is a directory"


def test_an_internal_error_is_one_line_not_a_traceback(run: Run, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: object) -> None:
        raise RuntimeError("boom")
    monkeypatch.setattr(profiles_cmd, "load_profile_file", broken)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    status, _, err = run("profiles", "validate", str(tmp_path / "x.yaml"))
    assert status == 70
    assert err.startswith("modctl: internal error: RuntimeError: boom")
    assert "Traceback" not in err
    monkeypatch.setenv(DEBUG_ENV, "1")
    status, _, err = run("profiles", "validate", str(tmp_path / "x.yaml"))
    assert status == 70 and "Traceback" in err


# -- the installed console entry point, as a real process --------------------------

def test_process_version_and_help(tmp_path: Path) -> None:
    version = run_process("--version", cwd=tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, f"modctl {controller.__version__}")
    for command in (("--help",), ("profiles", "--help"), ("profiles", "validate", "--help")):
        done = run_process(*command, cwd=tmp_path)
        assert done.returncode == 0 and done.stdout.startswith("usage: modctl"), command


def test_process_list_show_validate_schema(tmp_path: Path) -> None:
    listed = run_process("profiles", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {r.split()[0]: r.split()[1:] for r in listed.stdout.splitlines()[1:]}
    for pid, (model, modality) in SHIPPED.items():
        got_model, got_modality, source = rows[pid]
        assert (got_model, got_modality) == (model, modality)
        # The packaged file, wherever the package is installed.
        assert Path(source).is_file() and Path(source).name == f"{pid}.yaml"
        assert Path(source).parent.name == "device_profiles"

    sources = [rows[pid][2] for pid in SHIPPED]
    valid = run_process("profiles", "validate", *sources, cwd=tmp_path)
    assert valid.returncode == 0, valid.stderr
    assert len(valid.stdout.splitlines()) == 3

    shown = run_process("profiles", "show", "es-4", "--full", cwd=tmp_path)
    assert shown.returncode == 0
    assert yaml.safe_load(shown.stdout)["effective_limits"]["frequency_hz"]["range"] == "1..150"

    schema = run_process("profiles", "schema", cwd=tmp_path)
    assert schema.returncode == 0 and json.loads(schema.stdout)["title"] == "Profile"

    unknown = run_process("profiles", "show", "hc-300", cwd=tmp_path)
    assert unknown.returncode == 1 and "no such profile" in unknown.stderr


def test_process_rejects_the_done_when_mutations(tmp_path: Path) -> None:
    bad = [write_bad(kind, tmp_path) for kind in sorted(BAD)]
    done = run_process("profiles", "validate", *(str(p) for p in bad), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    for path in bad:
        assert f"{path}:" in done.stderr
    for message in BAD_MESSAGE.values():
        assert message in done.stderr
