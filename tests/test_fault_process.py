"""Faults of the controller's process and surroundings (issue #6, part 2).

* The controller killed (SIGKILL) at seeded random points in every phase, for every device:
  the device watchdog stops any output it left on; the next start marks every session left
  open as interrupted and resumes nothing (tests/test_session_signals.py has the single
  SIGKILL-while-delivering case; this extends it to random points, every phase and device).
* The records database unwritable or full: before the session, the session does not start
  (exit 3, the device never contacted); while it runs, the output is stopped, not left
  running, and the session is a fault.
* The serial port vanishing mid-session (USB unplugged), through the command line.

The controller runs as `python -m controller.cli.main session run ...` in a subprocess where
the test needs a real process (kill, exit status, resource limits); the simulated devices run
in this process on pseudo-terminals. The mid-session records failures run in-process with a
`RecordStore` that starts failing like a full disk at a chosen moment.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.records.store import RecordsError, RecordStore
from controller.session.report import SessionReport
from simulator.model_base import OutputChange
from simulator.server import SimulatedDevice
from tests.conftest import SimFactory
from tests.session_helpers import SETTINGS, history, make_session

DEVICES = ("hc-200", "us-300", "es-4")
# Change to explore other kill points; every assertion message names the points it used.
SEED = 20240606
# The device watchdogs of the shipped profiles (seconds), and the slack allowed past them.
WATCHDOG_S = {"hc-200": 2.0, "us-300": 2.0, "es-4": 1.0}
WATCHDOG_SLACK_S = 0.15
START_TIMEOUT_S = 15.0
EXIT_TIMEOUT_S = 20.0


def cli(pid: str, port: str, db: Path, duration: str,
        preexec: Callable[[], None] | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "controller.cli.main", "session", "run", pid, "--port", port,
            "--duration", duration, "--json", "--db", str(db)]
    for name, value in SETTINGS[pid].items():
        args += ["--set", f"{name}={value}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec)


def last_json(out: str) -> dict[str, Any]:
    lines = out.strip().splitlines()
    assert lines, "nothing on stdout"
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def wait_stopped(device: SimulatedDevice, timeout: float) -> list[OutputChange]:
    deadline = time.monotonic() + timeout
    changes = history(device)
    while changes and changes[-1].on and time.monotonic() < deadline:
        time.sleep(0.005)
        changes = history(device)
    return changes


# -- the controller killed at random points -------------------------------------------------

@dataclass(frozen=True)
class KillPoint:
    phase: str
    """identifying | arming | ramping | delivering | stopping"""
    after_s: float = 0.0
    """ramping / delivering: seconds of output before the kill."""

    def __str__(self) -> str:
        return f"{self.phase}@{self.after_s:.3f}s" if self.after_s else self.phase


def kill_points(pid: str) -> list[KillPoint]:
    """One seeded random point in each phase this device has."""
    rng = random.Random(f"{SEED}:{pid}")
    points = [KillPoint(rng.choice(("identifying", "arming")))]
    if pid == "es-4":                          # its 10 mA ramp lasts 1 s
        points.append(KillPoint("ramping", round(rng.uniform(0.05, 0.9), 3)))
    points.append(KillPoint("delivering",
                            round(rng.uniform(1.1 if pid == "es-4" else 0.05, 2.5), 3)))
    points.append(KillPoint("stopping"))
    return points


class Killer:
    """Kills the controller from inside the simulated device, the moment it sees a request:
    the first one (identifying), the watchdog write of arming, or the stop command."""

    def __init__(self, device: SimulatedDevice, phase: str) -> None:
        self.device = device
        self.phase = phase
        self.pid: int | None = None
        self.killed_at: float | None = None
        self._endpoint_receive = device.endpoint.receive
        self._model_apply = device.model.apply
        if phase == "identifying":
            device.endpoint.receive = self._receive  # type: ignore[method-assign]
        else:
            device.model.apply = self._apply  # type: ignore[method-assign]

    def _kill(self) -> None:
        if self.killed_at is None and self.pid is not None:
            self.killed_at = time.monotonic()
            os.kill(self.pid, signal.SIGKILL)

    def _receive(self, data: bytes, now: float) -> list[bytes]:
        self._kill()
        return self._endpoint_receive(data, now)

    def _apply(self, action: str, values: dict[str, Any], now: float) -> None:
        if (self.phase == "arming" and action == "set" and "watchdog_s" in values) \
                or (self.phase == "stopping" and action == "stop"):
            self._kill()
        self._model_apply(action, values, now)


def kill_once(pid: str, point: KillPoint, device: SimulatedDevice,
              db: Path) -> tuple[float, str]:
    """Run a session and SIGKILL its controller at `point`: when, and what it said."""
    hooked = point.phase in ("identifying", "arming", "stopping")
    killer = Killer(device, point.phase) if hooked else None
    proc = cli(pid, device.port, db, "1.5" if point.phase == "stopping" else "20")
    try:
        if killer is not None:
            killer.pid = proc.pid
            wait_until(lambda: killer.killed_at is not None or proc.poll() is not None,
                       START_TIMEOUT_S, f"the {point.phase} request")
            assert killer.killed_at is not None, f"controller exited first: {proc.communicate()}"
            killed = killer.killed_at
        else:
            wait_until(lambda: any(c.on for c in history(device)) or proc.poll() is not None,
                       START_TIMEOUT_S, "the output to start")
            assert proc.poll() is None, f"controller exited early: {proc.communicate()}"
            on = next(c for c in history(device) if c.on)
            time.sleep(max(0.0, on.t + point.after_s - time.monotonic()))
            killed = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
        _out, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"{point}: exit {proc.returncode}: {err}"
    return killed, err


@pytest.mark.parametrize("pid", DEVICES)
def test_controller_killed_at_random_points(pid: str, sim_device: SimFactory,
                                            tmp_path: Path) -> None:
    db = tmp_path / "records.sqlite3"
    points = kill_points(pid)
    plan = f"seed {SEED}, kill points {', '.join(map(str, points))}"
    devices = []
    kills = []
    for i, point in enumerate(points):
        device = sim_device(pid)          # a fresh device each time: one crash per device
        devices.append(device)
        killed, err = kill_once(pid, point, device, db)
        # Each start marks the session the previous kill left open, before anything else.
        assert err.count("marked interrupted") == (1 if i else 0), f"{point} ({plan}): {err}"
        kills.append((point, device, killed))
    # What each device did after its controller died, checked once all kills are done: a
    # device's watchdog runs out while the next controller starts (the same checks, seconds
    # sooner).
    for point, device, killed in kills:
        changes = wait_stopped(device, max(0.0, killed + WATCHDOG_S[pid] + 1.0
                                           - time.monotonic()))
        where = f"{point} ({plan}): device {changes}"
        assert not changes or not changes[-1].on, "output left on after the kill: " + where
        if point.phase in ("identifying", "arming"):
            assert not changes, "an output started after the controller died: " + where
        elif point.phase == "stopping":
            # The stop command was on its way when the controller died: the device obeys it.
            assert [c.cause for c in changes] == ["start", "stop"], where
        else:
            # Nobody talks to the device any more: its own watchdog ends the output.
            assert [c.cause for c in changes] == ["start", "watchdog"], where
            assert changes[-1].t - killed <= WATCHDOG_S[pid] + WATCHDOG_SLACK_S, where

    # The next start, on another device, marks the last one and resumes nothing; its own
    # session runs normally.
    fresh = sim_device(pid)
    again = cli(pid, fresh.port, db, "1")
    out, err = again.communicate(timeout=EXIT_TIMEOUT_S)
    assert again.returncode == 0, err
    assert err.count("marked interrupted") == 1, err
    assert last_json(out)["outcome"] == "completed"
    with RecordStore(db) as store:
        rows = sorted(store.list_sessions(), key=lambda r: r.id)   # ULIDs sort by start
        events = {r.id: store.get_session(r.id) for r in rows}
    assert [r.status for r in rows] == ["interrupted"] * len(points) + ["closed"], plan
    for point, row in zip(points, rows, strict=False):
        full = events[row.id]
        assert full is not None
        states = [e.detail.get("state") for e in full.events if e.kind == "state"]
        commands = [e.detail.get("op") for e in full.events if e.kind == "command"]
        # Every event up to the crash is there, and the interruption is recorded after them.
        assert states[0] == "identifying" and states[-1] == "interrupted", (point, states)
        if point.phase in ("identifying", "arming"):
            assert "start" not in commands, (point, commands)
            assert not row.delivered_s, (point, row.delivered_s)
        else:
            assert "start" in commands, (point, commands)
            assert (row.delivered_s or 0) > 0, (point, row)
    # No killed session's output ever came back on; the new session ran once.
    for device in devices:
        assert sum(c.on for c in history(device)) <= 1
    assert [c.cause for c in history(fresh)] == ["start", "stop"]


# -- the records database unwritable or full -----------------------------------------------

def _no_room() -> None:
    """In the child: no file may grow past 1 KiB, like a full disk (Python ignores SIGXFSZ,
    so a write past the limit fails with EFBIG; root is bound by it as well)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def _unwritable(tmp_path: Path) -> tuple[Path, Callable[[], None] | None]:
    # The database's directory cannot be created: a file stands where it should be. (Taking
    # the write permission away would not stop root, which the tests may run as.)
    blocker = tmp_path / "records"
    blocker.write_text("not a directory\n")
    return blocker / "records.sqlite3", None


def _full(tmp_path: Path) -> tuple[Path, Callable[[], None] | None]:
    db = tmp_path / "records.sqlite3"
    with RecordStore(db):          # an existing database, already holding its tables
        pass
    return db, _no_room


BROKEN_DB: dict[str, Callable[[Path], tuple[Path, Callable[[], None] | None]]] = {
    "unwritable": _unwritable,
    "full": _full,
}


@pytest.mark.parametrize("pid", DEVICES)
@pytest.mark.parametrize("broken", BROKEN_DB)
def test_records_unusable_before_the_session_it_does_not_start(
        broken: str, pid: str, sim_device: SimFactory, tmp_path: Path) -> None:
    device = sim_device(pid)
    requests: list[bytes] = []
    receive = device.endpoint.receive

    def counting(data: bytes, now: float) -> list[bytes]:
        requests.append(data)
        return receive(data, now)

    device.endpoint.receive = counting  # type: ignore[method-assign]
    db, preexec = BROKEN_DB[broken](tmp_path)
    proc = cli(pid, device.port, db, "2", preexec=preexec)
    _out, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
    assert proc.returncode == 3, err
    assert "records database" in err and "does not start" in err, err
    assert "Traceback" not in err
    assert not requests, "the controller talked to the device without a usable record"
    assert not history(device)




def test_records_unusable_the_json_report_still_says_rejected(sim_device: SimFactory,
                                                              tmp_path: Path) -> None:
    device = sim_device("hc-200")
    db, _ = _unwritable(tmp_path)
    proc = cli("hc-200", device.port, db, "2")
    out, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
    assert proc.returncode == 3, err
    report = last_json(out)
    assert report["outcome"] == "rejected" and "records" in report["reason"]


class FillingStore(RecordStore):
    """A records database whose disk fills up on command: from then on every write fails
    with the RecordsError the real store raises for SQLITE_FULL. `events_only` fails only
    the event writes (telemetry still fits), to reach that path on its own."""

    def __init__(self, path: Path, events_only: bool = False) -> None:
        super().__init__(path)
        self.full = False
        self.events_only = events_only
        self.fill_on: Callable[[str, dict[str, Any]], bool] | None = None
        """Fill the disk as an event matching this (kind, detail) is about to be written."""
        self.refused: list[str] = []

    def _room(self, action: str, event: bool = False) -> None:
        if self.full and (event or not self.events_only):
            self.refused.append(action)
            raise RecordsError(self.path, f"cannot {action}: the disk is full")

    def add_event(self, session_id: str, kind: str, detail: Any = None, **kw: Any) -> int:
        if self.fill_on is not None and self.fill_on(kind, dict(detail or {})):
            self.full = True
        self._room("record an event", event=True)
        return super().add_event(session_id, kind, detail, **kw)

    def add_sample(self, *args: Any, **kw: Any) -> None:
        self._room("record telemetry")
        super().add_sample(*args, **kw)

    def flush(self) -> None:
        self._room("record telemetry")
        super().flush()

    def close_session(self, *args: Any, **kw: Any) -> None:
        self._room("close a session")
        super().close_session(*args, **kw)


@pytest.fixture
def filling_store(tmp_path: Path) -> Iterator[Callable[..., FillingStore]]:
    stores: list[FillingStore] = []

    def make(**kw: Any) -> FillingStore:
        store = FillingStore(tmp_path / "records.sqlite3", **kw)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.full = False
        store.close()


def fill_when(device: SimulatedDevice, store: FillingStore, output_s: float) -> None:
    """Fill the disk once the device's output has run `output_s` seconds."""
    def watch() -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with device.model.lock:
                t = device.model.output_time(time.monotonic())
            if t is not None and t >= output_s:
                store.full = True
                return
            time.sleep(0.002)
    threading.Thread(target=watch, daemon=True, name="disk filler").start()


def assert_output_stopped(device: SimulatedDevice, report: SessionReport) -> None:
    changes = history(device)
    summary = f"{report.outcome}/{report.stop_source}: {report.reason}; device {changes}"
    assert changes and not changes[-1].on, "output left running: " + summary
    assert report.stop_confirmed is True, summary


# The disk fills 0.5 s into the output (1.3 s on the ES-4, past its ramp and its last state
# event): the first write to fail is a telemetry batch, then every event and the close.
FILL_AT_S = {"hc-200": 0.5, "us-300": 0.5, "es-4": 1.3}


@pytest.mark.parametrize("pid", DEVICES)
def test_records_full_mid_session_stops_the_output_as_a_fault(
        pid: str, sim_device: SimFactory, filling_store: Callable[..., FillingStore]) -> None:
    device = sim_device(pid)
    store = filling_store()
    session = make_session(pid, device, 3.0, store=store)
    fill_when(device, store, FILL_AT_S[pid])
    report = session.run()
    assert_output_stopped(device, report)
    assert (report.outcome, report.exit_status) == ("fault", 5), report.reason
    assert "disk is full" in report.reason
    assert report.delivered_s < 2.5
    # The close could not be written either: the session stays open in the records, so the
    # next start marks it interrupted (with what was delivered up to the last write).
    assert "close a session" in store.refused
    store.full = False
    store.close()
    with RecordStore(store.path) as again:
        marked = again.mark_interrupted_sessions()
    assert [r.id for r in marked] == [report.session_id]




@pytest.mark.parametrize("pid", DEVICES)
def test_records_event_write_failing_while_output_runs_is_a_fault(
        pid: str, sim_device: SimFactory, filling_store: Callable[..., FillingStore]) -> None:
    device = sim_device(pid)
    store = filling_store(events_only=True)
    session = make_session(pid, device, 3.0, store=store)
    # The first event once the output is on (the "ramping" state) cannot be written.
    store.fill_on = lambda kind, detail: detail.get("state") == "ramping"
    report = session.run()
    assert_output_stopped(device, report)
    assert "disk is full" in report.reason
    assert (report.outcome, report.exit_status, report.stop_source) == \
        ("fault", 5, "controller"), report.reason




@pytest.mark.parametrize("pid", DEVICES)
def test_records_failing_while_arming_never_starts_the_output(
        pid: str, sim_device: SimFactory, filling_store: Callable[..., FillingStore]) -> None:
    device = sim_device(pid)
    store = filling_store(events_only=True)
    session = make_session(pid, device, 3.0, store=store)
    # The disk fills as the arm command (watchdog and timer) is recorded.
    store.fill_on = lambda kind, detail: kind == "command" and detail.get("op") == "arm"
    report = session.run()
    assert not any(c.on for c in history(device)), \
        f"an output started that could not be recorded: {report.reason}"
    assert report.exit_status in (3, 5), report.reason
    assert "disk is full" in report.reason


# -- the serial port vanishing mid-session -------------------------------------------------

@pytest.mark.parametrize("pid", DEVICES)
def test_usb_unplugged_mid_session(pid: str, sim_device: SimFactory, tmp_path: Path) -> None:
    device = sim_device(pid, disconnect_at=0.8)
    db = tmp_path / "records.sqlite3"
    proc = cli(pid, device.port, db, "5")
    out, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
    assert proc.returncode == 5, err
    assert "Traceback" not in err
    report = last_json(out)
    assert report["outcome"] == "fault" and report["stop_source"] == "device_watchdog", report
    assert "stop not confirmed" in report["reason"]
    assert report["stop_confirmed"] is False
    assert 0.7 <= report["delivered_s"] < 5.0
    # Unplugged but powered: the device's watchdog ends the output by itself.
    changes = wait_stopped(device, WATCHDOG_S[pid] + 1.0)
    assert [c.cause for c in changes] == ["start", "watchdog"], changes
    assert device.server.disconnected
    with RecordStore(db) as store:
        row = store.get_session(report["session_id"])
    assert row is not None and row.status == "closed"
    assert (row.outcome, row.stop_source, row.reason) == \
        ("fault", "device_watchdog", report["reason"])
    assert any(e.kind == "fault" and "not confirmed" in str(e.detail) for e in row.events)
