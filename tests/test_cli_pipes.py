"""A reader that goes away (`modctl ... | head -1`, a terminal that hangs up) is not an error.

Every command's output goes through `main.PipeSafeStream`: once the reader is gone the rest of
the output is dropped, the command finishes and exits with its own status, nothing is printed
on stderr (issue 10, item 7: "internal error: BrokenPipeError", exit 70). A session whose
stdout closes runs to its end and switches its output off as planned.

The pipes are real: a subprocess writes into a pipe whose read end is already closed (EPIPE on
the first write, every time), or into a real shell pipeline through `head -1`.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.records.store import RecordStore
from simulator.server import SimulatedDevice
from tests.conftest import SimFactory
from tests.session_helpers import history

MODCTL = [sys.executable, "-m", "controller.cli.main"]
TIMEOUT_S = 60.0
# The sessions' planned length: the HC-200's shortest. Short of the device watchdog (2 s), so
# an output left to the watchdog (a controller that died at the hang-up) cannot pass for the
# planned end.
SESSION_S = 1.0


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    db = tmp_path / "records.sqlite3"
    with RecordStore(db) as store:  # something to list
        for i in range(30):
            sid = store.open_session(profile="hc-200", port="/dev/pts/91", identity={},
                                     operator="alice", patient="P-0042",
                                     prescription={"modality": "thermal"}, planned_s=60)
            store.close_session(sid, "completed", f"done {i}", "controller", 60,
                                {"cem43_min": 1.0})
    # No $MODCTL_ROLES: roles are not enforced unless /etc/modctl/roles.yaml exists. Block
    # buffered stdout, as in a user's shell (the error then comes at a flush, or at exit).
    drop = ("MODCTL_ROLES", "PYTHONUNBUFFERED")
    yield {**{k: v for k, v in os.environ.items() if k not in drop}, "MODCTL_DB": str(db)}


def into_closed_pipe(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run modctl with stdout a pipe nobody reads any more; (exit status, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([*MODCTL, *argv], stdout=write_end, stderr=subprocess.PIPE,
                              env=env, text=True, timeout=TIMEOUT_S, check=False)
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("argv", [
    ["profiles", "show", "hc-200"],
    ["profiles", "list"],
    ["plan", "list"],
    ["plan", "show", "low-back-pain"],
    ["records", "list"],
    ["records", "patient", "P-0042", "--csv"],
    ["records", "export", "--format", "json"],
    ["diagram"],
    ["devices", "list"],
    ["book", "list", "--all"],
    ["serve", "--once"],
    ["--help"],
])
@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_closed_pipe_is_quiet_and_keeps_the_status(argv: list[str], unbuffered: str,
                                                     env: dict[str, str]) -> None:
    status, err = into_closed_pipe(argv, {**env, "PYTHONUNBUFFERED": unbuffered})
    assert (status, err) == (0, "")


def test_a_closed_pipe_keeps_a_failing_status_too(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\n")
    status, err = into_closed_pipe(["profiles", "validate", bad.as_posix(), "hc-200"], env)
    assert status == 1 and "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("command", ["profiles show hc-200", "records list", "plan list",
                                     "profiles list"])
def test_head_minus_one(command: str, env: dict[str, str]) -> None:
    line = " ".join(MODCTL)
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {line} {command} | head -1"],
                          capture_output=True, env=env, text=True, timeout=TIMEOUT_S,
                          check=False)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert len(proc.stdout.splitlines()) == 1


def session_argv(port: str, db: Path, *extra: str) -> list[str]:
    return [*MODCTL, "session", "run", "hc-200", "--port", port, "--duration", f"{SESSION_S:g}",
            "--set", "temperature_c=40", "--db", str(db), *extra]


def wait_on(proc: subprocess.Popen[bytes], device: SimulatedDevice) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not any(c.on for c in history(device)):
        assert proc.poll() is None, "modctl exited before the output started"
        assert time.monotonic() < deadline, "the output never started"
        time.sleep(0.02)


def test_session_run_into_a_closed_pipe_runs_to_its_end(
        sim_device: SimFactory, env: dict[str, str], tmp_path: Path) -> None:
    device = sim_device("hc-200")
    db = tmp_path / "s.sqlite3"
    status, err = into_closed_pipe(session_argv(device.port, db)[len(MODCTL):], env)
    assert (status, err) == (0, "")  # the summary went to the closed stdout, quietly
    assert [c.on for c in history(device)] == [True, False]
    with RecordStore(db) as store:
        [row] = store.list_sessions()
    assert row.outcome == "completed" and row.delivered_s == pytest.approx(SESSION_S, abs=0.3)


def test_session_run_on_a_terminal_that_hangs_up_runs_to_its_end(
        sim_device: SimFactory, env: dict[str, str], tmp_path: Path) -> None:
    # The live display writes to the terminal four times a second; when the terminal goes away
    # mid-session the writes fail (EIO). The session must not be abandoned (its worker is a
    # daemon thread: an exception on the main thread used to end the process with the output
    # on, left to the device's watchdog).
    device = sim_device("hc-200")
    db = tmp_path / "s.sqlite3"
    master, slave = pty.openpty()
    proc = subprocess.Popen(session_argv(device.port, db), stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    try:
        wait_on(proc, device)
        time.sleep(0.3)
        os.close(master)   # the terminal hangs up mid-session
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, err.decode()) == (0, "")
    changes = history(device)
    assert [c.on for c in changes] == [True, False]
    assert changes[1].t - changes[0].t == pytest.approx(SESSION_S, abs=0.3)  # the planned end
    assert changes[1].cause == "stop"
    with RecordStore(db) as store:
        [row] = store.list_sessions()
    assert row.outcome == "completed"


def test_json_report_still_reaches_a_reader_that_stays(
        sim_device: SimFactory, env: dict[str, str], tmp_path: Path) -> None:
    device = sim_device("hc-200")
    proc = subprocess.run(session_argv(device.port, tmp_path / "s.sqlite3", "--json"),
                          capture_output=True, env=env, text=True, timeout=TIMEOUT_S,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["outcome"] == "completed"
