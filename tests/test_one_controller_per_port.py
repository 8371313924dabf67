"""Two `modctl session run` on one port (issue 10 item 6): the second is refused with exit 3
before anything is written, naming the holder; the first runs on undisturbed.

Before the fix both ran: one read the other's replies ("device reports 30 W/cm2"), and on
the ES-4 one's e-stop ended the other's channel, recorded as a patient event.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SimFactory
from tests.session_helpers import history
from tests.test_session_signals import start_cli, wait_output_on


@pytest.mark.parametrize("pid", ["us-300", "es-4"])
def test_a_second_controller_on_a_busy_port_is_refused(
        pid: str, sim_device: SimFactory, tmp_path: Path) -> None:
    device = sim_device(pid)
    first = start_cli(pid, device.port, tmp_path / "a.sqlite3", duration="3")
    wait_output_on(device, first)
    second = start_cli(pid, device.port, tmp_path / "b.sqlite3", duration="3")
    out2, err2 = second.communicate(timeout=20)
    out1, err1 = first.communicate(timeout=20)
    assert second.returncode == 3, err2
    refused = json.loads(out2.strip().splitlines()[-1])
    assert refused["outcome"] == "rejected" and not refused["output_started"]
    assert "in use by another controller" in refused["reason"]
    assert f"pid {first.pid}" in refused["reason"]
    assert first.returncode == 0, err1
    report = json.loads(out1.strip().splitlines()[-1])
    assert report["outcome"] == "completed", report["reason"]
    assert [c.on for c in history(device)] == [True, False]     # one output, once


def test_the_port_is_free_again_once_the_first_controller_ends(
        sim_device: SimFactory, tmp_path: Path) -> None:
    device = sim_device("hc-200")
    for db in ("a.sqlite3", "b.sqlite3"):
        proc = start_cli("hc-200", device.port, tmp_path / db, duration="1")
        proc.communicate(timeout=20)
        assert proc.returncode == 0
    assert [c.on for c in history(device)] == [True, False, True, False]
