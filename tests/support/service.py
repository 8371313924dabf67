"""A real `modctl serve` process on a loopback port, simulated devices on ptys, and a small
JSON client (urllib: the tests speak HTTP as any client would)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from controller.profiles.loader import resolve_profile
from controller.records.store import RecordStore
from controller.service.accounts import Accounts
from simulator.faults import FaultPlan
from simulator.server import SimulatedDevice

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"
# Cheap hashing for test accounts (the service verifies any argon2id parameters).
TEST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
# How long the service may take to print its start line (imports, the first watch look).
START_TIMEOUT_S = 20.0


def add_users(store: RecordStore, **roles: str) -> None:
    accounts = Accounts(store, hasher=TEST_HASHER)
    for name, role in roles.items():
        accounts.add(name, role, PASSWORD, "test")


def add_device(store: RecordStore, name: str, profile: str, port: str,
               calibrated: bool = True, room: str | None = None) -> None:
    loaded = resolve_profile(profile)
    store.add_device(name, profile, port, "test", profile_path=loaded.source_path,
                     profile_sha256=loaded.sha256, port_real=os.path.realpath(port), room=room)
    if calibrated:
        store.add_calibration(device=name, profile=profile, technician="tom",
                              instrument="reference", instrument_id="REF-1", before={},
                              after={}, passed=True, performed_at=datetime.now(UTC),
                              next_due=(datetime.now(UTC) + timedelta(days=300)).date())


class ApiFailed(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


@dataclass
class Client:
    base: str
    token: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, body: object = None, *,
             raw: bytes | None = None, timeout: float = 30.0,
             headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for k, v in {**self.headers, **(headers or {})}.items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                return exc.code, json.loads(text)
            except ValueError:
                return exc.code, {"raw": text.decode(errors="replace")}

    def ok(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        status, got = self.call(method, path, body)
        if status >= 300:
            raise ApiFailed(status, got)
        return got

    def login(self, user: str, password: str = PASSWORD) -> Client:
        status, got = self.call("POST", "/api/login", {"username": user, "password": password})
        if status != 200:
            raise ApiFailed(status, got)
        return Client(self.base, str(got["token"]))


@dataclass
class Service:
    proc: subprocess.Popen[str]
    base: str
    db: Path | str
    """The records database: a file, or a PostgreSQL URL."""
    lines: list[str] = field(default_factory=list)

    def client(self) -> Client:
        return Client(self.base)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the service and wait for it; one that does not end is killed (a leaked
        service would keep its ports locked for later tests) and the test fails."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            said = "\n".join(self.lines)
            raise AssertionError(f"modctl serve did not end within {timeout} s of "
                                 f"{signal.Signals(sig).name}:\n{said}") from None


def start_service(db: Path | str, *args: str, env: Mapping[str, str] | None = None) -> Service:
    """`modctl serve --port 0 --db DB` (a file, or a PostgreSQL URL: never through `Path`,
    which would fold its `//`); returns once it prints its address."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MODCTL_ROLES", None) if "MODCTL_ROLES" not in (env or {}) else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "serve", "--port", "0", "--db", str(db),
         *args], cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("listening on ") and not found:
                found.append(line.split()[-1])

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not found and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if not found:
        proc.kill()
        raise AssertionError("modctl serve did not start:\n" + "\n".join(lines))
    return Service(proc, found[0], db, lines)


def simulators(*profiles: str, **faults: object) -> Iterator[SimulatedDevice]:
    for profile in profiles:
        yield SimulatedDevice(resolve_profile(profile).profile,
                              FaultPlan(**faults)).start()  # type: ignore[arg-type]


DEVICE_NAMES = {"hc-200": "heat-1", "us-300": "us-1", "es-4": "tens-1"}
# Requests that start one short session per shipped model (within every limit).
SETTINGS = {"heat-1": {"temperature_c": 40}, "us-1": {"intensity_w_cm2": 1.0},
            "tens-1": {"amplitude_ma": 10}}


@dataclass
class Room:
    """Simulated devices registered and calibrated, accounts, and a running service."""

    db: Path
    sims: dict[str, SimulatedDevice]
    service: Service

    def login(self, user: str) -> Client:
        return self.service.client().login(user)

    def output_on(self, device: str) -> bool:
        model = self.sims[device].model
        with model.lock:
            return bool(model.output_on)

    def close(self) -> None:
        try:
            self.service.stop()
        finally:
            for sim in self.sims.values():
                sim.stop()


def open_room(tmp: Path, *profiles: str, serve_args: tuple[str, ...] = (),
              **faults: object) -> Room:
    db = tmp / "records.sqlite3"
    sims = {DEVICE_NAMES[p]: sim for p, sim in
            zip(profiles or tuple(DEVICE_NAMES), simulators(*(profiles or DEVICE_NAMES),
                                                          **faults), strict=True)}
    try:
        with RecordStore(db) as store:
            add_users(store, alice="clinician", bob="clinician", tom="technician",
                      ada="admin")
            for name, sim in sims.items():
                add_device(store, name, sim.profile.id, sim.port)
        service = start_service(db, *serve_args)
    except BaseException:
        for sim in sims.values():
            sim.stop()
        raise
    return Room(db, sims, service)


def wait_for(check: object, timeout: float = 10.0, period: float = 0.02) -> bool:
    """Poll `check()` until true or `timeout`."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(period)
    return bool(check())
