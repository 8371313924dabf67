"""The session package's shape (issue 11 §4): the worker is the orchestration, its phases
share one context, every module is under the ~400-line aim, and the device layer holds
the stop-and-confirm that sessions and calibrations share."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from controller.calibration import device as calibration_device
from controller.device import stopping as device_stopping
from controller.session import stopping as session_stopping
from controller.session.worker import Session

CONTROLLER = Path(__file__).resolve().parents[1] / "controller"
# The layout aim of issue 11 §4: a newcomer reads a module in one sitting.
MAX_MODULE_LINES = 400
# The worker only orchestrates: the phases live in their own modules.
MAX_WORKER_LINES = 300
# The modules a running session goes through (typed throughout: no `Any`).
SESSION_PATH = ("session/worker.py", "session/context.py", "session/arming.py",
                "session/delivery.py", "session/stopping.py", "device/stopping.py")


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_no_session_or_device_module_is_over_the_line_aim() -> None:
    sizes = {p.name: lines(p) for sub in ("session", "device")
             for p in (CONTROLLER / sub).glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
    assert sizes["worker.py"] <= MAX_WORKER_LINES


def test_no_any_on_the_session_path() -> None:
    for rel in SESSION_PATH:
        tree = ast.parse((CONTROLLER / rel).read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert "Any" not in names | attrs, rel


def test_the_session_keeps_its_public_api() -> None:
    for name in ("run", "start", "wait", "request_stop", "wake", "time_remaining", "snapshot"):
        assert callable(getattr(Session, name)), name
    for name in ("rx", "link", "session_id", "identity", "device", "meter", "t_start",
                 "t_off", "stop_confirmed", "device_elapsed_s", "last_telemetry"):
        assert isinstance(inspect.getattr_static(Session, name), property), name


def test_sessions_and_calibrations_stop_through_the_device_layer() -> None:
    for module in (session_stopping, calibration_device):
        assert module.command_stop is device_stopping.command_stop
        assert module.confirm_stopped is device_stopping.confirm_stopped
    # The device layer sits below the session: it imports nothing of it.
    tree = ast.parse(Path(device_stopping.__file__).read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not [m for m in imported
                if m.startswith(("controller.session", "controller.calibration"))]
