"""The record holds what the device holds (issue 10 items 2 and 7): the backstops read back
after `arm`, the device's own timer checked once the output runs, the device identity, and
the device's own count of output time beside the host's."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from controller.device.link import ReadBack
from controller.records.store import RecordStore
from controller.session.backstops import reconcile, timer_problem
from protocols.map_common import Scalar
from tests.conftest import SimFactory
from tests.session_helpers import history, make_session
from tests.test_session_signals import start_cli, wait_output_on
from tests.test_session_unit import FakeLink, make, thermal


def test_a_device_that_does_not_hold_the_watchdog_is_refused_before_output() -> None:
    session, link, _ = make("hc-200", {"temperature_c": "40"}, 30.0, thermal)

    def read_back(op: str, variables: Mapping[str, Scalar]) -> dict[str, ReadBack]:
        return {"watchdog.value": ReadBack(2.0, 0), "run_time.value": ReadBack(35.0, 35)}

    link.read_back = read_back  # type: ignore[method-assign]
    report = session.run()
    assert report.outcome == "rejected" and report.exit_status == 3
    assert "watchdog.value reads 0 (written 2.0)" in report.reason
    assert "start" not in [op for _, op in link.ops]


def test_a_device_timer_left_at_its_default_ends_the_session_at_the_first_poll() -> None:
    def default_timer(elapsed: float, on: bool) -> dict[str, Scalar]:
        return {**thermal(elapsed, on), "remaining_s": 600}   # the HC-200's power-up default

    class DefaultTimerLink(FakeLink):
        def telemetry(self, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
            values = super().telemetry(variables)
            values["remaining_s"] = 600 if self.on else 0
            return values

    session, link, _ = make("hc-200", {"temperature_c": "40"}, 60.0, default_timer)
    session._link_factory = lambda p, port: DefaultTimerLink(  # type: ignore[assignment,return-value]
        p, link.clock, default_timer)
    report = session.run()
    assert report.outcome == "fault" and report.exit_status == 5
    assert "device session timer reads 600 s" in report.reason
    assert report.delivered_s < 1.0
    checks = [e.detail for e in report.events if e.detail.get("op") == "timer_check"]
    assert checks == [{"op": "timer_check", "remaining_s": 600, "armed_s": 65.0,
                       "confirmed": False}]


@pytest.mark.parametrize(("remaining", "ok"), [(65, True), (64, True), (63, True), (62, False),
                                               (66, True), (67, False), (600, False),
                                               (None, False), ("x", False)])
def test_timer_problem_bounds(remaining: object, ok: bool) -> None:
    problem = timer_problem({"remaining_s": remaining}, 65.0, 0.9)  # type: ignore[dict-item]
    assert (problem is None) is ok


@pytest.mark.parametrize(("host", "device", "recorded"), [
    (10.2, 10.0, 10.2), (10.9, 10.0, 10.9), (9.7, 10.0, 9.7),
    (13.5, 10.0, 10.0),      # the host was frozen: it over-reports
    (6.0, 10.0, 10.0),       # the host missed the end: it under-reports
    (10.0, None, 10.0)])
def test_reconcile(host: float, device: float | None, recorded: float) -> None:
    delivered, note = reconcile(host, device, slack_s=0.5)
    assert delivered == recorded
    assert bool(note) == (delivered != host)


@pytest.mark.parametrize("pid", ["hc-200", "us-300", "es-4"])
def test_the_record_holds_identity_backstops_and_device_count(
        pid: str, sim_device: SimFactory, tmp_path: Path) -> None:
    device = sim_device(pid)
    with RecordStore(tmp_path / "r.sqlite3") as store:
        report = make_session(pid, device, 2.0, store=store, profile_path="/x/p.yaml",
                              profile_sha256="ab" * 32).run()
        row = store.get_session(report.session_id)
    assert report.outcome == "completed", report.reason
    assert row is not None
    assert row.identity["serial"] and row.identity["model"] and row.identity["firmware"]
    assert (row.profile_path, row.profile_sha256) == ("/x/p.yaml", "ab" * 32)
    assert report.profile_file["sha256"] == "ab" * 32
    arm = next(e.detail for e in report.events if e.detail.get("op") == "arm")
    read = {k: v["read"] for k, v in arm["read_back"].items()}
    if pid == "es-4":
        assert set(read.values()) == {None}     # the framed family cannot read back
    else:
        assert all(v is not None for v in read.values()) and len(read) == 2
    timer = next(e.detail for e in report.events if e.detail.get("op") == "timer_check")
    assert timer["confirmed"] is True
    assert row.device_elapsed_s is not None and 1.0 <= row.device_elapsed_s <= 2.0


def test_identity_gate_refuses_before_output(sim_device: SimFactory) -> None:
    device = sim_device("us-300")
    seen: list[Mapping[str, str]] = []

    def gate(identity: Mapping[str, str]) -> str | None:
        seen.append(identity)
        return "device US-300 serial X is not the registered one"

    report = make_session("us-300", device, 2.0, on_identified=gate).run()
    assert report.outcome == "rejected" and "not the registered one" in report.reason
    assert seen and seen[0]["model"] == "US-300"
    assert not any(c.on for c in history(device))


def test_a_frozen_controller_records_what_the_device_delivered(
        sim_device: SimFactory, tmp_path: Path) -> None:
    """SIGSTOP freezes the controller; the device watchdog stops the output; on SIGCONT the
    controller finds it off. The host-measured time includes the frozen seconds; the
    record takes the device's own count."""
    device = sim_device("hc-200")
    proc = start_cli("hc-200", device.port, tmp_path / "r.sqlite3", duration="10")
    on_at = wait_output_on(device, proc)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(4.0)                 # the watchdog (2 s) stops the output meanwhile
    os.kill(proc.pid, signal.SIGCONT)
    out, _err = proc.communicate(timeout=20)
    report = json.loads(out.strip().splitlines()[-1])
    changes = history(device)
    off = next(c for c in changes if not c.on and c.t > on_at)
    truth = off.t - on_at
    seen = (f"truth {truth:.3f} s, delivered {report['delivered_s']}, host "
            f"{report['host_delivered_s']}, device {report['device_elapsed_s']}: "
            f"{report['reason']}")
    assert off.cause == "watchdog", seen
    assert report["outcome"] == "fault" and report["stop_source"] == "device_watchdog", seen
    assert report["host_delivered_s"] > truth + 1.5, seen      # what the old record said
    # The device counts whole seconds: its count is the truth to within one second.
    assert abs(report["delivered_s"] - truth) <= 1.05, seen


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_device_count_is_never_recorded(bad: float) -> None:
    # NaN would fail every comparison in reconcile() and be recorded as delivered time.
    from controller.session.backstops import device_elapsed
    assert device_elapsed({"elapsed_s": bad}) is None
    assert timer_problem({"remaining_s": bad}, 65.0, 0.9) is not None
