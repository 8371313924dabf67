"""A pause between plan steps says what it waits for and how long is left (issue 15)."""

from __future__ import annotations

import io
import time

import pytest

from controller.plans import run_loop
from controller.plans.run_loop import PlanRun


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def pause(out: io.StringIO, seconds: float) -> str:
    run = PlanRun("demo", "builtin", False, None, "alice", None, None, out)
    run._pause(seconds, time.sleep, 3)
    return out.getvalue()


def test_on_a_terminal_the_time_left_is_rewritten_in_place(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_loop, "PAUSE_TICK_S", 0.02)
    text = pause(Terminal(), 0.1)
    assert text.startswith("  pause of ") and "before step 3 (Ctrl-C stops the plan)" in text
    assert "\r  pause: 00:01 left of 00:01 before step 3" in text
    assert text.endswith("\r\x1b[K")  # the line is cleared when the pause ends


def test_in_a_log_a_line_every_so_often_and_no_control_characters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_loop, "PAUSE_TICK_S", 0.02)
    monkeypatch.setattr(run_loop, "PAUSE_REPORT_S", 0.03)
    text = pause(io.StringIO(), 0.12)
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("  pause of ") and len(lines) >= 2
    assert all(line.startswith("  pause: ") and "left of 00:01" in line for line in lines[1:])
