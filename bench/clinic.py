"""A clinic service under test: `modctl serve` in its own process, on simulated devices
served out of process (simfarm.ProcessFarm), driven over HTTP the way a console would.

`Clinic` registers one device per farm device in a fresh records database (calibrated,
one clinician account), starts the service (it inherits this process's niceness), and
gives keep-alive HTTP clients. The truth is still the device side: `run_after` finds a
session's output run in the device's own history (time.monotonic(), system-wide).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from common import SETTINGS
from simfarm import Dev, ProcessFarm

from controller.profiles.loader import resolve_profile
from controller.records.store import RecordStore
from controller.service.accounts import Accounts
from simulator.model_base import OutputChange

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "bench", "bench password 1"
# Cheap hashing for the bench's account (the service verifies any argon2id parameters);
# the login is not what is measured.
HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
# How long `modctl serve` may take to print its address (imports, first looks at 32 devices).
START_TIMEOUT_S = 60.0
# An HTTP request the bench makes is given this long (a start waits for the output: <= 10 s).
HTTP_TIMEOUT_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def device_name(i: int, pid: str) -> str:
    return f"d{i:02d}-{pid}"


class Http:
    """One keep-alive HTTP/1.1 connection with the bench's token (not thread-safe: one per
    thread). `connect()` ahead of a timed request keeps the TCP set-up out of it."""

    def __init__(self, base: str, token: str = "") -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port, self.token = host, int(port), token
        self._conn: http.client.HTTPConnection | None = None

    def connect(self) -> None:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port,
                                                    timeout=HTTP_TIMEOUT_S)
            self._conn.connect()

    def send(self, method: str, path: str, body: object = None) -> None:
        """Send the request (the caller stamps the moment just before)."""
        self.connect()
        assert self._conn is not None
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._conn.request(method, path, body=data, headers=headers)

    def receive(self) -> tuple[int, dict[str, Any]]:
        assert self._conn is not None
        try:
            resp = self._conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        try:
            return resp.status, json.loads(raw or b"{}")
        except ValueError:
            return resp.status, {"raw": raw.decode(errors="replace")[:200]}

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict[str, Any]]:
        """One request; a keep-alive connection the server closed meanwhile is opened again."""
        for attempt in (1, 2):
            try:
                self.send(method, path, body)
                return self.receive()
            except (ConnectionError, http.client.RemoteDisconnected,
                    http.client.CannotSendRequest):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class Clinic:
    """Devices on the farm, registered in a fresh records database, and `modctl serve`."""

    farm: ProcessFarm
    devs: list[Dev]
    names: list[str]
    tmp: tempfile.TemporaryDirectory[str]
    proc: subprocess.Popen[str]
    base: str
    token: str
    lines: list[tuple[float, str]] = field(default_factory=list)
    probe_out: Path | None = None
    probe: dict[str, Any] = field(default_factory=dict)
    """What serve_probe.py found (after `close()`), when the service ran under it."""

    @classmethod
    def open(cls, models: Sequence[str], sim_procs: int = 2, probe: bool = False,
             switchinterval: float | None = None, async_stop: bool = False) -> Clinic:
        """`probe` (or a `switchinterval`, or the `async_stop` experiment): run the service
        under bench/serve_probe.py."""
        farm = ProcessFarm(sim_procs)
        tmp = tempfile.TemporaryDirectory(prefix="modctl-bench-service-")
        probe_out = Path(tmp.name) / "probe.json" \
            if probe or switchinterval or async_stop else None
        try:
            devs = farm.create_many([(pid, {}) for pid in models])
            names = [device_name(i, d.pid) for i, d in enumerate(devs)]
            db = Path(tmp.name) / "records.sqlite3"
            _register(db, devs, names)
            proc, base, lines = _serve(db, probe_out, switchinterval, async_stop)
        except BaseException:
            farm.close()
            tmp.cleanup()
            raise
        clinic = cls(farm, devs, names, tmp, proc, base, "", lines, probe_out)
        status, got = Http(base).call("POST", "/api/login",
                                      {"username": USER, "password": PASSWORD})
        if status != 200:
            clinic.close()
            raise SystemExit(f"bench login refused: {status} {got}")
        clinic.token = str(got["token"])
        return clinic

    def http(self) -> Http:
        return Http(self.base, self.token)

    def start_body(self, i: int, duration_s: float) -> dict[str, Any]:
        """A start request for device i (clear_fault: an e-stop latched by the previous
        round is cleared by the session, as a clinician would ask)."""
        return {"device": self.names[i], "duration": duration_s,
                "settings": SETTINGS[self.devs[i].pid], "clear_fault": True}

    def histories(self, idx: Sequence[int]) -> list[list[OutputChange]]:
        return self.farm.history([self.devs[i] for i in idx])

    def service_cpu_s(self) -> float:
        """CPU seconds the service process has used so far."""
        return proc_cpu_s(self.proc.pid)

    def service_threads(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("Threads:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def warnings_since(self, t0: float) -> list[str]:
        return [text for t, text in list(self.lines) if t >= t0 and "listening on" not in text]

    def close(self) -> int | None:
        code: int | None = None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        finally:
            self.farm.close()
            if self.probe_out is not None and self.probe_out.exists():
                with self.probe_out.open(encoding="utf-8") as f:
                    self.probe = json.load(f)
            self.tmp.cleanup()
        return code


def _register(db: Path, devs: Sequence[Dev], names: Sequence[str]) -> None:
    with RecordStore(db) as store:
        Accounts(store, hasher=HASHER).add(USER, "clinician", PASSWORD, "bench")
        for dev, name in zip(devs, names, strict=True):
            loaded = resolve_profile(dev.pid)
            store.add_device(name, dev.pid, dev.port, "bench", profile_path=loaded.source_path,
                             profile_sha256=loaded.sha256, port_real=os.path.realpath(dev.port))
            store.add_calibration(device=name, profile=dev.pid, technician="bench",
                                  instrument="reference", instrument_id="REF-1", before={},
                                  after={}, passed=True, performed_at=datetime.now(UTC),
                                  next_due=(datetime.now(UTC) + timedelta(days=300)).date())


def _serve(db: Path, probe_out: Path | None, switchinterval: float | None, async_stop: bool
           ) -> tuple[subprocess.Popen[str], str, list[tuple[float, str]]]:
    """`modctl serve --port 0 --db DB` (under serve_probe.py with `probe_out`); returns once
    it prints its address. Its output lines are kept with the moment they were read (a
    dropped live-stream client is logged)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MODCTL_ROLES", None)
    command = [sys.executable, "-m", "controller.cli.main"]
    if probe_out is not None:
        command = [sys.executable, str(Path(__file__).with_name("serve_probe.py"))]
        env["BENCH_PROBE_OUT"] = str(probe_out)
        if switchinterval:
            env["BENCH_SWITCHINTERVAL"] = repr(switchinterval)
        if async_stop:
            env["BENCH_ASYNC_STOP"] = "1"
    proc = subprocess.Popen(
        [*command, "serve", "--port", "0", "--db", str(db)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []
    found: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic(), line.rstrip("\n")))
            if line.startswith("listening on ") and not found:
                found.append(line.split()[-1])

    threading.Thread(target=read, daemon=True, name="service output").start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not found and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if not found:
        proc.kill()
        raise SystemExit("modctl serve did not start:\n" + "\n".join(t for _, t in lines))
    return proc, found[0], lines


def run_after(hist: Sequence[OutputChange], t0: float
              ) -> tuple[OutputChange, OutputChange | None] | None:
    """The first output start at or after `t0` and the first stop after it (same channel,
    or the whole device); None when the output never started."""
    on = next((c for c in hist if c.on and c.t >= t0), None)
    if on is None:
        return None
    off = next((c for c in hist if not c.on and c.t >= on.t and
                (on.channel is None or c.channel in (None, on.channel))), None)
    return on, off


def start_all(clinic: Clinic, idx: Sequence[int], duration_s: float,
              offsets: Sequence[float]) -> dict[int, tuple[float, int, dict[str, Any]]]:
    """POST /api/sessions for each device i at `offsets[k]` seconds from now (one thread
    each, as separate consoles would): i -> (moment sent, status, body)."""
    out: dict[int, tuple[float, int, dict[str, Any]]] = {}
    t0 = time.monotonic()

    def one(i: int, offset: float) -> None:
        client = clinic.http()
        try:
            client.connect()
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent = time.monotonic()
            status, got = client.call("POST", "/api/sessions", clinic.start_body(i, duration_s))
            out[i] = (sent, status, got)
        except (OSError, http.client.HTTPException) as exc:
            out[i] = (time.monotonic(), 0, {"error": f"{type(exc).__name__}: {exc}"})
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(i, off), daemon=True)
               for i, off in zip(idx, offsets, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def proc_cpu_s(pid: int | None) -> float:
    """CPU seconds of another live process (utime + stime of /proc/PID/stat; 0 when it is
    gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def without_stalls(spans: list[tuple[float, float, float]],
                   stalls: list[tuple[float, float]]) -> list[float]:
    """The values whose span [from, to] no simulator stall touched: what the service did,
    with the shared machine's stalls of the simulated devices (which real devices, on
    their own hardware, would not have) left out. Both figures are reported."""
    return [v for v, a, b in spans if stall_inside(stalls, a, b) == 0.0]


def stall_inside(stalls: list[tuple[float, float]], a: float, b: float) -> float:
    """The longest simulator stall (ms) overlapping [a, b]; 0 when none."""
    return round(max((late for t, late in stalls if t < b and t + late > a), default=0.0)
                 * 1e3, 1)
