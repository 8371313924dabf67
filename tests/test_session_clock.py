"""A wall-clock jump during a session changes nothing: deadlines are monotonic.

APScheduler (wall-clock based) wakes the worker; the test moves the wall clock
APScheduler sees by an hour, back and forward, in the middle of a session, and
shows the device-side output time and the delivered time unchanged.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import apscheduler.schedulers.base as aps_base
import pytest

from controller.cli.session_cmd import run_session
from controller.session.service import SessionStarter
from controller.session.worker import Session
from tests.conftest import SimFactory
from tests.session_helpers import make_session, on_time

PLANNED_S = 2.0
JUMP = dt.timedelta(hours=1)


class JumpingClock:
    """Stands in for datetime.datetime inside APScheduler: now() plus an offset."""

    offset = dt.timedelta(0)

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch) -> None:
        real = dt.datetime

        class Shifted(real):  # type: ignore[misc,valid-type]
            @classmethod
            def now(cls_, tz: Any = None) -> Any:
                return real.now(tz) + JumpingClock.offset

        monkeypatch.setattr(aps_base, "datetime", Shifted)
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + cls.offset.total_seconds())


@pytest.mark.parametrize("direction", [-1, 1])
def test_wall_clock_jump_leaves_delivered_time_unchanged(
        direction: int, sim_device: SimFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    JumpingClock.offset = dt.timedelta(0)
    JumpingClock.install(monkeypatch)
    device = sim_device("hc-200")
    wakes: list[float] = []
    original_wake = Session.wake

    def counting_wake(self: Session) -> None:
        wakes.append(time.monotonic())
        original_wake(self)

    monkeypatch.setattr(Session, "wake", counting_wake)
    session_holder: dict[str, Any] = {}

    def jump_later() -> None:
        time.sleep(PLANNED_S / 2)
        JumpingClock.offset = direction * JUMP
        session_holder["jumped_at"] = time.monotonic()

    jumper = threading.Thread(target=jump_later)
    session = make_session("hc-200", device, PLANNED_S)
    jumper.start()
    report = run_session(SessionStarter(None), session.profile, session.rx, device.port, "",
                         None, live=False)
    jumper.join()
    assert report.outcome == "completed", report.reason
    assert report.delivered_s == pytest.approx(PLANNED_S, abs=0.05)
    seconds, cause = on_time(device)
    assert cause == "stop" and seconds == pytest.approx(PLANNED_S, abs=0.05)
    assert wakes, "APScheduler never woke the worker"
    jumped = session_holder["jumped_at"]
    if direction < 0:
        # Set back an hour, APScheduler's wake-ups stop; the session did not need them.
        assert not [t for t in wakes if t > jumped + 0.3]
