"""A stop overtakes routine work, late in long sessions, on devices at the slow end of their
manuals (design invariant 10). On an injected clock: every exchange with the device takes
its reply time, wake-ups arrive every poll period as APScheduler would post them, and a
stop is posted by "another thread" at a chosen moment.

Found by outside testing: with a US-300 answering each query in 45 ms (its manual allows
50 ms), a poll of five exchanges outlasted the 0.2 s poll period, wake-ups piled up in the
queue the stops shared, and Ctrl-C reached the device 7.5 s late 45 s into a session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from controller.modality.prescription import build_prescription
from controller.profiles.loader import resolve_profile
from controller.session.mailbox import StopMailbox, StopRequest
from controller.session.worker import POLL_GUARD_S, Session
from protocols.errors import Interrupted
from protocols.map_common import Scalar
from tests.support.clock import Timeline
from tests.test_session_unit import FakeLink, thermal, ultrasound_with_gap

# Slowest replies the manuals allow, a little inside them.
SLOW_REPLY_S = {"hc-200": 0.019, "us-300": 0.045, "es-4": 0.019}
SETTINGS = {"hc-200": {"temperature_c": "40"}, "us-300": {"intensity_w_cm2": "1.5"},
            "es-4": {"frequency_hz": "100", "pulse_width_us": "200", "amplitude_ma": "10"}}


def tens(elapsed: float, on: bool) -> dict[str, Scalar]:
    return {"channel_state": "running" if on else "idle", "amplitude_ma": 10.0 if on else 0.0,
            "impedance_ohm": 800, "estop_latched": False, "watchdog_expired": False,
            "patient_stop": False, "service_mode": False, "elapsed_s": 0, "remaining_s": 9}


SCRIPTS: dict[str, Any] = {"hc-200": thermal, "us-300": ultrasound_with_gap((1e9, 1e9)),
                           "es-4": tens}


class SlowLink(FakeLink):
    """Telemetry is `exchanges` request/reply pairs of `reply_s` each; the interrupt check
    runs before every exchange but the first, as the engines and DeviceLink do."""

    def __init__(self, *args: Any, exchanges: int, reply_s: float) -> None:
        super().__init__(*args)
        self.exchanges, self.reply_s = exchanges, reply_s
        self.interrupt: Callable[[], bool] | None = None

    def run(self, op: str, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        # Logged (by FakeLink) when the reply is in.
        self.clock.advance(self.reply_s)
        return super().run(op, variables)

    def telemetry(self, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        for i in range(self.exchanges):
            if i and self.interrupt is not None and self.interrupt():
                raise Interrupted("pre-empted")
            self.clock.advance(self.reply_s)
        return super().telemetry(variables)


class TimelineSession(Session):
    timeline: Timeline

    def _wait(self, timeout: float) -> None:
        # As the real wait: returns at the timeout or as soon as something is posted.
        self.timeline.advance(max(timeout, 0.0), until_event=True)
        super()._wait(0)

    def _pause(self, seconds: float) -> None:
        self.timeline.advance(seconds)


def make(pid: str, duration: float, exchanges: int = 5,
         reply_s: float | None = None) -> tuple[TimelineSession, SlowLink, Timeline]:
    profile = resolve_profile(pid).profile
    clock = Timeline()
    link = SlowLink(profile, clock, SCRIPTS[pid], exchanges=exchanges,
                    reply_s=SLOW_REPLY_S[pid] if reply_s is None else reply_s)
    rx = build_prescription(profile, SETTINGS[pid], duration)
    session = TimelineSession(profile, rx, "fake", clock=clock,
                              link_factory=lambda p, port: link)  # type: ignore[arg-type,return-value]
    session.timeline = clock
    # APScheduler's periodic wake-up job, for the whole session.
    period = profile.safety.poll_period_s
    for k in range(1, int((duration + 10) / period)):
        clock.at(clock.now + k * period, session.wake)
    return session, link, clock


def first(link: FakeLink, *ops: str) -> float:
    return next(t for t, op in link.ops if op in ops)


@pytest.mark.parametrize("pid", ["us-300", "hc-200", "es-4"])
@pytest.mark.parametrize("after_s", [1.0, 20.0, 45.0, 600.0])
@pytest.mark.parametrize("emergency", [False, True])
def test_a_stop_waits_for_at_most_one_exchange_late_in_a_long_session(
        pid: str, after_s: float, emergency: bool) -> None:
    session, link, clock = make(pid, 900.0)
    posted: list[float] = []

    def stop() -> None:
        posted.append(clock.now)
        session.request_stop("operator", emergency=emergency)

    clock.at(clock.now + 0.5 + after_s, stop)     # ~0.5 s of set-up before the output
    report = session.run()
    assert report.outcome == "aborted", report.reason
    sent = first(link, "emergency_stop" if emergency else "stop")
    # The stop command's own exchange is one reply; before it, at most the one exchange
    # that was on the wire when the stop was posted.
    assert sent - posted[0] <= 2 * link.reply_s + 1e-9


def test_a_stop_during_identification_or_arming_never_starts_the_output() -> None:
    session, link, clock = make("us-300", 60.0)
    clock.at(clock.now + 0.01, lambda: session.request_stop("operator"))
    report = session.run()
    assert "start" not in [op for _, op in link.ops]
    assert report.outcome == "aborted" and not report.output_started
    assert report.exit_status == 4


def test_an_emergency_request_upgrades_a_pending_controlled_stop() -> None:
    session, link, clock = make("us-300", 60.0)
    when = clock.now + 5.0
    clock.at(when, lambda: session.request_stop("operator"))
    clock.at(when + 0.001, lambda: session.request_stop("operator", emergency=True))
    session.run()
    assert next(op for _, op in link.ops if op in ("stop", "emergency_stop")) \
        == "emergency_stop"


@pytest.mark.parametrize("pid", ["us-300", "hc-200", "es-4"])
def test_the_planned_end_is_not_delayed_by_a_poll_of_slow_exchanges(pid: str) -> None:
    session, link, _ = make(pid, 120.0)
    report = session.run()
    assert report.outcome == "completed", report.reason
    # Operations are logged when their reply is in, start and stop alike: the stop was
    # sent exactly at the planned end.
    late = first(link, "stop") - (first(link, "start") + 120.0)
    assert abs(late) <= 1e-6
    last_poll_end = max(t for t in link.polls if t < first(link, "stop"))
    assert first(link, "stop") - link.reply_s >= last_poll_end


def test_the_guard_grows_with_the_measured_poll() -> None:
    session, _, _ = make("us-300", 30.0)
    session.run()
    poll = 5 * SLOW_REPLY_S["us-300"]
    assert session._guard_s() == pytest.approx(POLL_GUARD_S + poll, abs=1e-6)


def test_a_poll_that_runs_into_the_planned_end_is_cut_after_one_exchange() -> None:
    # Exchanges slower than any guard can cover (0.4 s x 5): the planned end arrives
    # mid-poll and the rest of the poll is abandoned.
    session, link, _ = make("us-300", 10.0, reply_s=0.15)
    report = session.run()
    assert report.outcome == "completed", report.reason
    late = first(link, "stop") - (first(link, "start") + 10.0)
    assert late <= 2 * 0.15 + 1e-6


def test_wake_ups_coalesce_and_a_stop_is_never_behind_them() -> None:
    mailbox = StopMailbox()
    for _ in range(10_000):
        mailbox.wake()
    mailbox.post(StopRequest("operator", False, "operator stop"))
    for _ in range(10_000):
        mailbox.wake()
    assert mailbox.take() == StopRequest("operator", False, "operator stop")
    mailbox.wait(0)                         # one wait clears every wake-up so far
    began = time.monotonic()
    mailbox.wait(0.05)                      # ...so the next one really sleeps
    assert time.monotonic() - began >= 0.04
    assert mailbox.stop_wanted()            # a stop stays until the worker acts on it
