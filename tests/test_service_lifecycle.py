"""The clinic service's life: SIGTERM stops every output (confirmed, recorded) before it
exits; a crash (-9) leaves the device's watchdog to stop the output and the next start
marks the session interrupted; what it refuses to listen on; TLS."""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from controller.records.store import RecordStore
from controller.session.report import SessionReport
from tests.support.service import (
    ROOT,
    SETTINGS,
    open_room,
    start_service,
    wait_for,
)

pytestmark = pytest.mark.slow


def serve(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli.main", "serve", "--db",
                           str(db), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_sigterm_stops_every_output_and_records_it(tmp_path: Path) -> None:
    room = open_room(tmp_path, "hc-200", "us-300")
    try:
        alice = room.login("alice")
        ids = [alice.ok("POST", "/api/sessions", {"device": d, "duration": "60s",
                                                  "settings": SETTINGS[d]})["id"]
               for d in ("heat-1", "us-1")]
        assert room.output_on("heat-1") and room.output_on("us-1")
        assert room.service.stop(signal.SIGTERM) == 0
        assert not room.output_on("heat-1") and not room.output_on("us-1")
    finally:
        room.close()
    out = "\n".join(room.service.lines)
    assert "Traceback" not in out
    with RecordStore(room.db, create=False) as store:
        for sid in ids:
            row = store.get_session(sid)
            assert row is not None and row.status == "closed" and row.outcome == "aborted"
            assert "shutting down (SIGTERM)" in (row.reason or "")
            assert row.operator == "alice"


def start_recorded(db: Path, sid: str) -> bool:
    with RecordStore(db, create=False) as store:
        row = store.get_session(sid)
    return row is not None and any(e.kind == "command" and e.detail.get("op") == "start"
                                   for e in row.events)


def test_a_killed_service_leaves_the_watchdog_to_stop_and_is_marked_on_restart(
        tmp_path: Path) -> None:
    room = open_room(tmp_path, "hc-200")
    try:
        alice = room.login("alice")
        sid = alice.ok("POST", "/api/sessions", {"device": "heat-1", "duration": "60s",
                                                 "settings": SETTINGS["heat-1"]})["id"]
        assert wait_for(lambda: room.output_on("heat-1"), 2), \
            alice.ok("GET", f"/api/sessions/{sid}")
        # Killed once the start is on record (the device may be on a few ms before that).
        assert wait_for(lambda: start_recorded(room.db, sid), 2)
        room.service.proc.kill()
        room.service.proc.wait(10)
        # Nobody polls now: the device's own watchdog (2 s in the HC-200 profile) stops it.
        assert wait_for(lambda: not room.output_on("heat-1"), 6.0)
        again = start_service(room.db)
        try:
            assert wait_for(lambda: any("marked interrupted" in line for line in again.lines),
                            5)
            with RecordStore(room.db, create=False) as store:
                row = store.get_session(sid)
                assert row is not None and row.status == "interrupted"
            # The restarted service holds the device again and may start a new session.
            alice = again.client().login("alice")
            old = alice.ok("GET", f"/api/sessions/{sid}")      # from the records now
            assert set(SessionReport.__dataclass_fields__) <= set(old)
            assert old["status"] == "interrupted" and old["output_started"] is True
            assert old["final"] is True and old["operator"] == "alice"
            assert wait_for(lambda: alice.ok("GET", "/api/devices/heat-1")["state"] == "idle",
                            10)
        finally:
            again.stop()
    finally:
        room.close()      # the first service was killed; close() stops what is left


def test_other_addresses_need_tls_or_an_explicit_insecure_flag(tmp_path: Path) -> None:
    got = serve("--host", "0.0.0.0", "--port", "0", db=tmp_path / "r.sqlite3")
    assert got.returncode == 2
    assert "--tls-cert" in got.stderr and "Traceback" not in got.stderr
    got = serve("--tls-cert", "x.pem", "--port", "0", db=tmp_path / "r.sqlite3")
    assert got.returncode == 2 and "go together" in got.stderr
    service = start_service(tmp_path / "r.sqlite3", "--host", "0.0.0.0", "--insecure-http")
    try:
        status, _ = service.client().call("GET", "/api/me")
        assert status == 401
    finally:
        service.stop()
    with RecordStore(tmp_path / "r.sqlite3", create=False) as store, \
            store._read("test") as conn:
        actions = [r["action"] for r in conn.execute("SELECT action FROM audit")]
    assert "service.insecure_http" in actions


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    service = start_service(tmp_path / "r.sqlite3", "--host", "0.0.0.0", "--tls-cert",
                            str(cert), "--tls-key", str(key))
    try:
        assert service.base.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        url = service.base.replace("0.0.0.0", "127.0.0.1") + "/openapi.json"
        with urllib.request.urlopen(url, context=context, timeout=10) as resp:
            assert resp.status == 200
    finally:
        service.stop()


