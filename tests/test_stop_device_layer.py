"""Stop and confirm at the device layer (controller.device.stopping), and a calibration that
stops through it: the e-stop is the fallback when the stop fails, the stop is never
pre-empted, and an output that will not read off is reported, not forgotten."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

import pytest

from controller.calibration.device import CalibrationDevice
from controller.device.link import DeviceLink
from controller.device.stopping import (
    EMERGENCY_STOP,
    RAMP_DOWN,
    STOP,
    command_stop,
    confirm_stopped,
)
from controller.profiles.loader import resolve_profile
from protocols.errors import LinkTimeout
from protocols.map_common import Scalar
from tests.support.clock import FakeClock

HC = resolve_profile("hc-200").profile
TIMEOUT_S = HC.safety.stop_confirm_timeout_s


class Link:
    """A device whose operations in `failing` go unanswered; its output turns off when a
    stop or e-stop goes through, after `off_after` more telemetry reads (None: never)."""

    def __init__(self, *failing: str, off_after: int | None = 0,
                 read_errors: int = 0) -> None:
        self.failing = set(failing)
        self.off_after, self.read_errors = off_after, read_errors
        self.profile = HC
        self.sent: list[tuple[str, dict[str, Scalar]]] = []
        self.reads: list[bool] = []      # the `partial` of every telemetry read
        self.stopped = False
        self.interrupt: Callable[[], bool] | None = lambda: True

    def set_interrupt(self, check: Callable[[], bool] | None) -> None:
        self.interrupt = check

    def has(self, op: str) -> bool:
        return True

    def run(self, op: str, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        self.sent.append((op, dict(variables)))
        if op in self.failing:
            raise LinkTimeout(f"{op}: no reply")
        if op in (STOP, EMERGENCY_STOP):
            self.stopped = True
        return {}

    def telemetry(self, variables: Mapping[str, Scalar],
                  partial: bool = False) -> dict[str, Scalar]:
        self.reads.append(partial)
        if self.read_errors:
            self.read_errors -= 1
            raise LinkTimeout("read_telemetry: no reply")
        on = not self.stopped or self.off_after is None or self.off_after > 0
        if self.stopped and self.off_after:
            self.off_after -= 1
        return {"output_on": on}


def as_link(link: Link) -> DeviceLink:
    return cast(DeviceLink, link)


def confirm(link: Link, clock: FakeClock, partial: bool = False) -> bool:
    def pause(seconds: float) -> None:
        clock.now += seconds
    return confirm_stopped(as_link(link), {}, timeout_s=TIMEOUT_S, clock=clock, pause=pause,
                           poll_s=0.05, partial=partial)


@pytest.mark.parametrize(("failing", "emergency", "sent_op", "tried"), [
    ((), False, STOP, [STOP]),
    ((STOP,), False, EMERGENCY_STOP, [STOP, EMERGENCY_STOP]),
    ((), True, EMERGENCY_STOP, [EMERGENCY_STOP]),
    ((STOP, EMERGENCY_STOP), False, None, [STOP, EMERGENCY_STOP]),
])
def test_the_estop_is_the_choice_or_the_fallback(failing: tuple[str, ...], emergency: bool,
                                                  sent_op: str | None, tried: list[str]) -> None:
    link = Link(*failing)
    sent = command_stop(as_link(link), {RAMP_DOWN: 0.01, "channel": 0}, emergency=emergency,
                        immediate=False)
    assert sent.op == sent_op and [op for op, _ in link.sent] == tried
    assert len(sent.errors) == len(failing)
    assert sent.estop == (sent_op != STOP)
    assert link.interrupt is None        # a stop is never pre-empted


def test_an_immediate_stop_does_not_ramp() -> None:
    link = Link()
    sent = command_stop(as_link(link), {RAMP_DOWN: 0.01}, emergency=False, immediate=True)
    assert sent.ramp_down_s == 0.0 and link.sent == [(STOP, {RAMP_DOWN: 0.0})]


def test_confirm_reads_until_off_through_failed_reads() -> None:
    link, clock = Link(off_after=2, read_errors=1), FakeClock(0.0)
    link.stopped = True
    assert confirm(link, clock, partial=True)
    assert link.reads == [True] * 4 and clock.now == pytest.approx(3 * 0.05)


def test_confirm_gives_up_at_the_timeout() -> None:
    link, clock = Link(off_after=None), FakeClock(0.0)
    link.stopped = True
    assert not confirm(link, clock)
    assert clock.now == pytest.approx(TIMEOUT_S, abs=0.05)


def device(link: Link) -> CalibrationDevice:
    clock = FakeClock(0.0)

    def sleep(seconds: float) -> None:
        clock.now += seconds
    dev = CalibrationDevice(as_link(link), HC, clock=clock, sleep=sleep)
    dev.output_may_be_on[None] = {"temperature_c": 40.0, RAMP_DOWN: 0.01}
    return dev


def test_a_calibration_falls_back_to_the_estop_and_confirms_off() -> None:
    link = Link(STOP)
    dev = device(link)
    assert dev.stop_output(None)
    assert [op for op, _ in link.sent] == [STOP, EMERGENCY_STOP]
    assert all(v[RAMP_DOWN] == 0.0 for _, v in link.sent)     # at once, never a ramp
    assert link.reads and all(link.reads)                      # partial reads (service mode)
    assert dev.output_may_be_on == {}


@pytest.mark.parametrize("link", [Link(STOP, EMERGENCY_STOP), Link(off_after=None)],
                         ids=["no stop went through", "output never reads off"])
def test_a_calibration_reports_an_output_it_cannot_confirm_off(link: Link) -> None:
    dev = device(link)
    assert not dev.stop_output(None)
    assert None in dev.output_may_be_on          # still known to be possibly on
    report = dev.make_safe([{}])
    assert not report.safe and "stop not confirmed by device" in report.notes
