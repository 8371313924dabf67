"""`modctl demo --serve`: one command starts the clinic service on simulated, registered,
calibrated devices with demo accounts printed; a clinician can log in and treat."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.support.service import ROOT, Client, wait_for

pytestmark = pytest.mark.slow


def test_demo_serve_runs_a_ready_room() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli.main", "demo", "--serve",
                             "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(line.rstrip("\n") for line in proc.stdout)

    threading.Thread(target=read, daemon=True).start()
    try:
        assert wait_for(lambda: any(x.startswith("listening on") for x in lines), 30), lines
        text = "\n".join(lines)
        base = next(x for x in lines if x.startswith("listening on")).split()[-1]
        password = re.search(r"account demo \(clinician\): password (\S+)", text)
        assert password, text
        demo = Client(base).login("demo", password.group(1))
        devices = demo.ok("GET", "/api/devices")["devices"]
        assert {d["name"] for d in devices} == {"heat-1", "ultrasound-1", "tens-1"}
        assert all(d["calibration"]["status"] == "ok" for d in devices)
        assert wait_for(lambda: all(d["state"] == "idle" for d in
                                    demo.ok("GET", "/api/devices")["devices"]), 10)
        assert demo.ok("GET", "/api/bookings")["bookings"][0]["patient"] == "P-0001"
        started = demo.ok("POST", "/api/sessions", {
            "device": "heat-1", "duration": "30s", "settings": {"temperature_c": 40}})
        assert started["operator"] == "demo"
    finally:
        proc.send_signal(signal.SIGINT)
        status = proc.wait(30)
    time.sleep(0.1)
    assert status == 0, lines
    assert "Traceback" not in "\n".join(lines)
    assert any("stopped session" in x and "aborted" in x for x in lines), lines
