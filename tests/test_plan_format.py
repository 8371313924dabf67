"""Bad treatment plans: one clear line per problem, with file, line and field; never a traceback.

Each case takes a valid three-step plan, breaks it in one way, and lists the
fragments one problem line must contain, and (where the case says) the text
whose line that problem line must cite. The presets and the CLI commands
`plan validate | show | list` are checked here too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from controller.cli import main as cli_main
from controller.cli import plan_cmd
from controller.plans.plan import (
    EXAMPLE_WARNING,
    MAX_PAUSE_S,
    PlanError,
    format_duration,
    load_plan,
    load_plan_file,
    preset_paths,
)
from controller.profiles.loader import shipped_profile_paths
from controller.profiles.yaml_source import SourceError
from tests.support.cli import in_process

GOOD = """\
plan_format: 1
name: test plan
description: heat, then ultrasound, then TENS
notes: for tests
devices:
  heat: {profile: hc-200}
  ultrasound: {profile: us-300}
  tens: {profile: es-4}
steps:
  - name: heat
    device: heat
    duration: 15m
    set: {temperature_c: 40}
    pause_after: 30s
  - name: ultrasound
    device: ultrasound
    duration: 5m
    set: {frequency_mhz: 1, intensity_w_cm2: 1.5, duty_pct: 20}
  - name: tens
    device: tens
    duration: 20m
    set: {frequency_hz: 100, pulse_width_us: 200, amplitude_ma: 20, electrode_area_cm2: 25}
    notes: comfortable tingling
"""

Mutation = Callable[[str], str | bytes]
Run = Callable[..., tuple[int, str, str]]


def replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, f"mutation target not in the plan: {old!r}"
        return text.replace(old, new, 1)
    return edit


def constant(content: str | bytes) -> Mutation:
    return lambda _text: content


def line_of(text: str, fragment: str) -> int:
    index = text.index(fragment)
    return text.count("\n", 0, index) + 1


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    expect: tuple[str, ...]
    """Fragments that must all appear in one problem line."""
    at: str | None = None
    """Text of the broken plan whose line that problem line must cite."""


CASES = [
    # -- not a plan at all
    Case("empty-file", constant(""), ("the file is empty", "a treatment plan is a mapping")),
    Case("comments-only", constant("# to be written\n"), ("the file is empty",)),
    Case("not-utf8", lambda t: t.encode().replace(b"test plan", b"test \xffplan"),
         ("not UTF-8 text",)),
    Case("yaml-syntax-error", replace("set: {temperature_c: 40}", "set: {temperature_c: 40"),
         ("YAML syntax error",)),
    Case("duplicate-key", replace("    duration: 15m\n", "    duration: 15m\n    duration: 5m\n"),
         ("duplicate key 'duration'",), "duration: 5m"),
    Case("list-at-top", lambda t: yaml.safe_dump([yaml.safe_load(t)]),
         ("the top level is a list", "a treatment plan is a mapping")),
    Case("scalar-at-top", constant("just words\n"), ("the top level is a str",)),
    # -- unknown keys, missing sections, wrong types
    Case("unknown-top-level-key", lambda t: t + "colour: blue\n",
         ("unknown key 'colour'", "allowed here:", "plan_format", "devices", "steps"),
         "colour: blue"),
    Case("unknown-step-key", replace("    notes: comfortable", "    note: comfortable"),
         ("steps[2]: unknown key 'note'", "allowed here:", "pause_after"), "note:"),
    Case("unknown-device-key", replace("heat: {profile: hc-200}", "heat: {model: hc-200}"),
         ("devices.heat: unknown key 'model'", "profile"), "heat: {model"),
    Case("missing-steps", lambda t: t[:t.index("steps:")],
         ("steps: required field is missing",)),
    Case("missing-devices", lambda t: t[:t.index("devices:")] + t[t.index("steps:"):],
         ("devices: required field is missing",)),
    Case("missing-plan-format", replace("plan_format: 1\n", ""),
         ("plan_format: required field is missing",)),
    Case("wrong-plan-format", replace("plan_format: 1", "plan_format: 2"),
         ("plan_format: Input should be 1",), "plan_format: 2"),
    Case("missing-step-duration", replace("    duration: 5m\n", ""),
         ("steps[1].duration: required field is missing",)),
    Case("no-steps", lambda t: t[:t.index("steps:")] + "steps: []\n",
         ("steps: List should have at least 1 item",)),
    Case("name-is-a-list", replace("name: test plan", "name: [test, plan]"),
         ("name: Input should be a valid string",), "name: [test"),
    Case("example-is-text", replace("notes: for tests", "notes: for tests\nexample: maybe"),
         ("example: Input should be a valid boolean",), "example: maybe"),
    Case("steps-is-a-mapping", lambda t: t[:t.index("steps:")] + "steps: {a: 1}\n",
         ("steps: Input should be a valid list",), "steps: {a: 1}"),
    Case("set-is-a-list", replace("set: {temperature_c: 40}", "set: [40]"),
         ("steps[0].set: Input should be a valid dictionary",), "set: [40]"),
    Case("setting-is-boolean", replace("duty_pct: 20", "duty_pct: yes"),
         ("steps[1].set.duty_pct", "a number or a word", "not the boolean true"), "duty_pct: yes"),
    Case("setting-is-a-list", replace("amplitude_ma: 20", "amplitude_ma: [20, 30]"),
         ("steps[2].set.amplitude_ma", "not a list"), "amplitude_ma: [20"),
    Case("setting-is-nan", replace("temperature_c: 40", "temperature_c: .nan"),
         ("steps[0].set.temperature_c", "finite number"), "temperature_c: .nan"),
    Case("role-name-not-identifier", replace("heat: {profile: hc-200}", "Heat Pad: {profile: "
                                             "hc-200}"), ("devices.Heat Pad",)),
    # -- cross checks
    Case("unknown-role", replace("    device: ultrasound", "    device: laser"),
         ("steps[1].device: unknown device role 'laser'", "heat, ultrasound, tens"),
         "device: laser"),
    Case("duplicate-step-name", replace("  - name: tens", "  - name: Heat"),
         ("steps[2].name: step name 'Heat' is used twice (also steps[0])",), "name: Heat"),
    Case("unused-role", replace("  tens: {profile: es-4}",
                                "  tens: {profile: es-4}\n  spare: {profile: es-4}"),
         ("devices.spare: no step uses device role 'spare'",), "spare:"),
    Case("unknown-profile", replace("{profile: us-300}", "{profile: us-999}"),
         ("devices.ultrasound.profile: no such profile 'us-999'", "shipped: es-4, hc-200, "
          "us-300"), "us-999"),
    # -- durations
    Case("duration-not-understood", replace("duration: 15m", "duration: 15 minutes"),
         ("steps[0].duration: duration '15 minutes' is not understood", "90s, 5m, 1m30s"),
         "15 minutes"),
    Case("duration-zero", replace("duration: 5m", "duration: 0"),
         ("steps[1].duration: duration '0' must be more than zero",), "duration: 0"),
    Case("duration-negative", replace("duration: 5m", "duration: -5"),
         ("steps[1].duration", "more than zero"), "duration: -5"),
    Case("duration-boolean", replace("duration: 5m", "duration: true"),
         ("steps[1].duration", "not the boolean true"), "duration: true"),
    Case("duration-over-profile-limit", replace("duration: 20m", "duration: 31m"),
         ("steps[2].duration", "step 'tens' (es-4)", "duration_s=1860 is above the clinical "
          "limit 1800 s"), "duration: 31m"),
    Case("pause-too-long", replace("pause_after: 30s", "pause_after: 45m"),
         ("steps[0].pause_after: a pause of 45m is longer than "
          f"{format_duration(MAX_PAUSE_S)}",), "pause_after: 45m"),
    Case("pause-not-understood", replace("pause_after: 30s", "pause_after: soon"),
         ("steps[0].pause_after: duration 'soon' is not understood",), "pause_after: soon"),
    Case("pause-after-last-step", replace("    notes: comfortable tingling",
                                          "    pause_after: 1m"),
         ("steps[2].pause_after: the last step has no step after it",), "pause_after: 1m"),
    Case("plan-too-long", lambda t: t.replace("duration: 15m", "duration: 29m").replace(
        "duration: 20m", "duration: 29m").replace("pause_after: 30s", "pause_after: 30m")
        .replace("duration: 5m", "duration: 29m\n    pause_after: 30m"),
         ("steps: the plan takes 2h27m with its pauses", "at most 2h")),
    # -- steps over their limits: the step, the parameter, the value and the limit
    Case("heat-over-limit", replace("temperature_c: 40", "temperature_c: 47"),
         ("steps[0].set.temperature_c", "step 'heat' (hc-200)", "temperature_c=47",
          "above the", "limit 45 degC"), "temperature_c: 47"),
    Case("ultrasound-over-clinical-limit", replace("intensity_w_cm2: 1.5", "intensity_w_cm2: 2.5"),
         ("steps[1].set.intensity_w_cm2", "step 'ultrasound' (us-300)", "intensity_w_cm2=2.5",
          "above the clinical limit 2 W/cm2", "absolute 3"), "intensity_w_cm2: 2.5"),
    Case("frequency-not-allowed", replace("frequency_mhz: 1", "frequency_mhz: 2"),
         ("steps[1].set.frequency_mhz", "frequency_mhz=2 is not one of the allowed values 1, 3"),
         "frequency_mhz: 2"),
    Case("tens-density-over-limit",
         replace("amplitude_ma: 20, electrode_area_cm2: 25", "amplitude_ma: 40, "
                 "electrode_area_cm2: 2"),
         ("step 'tens' (es-4)", "current_density_rms_ma_cm2=4", "above the derived limit 2")),
    Case("unknown-parameter", replace("temperature_c: 40", "temperature_c: 40, power: 3"),
         ("steps[0].set.power", "unknown parameter 'power' for hc-200"), "power: 3"),
    Case("cold-regime-limit", replace("temperature_c: 40", "temperature_c: 8"),
         ("steps[0].set.temperature_c", "temperature_c=8 is below the", "limit"),
         "temperature_c: 8"),
]


def write(tmp_path: Path, content: str | bytes, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(PlanError) as info:
        load_plan(str(path))
    assert info.value.problems
    return info.value.problems


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """The CLI in-process, with `plan` registered even before main.py lists it."""
    if plan_cmd not in cli_main.COMMAND_MODULES:
        monkeypatch.setattr(cli_main, "COMMAND_MODULES", (*cli_main.COMMAND_MODULES, plan_cmd))

    return in_process(capsys)


def test_the_base_plan_is_valid(tmp_path: Path) -> None:
    plan = load_plan(str(write(tmp_path, GOOD)))
    assert [s.name for s in plan.steps] == ["heat", "ultrasound", "tens"]
    assert [s.duration_s for s in plan.steps] == [900.0, 300.0, 1200.0]
    assert plan.steps[0].pause_after_s == 30.0
    assert plan.steps[1].settings == {"frequency_mhz": "1", "intensity_w_cm2": "1.5",
                                      "duty_pct": "20"}
    assert plan.roles() == {"heat": "hc-200", "ultrasound": "us-300", "tens": "es-4"}
    assert plan.example is False


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_plan_is_refused_with_a_clear_line(tmp_path: Path, case: Case) -> None:
    broken = case.mutate(GOOD)
    path = write(tmp_path, broken)
    problems = problems_of(path)
    for line in problems:
        assert line.lstrip().startswith(str(path)), line
        assert "Traceback" not in line
    matching = [p for p in problems if all(f in p for f in case.expect)]
    assert matching, f"no problem line has all of {case.expect}:\n" + "\n".join(problems)
    if case.at is not None:
        assert isinstance(broken, str)
        assert f"{path}:{line_of(broken, case.at)}:" in matching[0], matching[0]


def test_every_limit_problem_across_steps_is_listed(tmp_path: Path) -> None:
    text = (GOOD.replace("temperature_c: 40", "temperature_c: 47")
            .replace("intensity_w_cm2: 1.5", "intensity_w_cm2: 2.5")
            .replace("frequency_hz: 100", "frequency_hz: 300"))
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 3, problems
    assert any("step 'heat'" in p and "temperature_c=47" in p for p in problems)
    assert any("step 'ultrasound'" in p and "intensity_w_cm2=2.5" in p for p in problems)
    assert any("step 'tens'" in p and "frequency_hz=300" in p and "limit 150" in p
               for p in problems)


def test_a_profile_path_is_relative_to_the_plan_file(tmp_path: Path) -> None:
    sub = tmp_path / "plans"
    sub.mkdir()
    (sub / "my-heat.yaml").write_text(shipped_profile_paths()["hc-200"].read_text("utf-8"))
    plan = load_plan(str(write(sub, GOOD.replace("{profile: hc-200}",
                                                 "{profile: my-heat.yaml}"))))
    assert plan.profiles["heat"].id == "hc-200"


def test_an_invalid_profile_file_is_reported_with_its_own_problems(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("id: x\n")
    problems = problems_of(write(tmp_path, GOOD.replace("{profile: hc-200}",
                                                        "{profile: broken.yaml}")))
    assert any("devices.heat.profile: profile 'broken.yaml' is not valid" in p
               for p in problems)
    assert any("broken.yaml" in p and "required field is missing" in p for p in problems)


def test_an_unknown_plan_names_the_presets() -> None:
    with pytest.raises(PlanError) as info:
        load_plan("no-such-plan")
    assert "no such plan" in info.value.problems[0]
    assert "low-back-pain" in info.value.problems[0]
    assert isinstance(info.value, SourceError)


# -- presets ---------------------------------------------------------------------------
def presets() -> Iterator[str]:
    yield from preset_paths()


def test_the_expected_presets_ship() -> None:
    assert {"low-back-pain", "knee-osteoarthritis", "acute-ankle-sprain"} <= set(preset_paths())


@pytest.mark.parametrize("name", list(presets()))
def test_presets_are_valid_examples_for_a_clinician(name: str) -> None:
    plan = load_plan_file(preset_paths()[name])
    assert plan.example is True
    assert "clinician" in plan.spec.notes and "EXAMPLE" in plan.spec.notes
    for step in plan.steps:
        rx = step.prescription()
        assert rx.duration_s == step.duration_s


def test_low_back_pain_preset_is_the_one_in_the_issue() -> None:
    plan = load_plan("low-back-pain")
    heat, us, tens = plan.steps
    assert (heat.profile.id, heat.duration_s, heat.settings["temperature_c"]) == \
        ("hc-200", 900.0, "40")
    assert (us.profile.id, us.duration_s) == ("us-300", 300.0)
    assert us.settings == {"frequency_mhz": "1", "intensity_w_cm2": "1.5", "duty_pct": "20"}
    assert (tens.profile.id, tens.duration_s) == ("es-4", 1200.0)
    assert tens.settings["frequency_hz"] == "100" and tens.settings["pulse_width_us"] == "200"
    derived = tens.prescription().derived
    # 20 mA x sqrt(2 x 200 us x 100 Hz) = 4 mA r.m.s.; over 25 cm2 that is 0.16 mA/cm2.
    assert derived["current_density_rms_ma_cm2"] == pytest.approx(0.16)
    assert derived["current_density_rms_ma_cm2"] < 2.0


# -- the command line --------------------------------------------------------------------
def test_cli_validate_ok_and_bad(run: Run, tmp_path: Path) -> None:
    good = write(tmp_path, GOOD, "good.yaml")
    status, out, err = run("plan", "validate", str(good), "low-back-pain")
    assert status == 0, err
    assert f"{good}: ok" in out and "low-back-pain: ok" in out and "example" in out
    bad = write(tmp_path, GOOD.replace("temperature_c: 40", "temperature_c: 47")
                .replace("duration: 5m", "duration: 5 min"), "bad.yaml")
    status, out, err = run("plan", "validate", str(good), str(bad))
    assert status == 1
    assert f"{good}: ok" in out
    assert "steps[1].duration: duration '5 min' is not understood" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", [c for c in CASES if c.id in (
    "empty-file", "yaml-syntax-error", "list-at-top", "unknown-top-level-key", "missing-steps",
    "name-is-a-list", "unknown-role", "unknown-profile", "heat-over-limit",
    "duplicate-step-name", "duration-not-understood")], ids=lambda c: c.id)
def test_cli_validate_reports_each_bad_input_class(run: Run, tmp_path: Path,
                                                   case: Case) -> None:
    path = write(tmp_path, case.mutate(GOOD))
    status, _out, err = run("plan", "validate", str(path))
    assert status == 1
    assert all(f in err for f in case.expect), err
    assert "Traceback" not in err and "internal error" not in err


def test_cli_validate_missing_file(run: Run, tmp_path: Path) -> None:
    status, _out, err = run("plan", "validate", str(tmp_path / "nope.yaml"))
    assert status == 1
    assert "no such plan" in err and "Traceback" not in err


def test_cli_show_prints_steps_devices_total_and_the_example_warning(run: Run) -> None:
    status, out, err = run("plan", "show", "low-back-pain")
    assert status == 0, err
    assert EXAMPLE_WARNING in out
    for fragment in ("heat: hc-200", "ultrasound: us-300", "tens: es-4",
                     "1. moist heat - heat (hc-200) for 15m: temperature_c=40",
                     "duty_pct=20", "amplitude_ma=20", "then pause 1m",
                     "total: 40m of treatment + 2m of pauses = 42m"):
        assert fragment in out, fragment


def test_cli_show_of_a_bad_plan_exits_1(run: Run, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("device: tens", "device: laser"))
    status, _out, err = run("plan", "show", str(path))
    assert status == 1
    assert "unknown device role 'laser'" in err


def test_cli_show_of_a_plan_that_is_not_an_example_has_no_warning(run: Run,
                                                                   tmp_path: Path) -> None:
    status, out, _err = run("plan", "show", str(write(tmp_path, GOOD)))
    assert status == 0
    assert EXAMPLE_WARNING not in out


def test_cli_list_shows_the_presets(run: Run) -> None:
    status, out, _err = run("plan", "list")
    assert status == 0
    for name in ("low-back-pain", "knee-osteoarthritis", "acute-ankle-sprain"):
        assert name in out
    assert "clinician" in out


@pytest.mark.parametrize("argv, fragment", [
    (["--device", "heat"], "expected ROLE=PORT"),
    (["--device", "=/dev/null"], "expected ROLE=PORT"),
    (["--device", "heat=/dev/a", "--device", "heat=/dev/b"], "given twice"),
])
def test_cli_run_bad_device_option_is_a_usage_error(run: Run, argv: list[str],
                                                    fragment: str, tmp_path: Path) -> None:
    status, _out, err = run("plan", "run", "low-back-pain", "--yes", "--db",
                            str(tmp_path / "db.sqlite"), *argv)
    assert status == 2
    assert fragment in err


def test_cli_run_without_a_terminal_needs_yes(run: Run, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    status, _out, err = run("plan", "run", "low-back-pain", "--device", "heat=/dev/null",
                            "--db", str(tmp_path / "db.sqlite"))
    assert status == 2
    assert "give --yes" in err
