"""`modctl session run` in a real subprocess: SIGINT, SIGTERM, SIGKILL.

The simulated device runs in this process on a pty; the controller is a separate
process exactly as a clinician would start it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.records.store import RecordStore
from simulator.server import SimulatedDevice
from tests.conftest import SimFactory
from tests.session_helpers import SETTINGS, history

# Operator stops must reach the device within this (issue #4).
OPERATOR_STOP_S = 0.2
# After SIGKILL the device watchdog (at most 2 s) must stop the output within this.
WATCHDOG_STOP_S = 2.1
START_TIMEOUT_S = 10.0


def start_cli(pid: str, port: str, db: Path, duration: str = "20") -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "controller.cli.main", "session", "run", pid, "--port", port,
            "--duration", duration, "--json", "--db", str(db)]
    for name, value in SETTINGS[pid].items():
        args += ["--set", f"{name}={value}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_output_on(device: SimulatedDevice, proc: subprocess.Popen[str]) -> float:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        on = [c for c in history(device) if c.on]
        if on:
            return on[0].t
        if proc.poll() is not None:
            pytest.fail(f"controller exited early: {proc.communicate()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("output never started")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("pid", ["hc-200", "us-300", "es-4"])
def test_signal_stops_output_within_200_ms_and_exits_4(
        pid: str, signum: int, sim_device: SimFactory, tmp_path: Path) -> None:
    device = sim_device(pid)
    proc = start_cli(pid, device.port, tmp_path / "r.sqlite3")
    wait_output_on(device, proc)
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 4, err
    off = [c for c in history(device) if not c.on]
    assert off, "device output never stopped"
    assert off[0].t - sent < OPERATOR_STOP_S
    report = json.loads(out.strip().splitlines()[-1])
    assert report["outcome"] == "aborted" and report["stop_source"] == "operator"
    assert "Traceback" not in err


@pytest.mark.parametrize("pid", ["hc-200", "es-4"])
def test_sigkill_watchdog_stops_output_and_next_start_marks_interrupted(
        pid: str, sim_device: SimFactory, tmp_path: Path) -> None:
    device = sim_device(pid)
    db = tmp_path / "r.sqlite3"
    proc = start_cli(pid, device.port, db)
    wait_output_on(device, proc)
    time.sleep(0.6)
    killed = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    deadline = killed + WATCHDOG_STOP_S + 1.0
    while time.monotonic() < deadline and history(device)[-1].on:
        time.sleep(0.01)
    last = history(device)[-1]
    assert not last.on and last.cause == "watchdog"
    assert last.t - killed <= WATCHDOG_STOP_S
    # The next start finds the session left open, marks it interrupted, resumes nothing.
    again = start_cli(pid, device.port, db, duration="1")
    _out, err = again.communicate(timeout=20)
    assert "marked interrupted" in err
    with RecordStore(db) as store:
        rows = store.list_sessions()
    statuses = sorted(r.status for r in rows)
    assert "interrupted" in statuses
    interrupted = next(r for r in rows if r.status == "interrupted")
    assert (interrupted.delivered_s or 0) > 0
    assert sum(1 for c in history(device) if c.on) == 2   # the killed one and the new one
