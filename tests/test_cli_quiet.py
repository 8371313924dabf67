"""Quiet by default (issue 15): a device that goes silent costs the technician one sentence on
stderr, never the protocol's retries, raw bytes, Python reprs or a traceback; `--log-file`
keeps the exchanges and retries for whoever investigates.

The controller runs as `python -m controller.cli.main` in a subprocess (its stderr is what a
technician sees); the simulated devices run here on real pseudo-terminals.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SimFactory
from tests.session_helpers import SETTINGS

MODCTL = [sys.executable, "-m", "controller.cli.main"]
TIMEOUT_S = 60
# What must never reach a technician's stderr: hex bytes ("01 04 00 00"), Python reprs
# (b'', None, True/False as values, quotes around a repr), errno numbers, tracebacks.
HEX_RUN = re.compile(r"\b[0-9a-f]{2}( [0-9a-f]{2}){2,}\b")
FORBIDDEN = ("Traceback", "None", "b'", "[Errno", "attempt 1 of", "retry")
# The pieces of the one sentence (issue 15's example).
SENTENCE = re.compile(r"no reply from the (HC-200|US-300|ES-4) on /dev/pts/\d+ after \d+ "
                      r"attempts \(timeout \d+ ms each\)")


def session(pid: str, port: str, db: Path, *options: str) -> subprocess.CompletedProcess[str]:
    argv = [*MODCTL, *options, "session", "run", pid, "--port", port, "--duration", "5s",
            "--db", str(db)]
    for name, value in SETTINGS[pid].items():
        argv += ["--set", f"{name}={value}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)


def assert_plain(err: str) -> None:
    assert not HEX_RUN.search(err), err
    for word in FORBIDDEN:
        assert word not in err, err


@pytest.mark.parametrize("pid", ["hc-200", "us-300", "es-4"])
def test_a_silent_device_is_one_sentence_on_stderr(pid: str, sim_device: SimFactory,
                                                   tmp_path: Path) -> None:
    device = sim_device(pid, silent_at=0.0)     # answers until its output starts
    proc = session(pid, device.port, tmp_path / "r.sqlite3")
    assert proc.returncode == 5, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("modctl: fault: communication: ")
    assert SENTENCE.search(lines[0]), lines[0]
    assert_plain(proc.stderr)
    # stdout: the summary in words, the reason not repeated, no Python values.
    assert "stop confirmed: " not in proc.stdout and "None" not in proc.stdout
    assert "did NOT confirm its output off" in proc.stdout
    assert SENTENCE.search(proc.stdout) is None


def test_the_log_file_keeps_the_retries(sim_device: SimFactory, tmp_path: Path) -> None:
    device = sim_device("hc-200", silent_at=0.0)
    log = tmp_path / "modctl.log"
    proc = session("hc-200", device.port, tmp_path / "r.sqlite3", "--log-file", str(log))
    assert proc.returncode == 5 and len(proc.stderr.splitlines()) == 1, proc.stderr
    text = log.read_text()
    assert "attempt 1 of 5 failed" in text and "giving up after 5 attempts" in text
    assert HEX_RUN.search(text)                  # the bytes are in the log, for whoever looks
    assert "apscheduler" not in text             # the libraries' chatter is not


def test_a_missing_port_is_one_line_without_errno(tmp_path: Path) -> None:
    proc = subprocess.run([*MODCTL, "session", "run", "hc-200", "--port", "/dev/nonexistent",
                           "--duration", "5s", "--set", "temperature_c=40", "--db",
                           str(tmp_path / "r.sqlite3")], capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 3
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("modctl: rejected: "), proc.stderr
    assert "no such port" in lines[0]
    assert_plain(proc.stderr)
    assert "refused before any output" in proc.stdout
