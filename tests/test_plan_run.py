"""Plan runs over simulated devices: completion, refusal before anything starts, a fault
mid-plan, the operator's choices between steps, stop signals, bookings, the CLI.

Plans here are written to tmp_path with steps of 1 s. "Never started" is checked
at the device: the simulated model's output history stays empty.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.cli import main as cli_main
from controller.cli import plan_cmd
from controller.cli.session_cmd import terminal_runner
from controller.clinic import roles
from controller.plans.plan import Plan, PlanError, PlanReport, load_plan
from controller.plans.runner import match_devices, run_plan, run_plan_booking
from controller.records.store import RecordStore
from controller.session.service import SessionStarter
from simulator.server import SimulatedDevice
from tests.conftest import SimFactory
from tests.session_helpers import history
from tests.support.cli import in_process

# Steps at the shortest duration every model accepts (1 s): the plans' logic, not the
# treatments, is under test (the ES-4's 1 s ramp takes its whole step).
HEAT = "{name: heat, device: heat, duration: 1s, set: {temperature_c: 40}%s}"
US = "{name: ultrasound, device: ultrasound, duration: 1s, set: {frequency_mhz: 1, " \
     "intensity_w_cm2: 1.5, duty_pct: 20}%s}"
TENS = "{name: tens, device: tens, duration: 1s, set: {frequency_hz: 100, pulse_width_us: 200, " \
       "amplitude_ma: 10}%s}"
ROLES = {"heat": "hc-200", "ultrasound": "us-300", "tens": "es-4"}
Answers = Callable[[str], str]


def plan_file(tmp_path: Path, *steps: str, name: str = "quick plan") -> Path:
    roles = {r for r in ROLES if any(f"device: {r}," in s for s in steps)}
    devices = "".join(f"  {r}: {{profile: {ROLES[r]}}}\n" for r in ROLES if r in roles)
    body = "".join(f"  - {s}\n" for s in steps)
    path = tmp_path / f"plan-{len(list(tmp_path.glob('plan-*')))}.yaml"
    path.write_text(f"plan_format: 1\nname: {name}\ndevices:\n{devices}steps:\n{body}",
                    encoding="utf-8")
    return path


def step(template: str, extra: str = "") -> str:
    return template % (f", {extra}" if extra else "")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    with RecordStore(tmp_path / "records.sqlite") as s:
        yield s


@pytest.fixture
def devices(sim_device: SimFactory) -> dict[str, SimulatedDevice]:
    return {role: sim_device(pid) for role, pid in ROLES.items()}


def ports_of(devices: dict[str, SimulatedDevice]) -> dict[str, str]:
    return {role: d.port for role, d in devices.items()}


def answers(*given: str) -> tuple[Answers, list[str]]:
    """An injected `input`: the given answers in order, then end of input."""
    queue, prompts = list(given), []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        if not queue:
            raise EOFError
        return queue.pop(0)
    return ask, prompts


def go(plan: Plan, devices: dict[str, SimulatedDevice], store: RecordStore | None,
       **kw: Any) -> PlanReport:
    ports = kw.pop("ports", None) or {r: devices[r].port for r in plan.profiles}
    kw.setdefault("interactive", False)
    # What `modctl plan run` passes: each step on the terminal runner (signals stop it).
    kw.setdefault("run_step", terminal_runner(SessionStarter(store), live=False))
    return run_plan(plan, ports, store, "tester", "P-001", **kw)


def audit_rows(store: RecordStore) -> list[sqlite3.Row]:
    store.flush()
    conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM audit ORDER BY id").fetchall()
    finally:
        conn.close()


def assert_never_started(*devs: SimulatedDevice) -> None:
    for d in devs:
        assert history(d) == [], f"{d.profile.id} was switched on"


# -- completion ----------------------------------------------------------------------------
def test_three_step_plan_completes_and_links_three_session_records(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore) -> None:
    plan = load_plan(str(plan_file(tmp_path, step(HEAT), step(US), step(TENS))))
    report = go(plan, devices, store)
    assert report.outcome == "completed", report.reason
    assert report.exit_status == 0
    assert [s.outcome for s in report.steps] == ["completed"] * 3
    assert len(report.session_ids) == 3 and len(set(report.session_ids)) == 3
    for result in report.steps:
        row = store.get_session(result.session_id)
        assert row is not None
        assert row.outcome == "completed"
        assert row.profile == result.profile
        assert row.patient == "P-001" and row.operator == "tester"
        assert result.delivered_s == pytest.approx(result.planned_s, abs=0.05)
    assert report.planned_s == 3.0
    assert report.delivered_s == pytest.approx(3.0, abs=0.15)
    for d in devices.values():
        assert [c.on for c in history(d)] == [True, False]
    # The audit trail: plan.start, then plan.end naming the three sessions.
    rows = {r["id"]: r for r in audit_rows(store)}
    start, end = report.audit
    assert (start["action"], end["action"]) == ("plan.start", "plan.end")
    assert rows[start["id"]]["action"] == "plan.start"
    detail = json.loads(rows[end["id"]]["detail"])
    assert detail["plan_run_id"] == report.plan_run_id
    assert [s["session_id"] for s in detail["steps"]] == report.session_ids
    assert store.verify_audit().ok
    # The steps ran in order.
    on = [history(devices[r])[0].t for r in ("heat", "ultrasound", "tens")]
    assert on == sorted(on)


def test_report_json_has_the_links(tmp_path: Path, devices: dict[str, SimulatedDevice],
                                   store: RecordStore) -> None:
    plan = load_plan(str(plan_file(tmp_path, step(HEAT))))
    data = json.loads(go(plan, devices, store).to_json())
    assert data["outcome"] == "completed"
    assert data["plan"] == "quick plan"
    assert data["session_ids"] == [data["steps"][0]["session_id"]]
    assert {"planned_s", "delivered_s", "outcome", "session_id"} <= set(data["steps"][0])
    assert [a["action"] for a in data["audit"]] == ["plan.start", "plan.end"]


def test_pause_after_is_waited_when_running_straight_through(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore) -> None:
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        time.sleep(s)
    plan = load_plan(str(plan_file(tmp_path, step(HEAT, "pause_after: 0.5s"), step(US))))
    report = go(plan, devices, store, sleep=sleep)
    assert report.outcome == "completed"
    assert sum(slept) == pytest.approx(0.5, abs=0.05)
    heat_off = history(devices["heat"])[-1].t
    us_on = history(devices["ultrasound"])[0].t
    assert us_on - heat_off >= 0.5


# -- refused before anything starts ----------------------------------------------------------
def test_plan_with_a_step_over_a_limit_is_refused_before_anything_starts(
        tmp_path: Path, devices: dict[str, SimulatedDevice], run_cli: RunCli) -> None:
    path = plan_file(tmp_path, step(HEAT), step(US),
                     step(TENS).replace("amplitude_ma: 10", "amplitude_ma: 90"))
    status, out, err = run_cli("plan", "run", str(path), "--yes", "--json",
                               *device_args(devices))
    assert status == 3
    assert "step 'tens' (es-4): amplitude_ma=90 is above the" in err
    assert "limit 80 mA" in err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["outcome"] == "rejected"
    assert report["session_ids"] == []
    assert any("amplitude_ma=90" in p for p in report["problems"])
    assert_never_started(*devices.values())


def test_a_limit_that_needs_the_device_is_checked_before_the_first_step(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore) -> None:
    # 2 W/cm2 x 5 cm2 ERA x 100 % x 1795 s = 17950 J, over the 10000 J limit: only
    # checkable once the applicator's ERA is read from the device.
    long_us = ("{name: ultrasound, device: ultrasound, duration: 1795s, set: "
               "{frequency_mhz: 1, intensity_w_cm2: 2.0, duty_pct: 100}}")
    plan = load_plan(str(plan_file(tmp_path, step(HEAT), long_us)))
    report = go(plan, devices, store)
    assert report.outcome == "rejected" and report.exit_status == 3
    assert any("step 2 'ultrasound' (us-300): energy_j=" in p and "10000" in p
               for p in report.problems), report.problems
    assert_never_started(*devices.values())


def test_missing_and_unknown_roles_are_refused(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore) -> None:
    plan = load_plan(str(plan_file(tmp_path, step(HEAT), step(US))))
    report = go(plan, devices, store, ports={"heat": devices["heat"].port,
                                             "laser": "/dev/null"})
    assert report.outcome == "rejected"
    assert any("device role 'ultrasound' (us-300) has no port" in p for p in report.problems)
    assert any("the plan has no device role 'laser'" in p for p in report.problems)
    assert_never_started(*devices.values())
    actions = [r["action"] for r in audit_rows(store)]
    assert actions == ["plan.start", "plan.end"]


def test_a_wrong_device_on_a_later_role_is_found_before_the_first_step(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore) -> None:
    plan = load_plan(str(plan_file(tmp_path, step(HEAT), step(TENS))))
    report = go(plan, devices, store, ports={"heat": devices["heat"].port,
                                             "tens": devices["ultrasound"].port})
    assert report.outcome == "rejected"
    assert any(p.startswith("device role 'tens' (es-4) on ") for p in report.problems), \
        report.problems
    assert_never_started(*devices.values())


# -- stopping ----------------------------------------------------------------------------------
def test_fault_mid_plan_stops_it_and_keeps_the_finished_steps(
        tmp_path: Path, sim_device: SimFactory, store: RecordStore) -> None:
    devs = {"heat": sim_device("hc-200"), "tens": sim_device("es-4", lead_off_at=0.5),
            "ultrasound": sim_device("us-300")}
    plan = load_plan(str(plan_file(tmp_path, step(HEAT), step(TENS), step(US))))
    report = go(plan, devs, store)
    assert report.outcome == "fault" and report.exit_status == 5
    assert [s.outcome for s in report.steps] == ["completed", "fault", "not_started"]
    assert "lead off" in report.steps[1].reason
    assert "step 2 'tens'" in report.reason
    first, second = (store.get_session(s.session_id) for s in report.steps[:2])
    assert first is not None and first.outcome == "completed"
    assert second is not None and second.outcome == "fault"
    assert report.steps[2].session_id == ""
    assert_never_started(devs["ultrasound"])
    assert history(devs["tens"])[-1].on is False


@pytest.mark.parametrize("given, outcomes", [
    (("", "s", ""), ["completed", "skipped", "completed"]),
    (("s", "skip", "S"), ["skipped", "skipped", "skipped"]),
    (("", "p", "", "zzz", "c", "y"), ["completed", "completed", "completed"]),
])
def test_operator_can_skip_or_pause_between_steps(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore,
        given: tuple[str, ...], outcomes: list[str]) -> None:
    plan = load_plan(str(plan_file(tmp_path, step(HEAT), step(US), step(TENS))))
    ask, prompts = answers(*given)
    report = go(plan, devices, store, interactive=True, ask=ask)
    assert [s.outcome for s in report.steps] == outcomes
    assert report.outcome == "completed" and report.exit_status == 0
    assert len(prompts) == len(given)
    for result, role in zip(report.steps, ("heat", "ultrasound", "tens"), strict=True):
        if result.outcome == "skipped":
            assert_never_started(devices[role])
            assert result.session_id == ""
        else:
            assert store.get_session(result.session_id) is not None


@pytest.mark.parametrize("given", [("", "q"), ("", "stop"), ("",)], ids=["q", "stop", "eof"])
def test_operator_can_stop_the_plan_between_steps(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore,
        given: tuple[str, ...]) -> None:
    plan = load_plan(str(plan_file(tmp_path, step(HEAT), step(US), step(TENS))))
    ask, _ = answers(*given)
    report = go(plan, devices, store, interactive=True, ask=ask)
    assert report.outcome == "stopped" and report.exit_status == 4
    assert [s.outcome for s in report.steps] == ["completed", "not_started", "not_started"]
    assert_never_started(devices["ultrasound"], devices["tens"])
    assert report.audit[-1]["action"] == "plan.end"


def test_ctrl_c_during_a_step_stops_the_step_and_the_plan(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore) -> None:
    plan = load_plan(str(plan_file(tmp_path, step(HEAT).replace("1s", "5s"), step(US))))

    def ctrl_c_once_on() -> None:
        deadline = time.monotonic() + 10
        while not history(devices["heat"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=ctrl_c_once_on, daemon=True).start()
    report = go(plan, devices, store)
    assert report.outcome == "stopped" and report.exit_status == 4
    assert report.steps[0].outcome == "aborted"
    assert report.steps[0].stop_source == "operator"
    assert report.steps[0].delivered_s < 5.0
    assert report.steps[1].outcome == "not_started"
    assert_never_started(devices["ultrasound"])
    assert history(devices["heat"])[-1].on is False


def test_sigterm_during_a_pause_stops_the_plan(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore) -> None:
    def sleep(s: float) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(s)
    plan = load_plan(str(plan_file(tmp_path, step(HEAT, "pause_after: 5s"), step(US))))
    before = signal.getsignal(signal.SIGTERM)
    report = go(plan, devices, store, sleep=sleep)
    assert report.outcome == "stopped" and report.exit_status == 4
    assert "SIGTERM" in report.reason
    assert [s.outcome for s in report.steps] == ["completed", "not_started"]
    assert_never_started(devices["ultrasound"])
    assert signal.getsignal(signal.SIGTERM) is before


# -- bookings --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Booking:
    id: int
    plan: str | None
    patient: str


@dataclass(frozen=True)
class Device:
    name: str
    profile: str
    port: str


def test_run_plan_booking_runs_on_the_booked_devices(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore) -> None:
    path = plan_file(tmp_path, step(HEAT), step(US))
    status, sessions = run_plan_booking(
        store=store, booking=Booking(7, str(path), "P-002"),
        device=Device("pad-1", "hc-200", devices["heat"].port), operator="tester",
        devices=[Device("us-1", "us-300", devices["ultrasound"].port)], interactive=False)
    assert status == 0
    assert len(sessions) == 2
    rows = [store.get_session(s) for s in sessions]
    assert all(r is not None and r.patient == "P-002" for r in rows)
    start = json.loads(audit_rows(store)[0]["detail"])
    assert start["booking_id"] == "7"


def test_run_plan_booking_refuses_a_role_no_booked_device_fits(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = plan_file(tmp_path, step(HEAT), step(US))
    status, sessions = run_plan_booking(
        store=store, booking=Booking(8, str(path), "P-002"),
        device=Device("pad-1", "hc-200", devices["heat"].port), operator="tester",
        interactive=False, as_json=True)
    assert (status, sessions) == (3, [])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["booking_id"] == "8"
    assert any("device role 'ultrasound' needs a us-300 device" in p
               for p in report["problems"])
    assert_never_started(*devices.values())


def test_run_plan_booking_refuses_a_plan_that_no_longer_loads(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore) -> None:
    status, sessions = run_plan_booking(
        store=store, booking=Booking(9, str(tmp_path / "gone.yaml"), "P-002"),
        device=Device("pad-1", "hc-200", devices["heat"].port), operator="tester",
        interactive=False)
    assert (status, sessions) == (3, [])
    assert [r["action"] for r in audit_rows(store)] == ["plan.start", "plan.end"]


def test_match_devices_is_by_profile(tmp_path: Path) -> None:
    plan = load_plan(str(plan_file(tmp_path, step(HEAT), step(US))))
    assert match_devices(plan, {"a": ("hc-200", "/dev/a"), "b": ("us-300", "/dev/b")}) == \
        {"heat": "/dev/a", "ultrasound": "/dev/b"}
    two_pads = {"a": ("hc-200", "/dev/a"), "c": ("hc-200", "/dev/c"), "b": ("us-300", "/dev/b")}
    with pytest.raises(PlanError, match="ambiguous"):
        match_devices(plan, two_pads)
    # Named per role (a booking that says which device serves which role).
    assert match_devices(plan, two_pads, {"heat": "c", "ultrasound": "b"}) == \
        {"heat": "/dev/c", "ultrasound": "/dev/b"}
    with pytest.raises(PlanError) as info:
        match_devices(plan, two_pads, {"heat": "b"})
    assert info.value.problems == [
        "device role 'heat' needs a hc-200 device: the device booked for it, 'b', is a us-300",
        "device role 'ultrasound' needs a us-300 device: no device is booked for it (booked: "
        "a (hc-200), b (us-300), c (hc-200))"]


@dataclass(frozen=True)
class RoleBooking:
    id: int
    plan: str | None
    patient: str
    devices: dict[str, str]


def test_run_plan_booking_follows_the_devices_the_booking_names(
        tmp_path: Path, sim_device: SimFactory, store: RecordStore) -> None:
    pad_a, pad_b = sim_device("hc-200"), sim_device("hc-200")
    path = plan_file(tmp_path, step(HEAT))
    status, sessions = run_plan_booking(
        store=store, booking=RoleBooking(3, str(path), "P-3", {"heat": "pad-b"}),
        device=Device("pad-a", "hc-200", pad_a.port), operator="tester",
        devices=[Device("pad-b", "hc-200", pad_b.port)], interactive=False)
    assert status == 0 and len(sessions) == 1
    assert_never_started(pad_a)
    assert [c.on for c in history(pad_b)] == [True, False]


# -- the command line ------------------------------------------------------------------------
RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> RunCli:
    if plan_cmd not in cli_main.COMMAND_MODULES:
        monkeypatch.setattr(cli_main, "COMMAND_MODULES", (*cli_main.COMMAND_MODULES, plan_cmd))
    monkeypatch.setenv("MODCTL_DB", str(tmp_path / "cli.sqlite"))
    # No roles file (roles not enforced) unless a test names one.
    monkeypatch.delenv(roles.ROLES_ENV, raising=False)
    monkeypatch.setattr(roles, "DEFAULT_ROLES_PATH", tmp_path / "no-roles.yaml")

    return in_process(capsys)


def device_args(devices: dict[str, SimulatedDevice]) -> list[str]:
    return [a for role, d in devices.items() for a in ("--device", f"{role}={d.port}")]


def test_cli_plan_run_json_report_is_the_last_line(
        tmp_path: Path, devices: dict[str, SimulatedDevice], run_cli: RunCli) -> None:
    path = plan_file(tmp_path, step(HEAT), step(US))   # three steps: the test above
    status, out, err = run_cli("plan", "run", str(path), "--yes", "--json", "--operator",
                               "alice", "--patient", "P-9",
                               *device_args({r: devices[r] for r in ("heat", "ultrasound")}))
    assert status == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["outcome"] == "completed"
    assert len(report["session_ids"]) == 2
    assert "step 2 completed" in err
    with RecordStore(tmp_path / "cli.sqlite") as s:
        for sid in report["session_ids"]:
            row = s.get_session(sid)
            assert row is not None and row.operator == "alice" and row.patient == "P-9"


def test_cli_plan_run_of_an_example_preset_says_so(
        devices: dict[str, SimulatedDevice], run_cli: RunCli) -> None:
    # Refused (no port for two roles) before anything starts, but the warning is shown.
    status, out, _err = run_cli("plan", "run", "low-back-pain", "--yes", "--device",
                                f"heat={devices['heat'].port}")
    assert status == 3
    assert "EXAMPLE PLAN" in out
    assert "device role 'tens' (es-4) has no port" in out
    assert_never_started(*devices.values())


def test_plan_run_needs_the_clinician_role(
        tmp_path: Path, devices: dict[str, SimulatedDevice], run_cli: RunCli,
        monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    (etc / "roles.yaml").write_text("operators:\n  tom: [technician]\n  alice: [clinician]\n")
    (etc / "roles.yaml").chmod(0o600)
    monkeypatch.setenv(roles.ROLES_ENV, str(etc / "roles.yaml"))
    path = plan_file(tmp_path, step(HEAT))
    status, _out, err = run_cli("plan", "run", str(path), "--yes", "--operator", "tom",
                                *device_args(devices))
    assert status == 3
    assert "operator 'tom' may not run a treatment plan: the clinician role is needed" in err
    assert_never_started(*devices.values())
    status, _out, err = run_cli("plan", "run", str(path), "--yes", "--operator", "alice",
                                "--device", f"heat={devices['heat'].port}")
    assert status == 0, err


def test_plan_run_refuses_a_device_whose_calibration_is_overdue(
        tmp_path: Path, devices: dict[str, SimulatedDevice], run_cli: RunCli) -> None:
    with RecordStore(tmp_path / "cli.sqlite") as s:
        s.add_device("us-1", "us-300", devices["ultrasound"].port, "tom")
    path = plan_file(tmp_path, step(HEAT), step(US))
    status, out, err = run_cli("plan", "run", str(path), "--yes", *device_args(devices))
    assert status == 3, out + err
    assert "device role 'ultrasound' (us-300) on" in out
    assert "out of calibration" in out
    assert_never_started(*devices.values())


def test_a_device_check_refusal_stops_the_plan_before_anything_starts(
        tmp_path: Path, devices: dict[str, SimulatedDevice], store: RecordStore) -> None:
    seen: list[tuple[str, str, str]] = []

    def check(role: str, profile: Any, port: str) -> str | None:
        seen.append((role, profile.id, port))
        return "calibration overdue" if role == "tens" else None
    plan = load_plan(str(plan_file(tmp_path, step(HEAT), step(TENS))))
    report = go(plan, devices, store, device_check=check)
    assert report.outcome == "rejected"
    assert report.problems == [f"device role 'tens' (es-4) on {devices['tens'].port}: "
                               "calibration overdue"]
    assert sorted(seen) == [("heat", "hc-200", devices["heat"].port),
                            ("tens", "es-4", devices["tens"].port)]
    assert_never_started(*devices.values())
