"""A plan's steps of one modality share one session's dose budget (issue 10, item 7).

4 x 15 min at 44 degC is 30 CEM43 min a step, each inside the HC-200's 60 min budget, 120 in
all: refused by `plan validate`, `plan run` and `book add --plan`, with the numbers named, before
any device is contacted. The ultrasound energy needs the device's ERA, so its sum is checked
once the devices have identified, still before any output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.cli import main as cli_main
from controller.cli import plan_cmd
from controller.clinic import roles
from controller.modality.dose_budget import accumulating, budget_problems, plan_budget_problems
from controller.modality.prescription import build_prescription
from controller.plans.plan import load_plan
from controller.plans.runner import precheck
from controller.profiles.loader import resolve_profile
from tests.conftest import SimFactory
from tests.session_helpers import history

HOT = "{name: %s, device: heat, duration: 15m, set: {temperature_c: 44}}"
US = "{name: %s, device: ultrasound, duration: 15m, set: {frequency_mhz: 1, " \
     "intensity_w_cm2: 1.5, duty_pct: 100}}"
TENS = "{name: %s, device: tens, duration: 30m, set: {frequency_hz: 100, pulse_width_us: 160, " \
       "amplitude_ma: 20}}"
DEVICES = {"heat": "hc-200", "ultrasound": "us-300", "tens": "es-4"}


def plan_file(tmp_path: Path, *steps: str) -> Path:
    roles_used = [r for r in DEVICES if any(f"device: {r}," in s for s in steps)]
    devices = "".join(f"  {r}: {{profile: {DEVICES[r]}}}\n" for r in roles_used)
    body = "".join(f"  - {s % f'step-{i}'}\n" for i, s in enumerate(steps, 1))
    path = tmp_path / f"plan-{len(list(tmp_path.glob('plan-*')))}.yaml"
    path.write_text(f"plan_format: 1\nname: split dose\ndevices:\n{devices}steps:\n{body}")
    return path


def never_contacted(profile: Any, port: str) -> Any:
    raise AssertionError(f"device on {port} was contacted")


def test_only_accumulating_doses_are_summed() -> None:
    assert accumulating("thermal") == {"cem43_min": "min"}
    assert "energy_j" in accumulating("ultrasound")
    assert "max_charge_per_phase_uc" not in accumulating("tens")  # a peak, not a dose


def test_four_times_fifteen_minutes_at_44_is_refused_with_the_numbers(tmp_path: Path) -> None:
    plan = load_plan(plan_file(tmp_path, HOT, HOT, HOT, HOT))  # each step alone is valid
    [problem] = plan_budget_problems(plan)
    assert "thermal dose: the 4 thermal steps plan cem43_min 120 min in all" in problem
    assert "step 1 'step-1' (hc-200) 30" in problem and "step 4 'step-4' (hc-200) 30" in problem
    assert "above the per-session budget 60 min (hc-200 limits.derived.cem43_min)" in problem
    _, problems = precheck(plan, {"heat": "/dev/pts/91"}, link_factory=never_contacted)
    assert problems == [problem]


def test_steps_that_fit_the_budget_together_pass(tmp_path: Path) -> None:
    assert plan_budget_problems(load_plan(plan_file(tmp_path, HOT, HOT))) == []  # 60 of 60
    assert plan_budget_problems(load_plan(plan_file(tmp_path, HOT, HOT, HOT)))  # 90 of 60
    # Peaks are not doses: two TENS steps at the charge limit each are fine.
    assert plan_budget_problems(load_plan(plan_file(tmp_path, TENS, TENS))) == []


def test_budget_problems_uses_the_prescriptions_own_dose_figures() -> None:
    heat = resolve_profile("hc-200").profile
    steps = [(f"s{i}", build_prescription(heat, {"temperature_c": "44"}, 900)) for i in range(3)]
    assert [rx.derived["cem43_min"] for _, rx in steps] == [30.0] * 3
    assert "cem43_min 90 min in all (s0 30, s1 30, s2 30)" in budget_problems(steps)[0]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if plan_cmd not in cli_main.COMMAND_MODULES:
        monkeypatch.setattr(cli_main, "COMMAND_MODULES", (*cli_main.COMMAND_MODULES, plan_cmd))
    monkeypatch.setenv("MODCTL_DB", str(tmp_path / "cli.sqlite"))
    monkeypatch.delenv(roles.ROLES_ENV, raising=False)
    monkeypatch.setattr(roles, "DEFAULT_ROLES_PATH", tmp_path / "no-roles.yaml")
    return tmp_path


def test_plan_validate_and_plan_run_refuse_it(cli: Path, sim_device: SimFactory,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = plan_file(cli, HOT, HOT, HOT, HOT)
    assert cli_main.main(["plan", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: thermal dose: the 4 thermal steps plan cem43_min 120 min in all" in err
    heat = sim_device("hc-200")
    assert cli_main.main(["plan", "run", str(path), "--yes", "--device", f"heat={heat.port}",
                          "--patient", "P-0042"]) == 3
    out = capsys.readouterr().out
    assert "refused: thermal dose" in out and "budget 60 min" in out
    assert history(heat) == []


def test_ultrasound_energy_is_summed_once_the_device_reports_its_era(
        tmp_path: Path, sim_device: SimFactory) -> None:
    # 1.5 W/cm2 x 5 cm2 (the simulator's ERA) x 100 % x 900 s = 6750 J a step, 10000 J budget.
    plan = load_plan(plan_file(tmp_path, US, US))
    assert plan_budget_problems(plan) == []  # the ERA is not known without the device
    us = sim_device("us-300")
    _, problems = precheck(plan, {"ultrasound": us.port})
    assert len(problems) == 1
    assert "ultrasound dose: the 2 ultrasound steps plan energy_j 13500 J in all" \
        in problems[0]
    assert "budget 10000 J (us-300 limits.derived.energy_j)" in problems[0]
    assert history(us) == []


def test_book_add_refuses_a_plan_over_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_bookings import register
    from tests.test_devices_cli import clinic, modctl
    db = clinic(tmp_path, monkeypatch)
    register(db, ("heat-1", "hc-200", "/dev/pts/91"))
    book = ["book", "add", "--device", "heat-1", "--at", "2030-03-04T09:30", "--patient",
            "P-0042", "--operator", "alice", "--plan"]
    assert modctl(*book, str(plan_file(tmp_path, HOT, HOT, HOT, HOT))) == 3
    assert "refused: --plan" in capsys.readouterr().err
    assert modctl(*book, str(plan_file(tmp_path, HOT, HOT))) == 0
