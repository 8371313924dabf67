"""The session worker on an injected clock with an in-memory device: no pty, no real time.

The fake clock only moves when the worker waits or pauses, so the timing logic
(planned end, poll cadence, coupling hold, stale telemetry, stop confirmation)
is checked exactly and instantly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from controller.device.link import ReadBack
from controller.modality.prescription import build_prescription
from controller.profiles.loader import resolve_profile
from controller.profiles.model import Profile
from controller.session.worker import POLL_GUARD_S, Session, poll_guard_s
from protocols.engine import EventHandler
from protocols.errors import LinkTimeout
from protocols.map_common import Scalar
from tests.support.clock import FakeClock


def identify_results(profile: Profile) -> dict[str, Scalar]:
    """What the profile's `identify` expects, plus an identity for every identity key."""
    out: dict[str, Scalar] = {}
    for step in profile.operations.defined()["identify"]:
        out.update(step.expect)
    if profile.identity is not None:
        keys = [profile.identity.model, profile.identity.serial, profile.identity.firmware]
        for key in keys:
            for k in ([key] if isinstance(key, str) else key):
                out.setdefault(k, 7)
    return out


class FakeLink:
    """Stands in for DeviceLink: scripted telemetry as a function of fake time."""

    def __init__(self, profile: Profile, clock: FakeClock,
                 telemetry: Any, fail_after: float | None = None) -> None:
        self.profile = profile
        self.clock = clock
        self.script = telemetry
        self.fail_after = fail_after
        self.ops: list[tuple[float, str]] = []
        self.polls: list[float] = []
        self.on = False
        self.started_at = 0.0

    def has(self, op: str) -> bool:
        return op in self.profile.operations.defined()

    def run(self, op: str, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        self.ops.append((self.clock(), op))
        if op == "start":
            self.on, self.started_at = True, self.clock()
        elif op in ("stop", "emergency_stop"):
            self.on = False
        return identify_results(self.profile) if op == "identify" else {}

    def read_back(self, op: str, variables: Mapping[str, Scalar]) -> dict[str, ReadBack]:
        # The device holds what was written.
        return {f"{s.write}.{a}": ReadBack(variables[v[1:]], variables[v[1:]])
                for s in self.profile.operations.defined().get(op, [])
                for a, v in s.args.items() if isinstance(v, str) and v.startswith("$")}

    def telemetry(self, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        t = self.clock()
        if self.fail_after is not None and self.started_at \
                and t - self.started_at >= self.fail_after:
            raise LinkTimeout("no reply")     # the link stays dead from then on
        self.polls.append(t)
        values: dict[str, Scalar] = dict(self.script(t - self.started_at, self.on))
        values["output_on"] = self.on
        if self.on and "remaining_s" in values:
            # The device's own timer, armed with timer_s at the start, counts whole seconds.
            elapsed = int(t - self.started_at)
            values["elapsed_s"] = elapsed
            values["remaining_s"] = max(0, int(float(variables["timer_s"])) - elapsed)
        return values

    def set_event_handler(self, handler: EventHandler | None) -> None:
        pass

    def set_interrupt(self, check: Any) -> None:
        self.interrupt = check

    def poll_events(self) -> None:
        pass

    def close(self) -> None:
        pass


# A worker that asks to wait for nothing this many times in a row, with the clock
# standing still, would spin forever in real time: fail instead of hanging.
MAX_IDLE_WAITS = 1000


class WorkerSpins(AssertionError):
    pass


class ClockedSession(Session):
    """Waits and pauses advance the fake clock instead of real time."""

    fake: FakeClock
    _idle_waits = 0

    def _wait(self, timeout: float) -> None:
        if timeout > 0:
            self.fake.now += timeout
            self._idle_waits = 0
            return
        self._idle_waits += 1
        if self._idle_waits > MAX_IDLE_WAITS:
            raise WorkerSpins(f"the worker waits for nothing, again and again, at "
                              f"t={self.fake.now}: it would spin in real time")

    def _pause(self, seconds: float) -> None:
        self.fake.now += seconds
        self._idle_waits = 0


def thermal(elapsed: float, on: bool) -> dict[str, Scalar]:
    return {"temperature_c": 36.0, "setpoint_c": 40.0, "fault_code": 0, "elapsed_s": 0,
            "remaining_s": 10, "pad_connected": True, "watchdog_expired": False,
            "timer_expired": False, "trip_high": False, "trip_low": False}


def ultrasound_with_gap(gap: tuple[float, float]) -> Any:
    def script(elapsed: float, on: bool) -> dict[str, Scalar]:
        held = on and gap[0] <= elapsed < gap[1]
        return {"state": ("holding" if held else "running") if on else "idle",
                "contact_pct": 20 if held else (90 if on else 0), "fault_code": 0,
                "power_w": 0.0 if held or not on else 7.5, "applicator_temp_c": 30.0,
                "intensity_w_cm2": 1.5, "era_cm2": 5.0, "elapsed_s": 0, "remaining_s": 9}
    return script


def make(pid: str, settings: dict[str, str], duration: float, script: Any,
         fail_after: float | None = None) -> tuple[ClockedSession, FakeLink, FakeClock]:
    profile = resolve_profile(pid).profile
    clock = FakeClock(1000.0)
    link = FakeLink(profile, clock, script, fail_after)
    rx = build_prescription(profile, settings, duration)
    session = ClockedSession(profile, rx, "fake", clock=clock,
                             link_factory=lambda p, port: link)  # type: ignore[arg-type,return-value]
    session.fake = clock
    return session, link, clock


def test_planned_end_is_exact_on_the_injected_clock() -> None:
    session, link, _ = make("hc-200", {"temperature_c": "40"}, 600.0, thermal)
    report = session.run()
    assert report.outcome == "completed"
    start = next(t for t, op in link.ops if op == "start")
    stop = next(t for t, op in link.ops if op == "stop")
    assert stop - start == pytest.approx(600.0, abs=1e-9)
    assert report.delivered_s == pytest.approx(600.0)


def test_polls_at_least_three_times_per_watchdog_period() -> None:
    session, link, _ = make("hc-200", {"temperature_c": "40"}, 60.0, thermal)
    session.run()
    gaps = [b - a for a, b in zip(link.polls, link.polls[1:], strict=False)]
    watchdog = session.profile.safety.watchdog_s
    assert max(gaps) <= watchdog / 3 + 1e-9
    assert len(link.polls) >= 60.0 / session.profile.safety.poll_period_s - 2


@pytest.mark.parametrize("pid", ["hc-200", "us-300", "es-4"])
def test_no_poll_starts_within_one_lost_reply_of_the_end(pid: str) -> None:
    # A poll whose reply is lost retries after reply_timeout_s: started this late it
    # would hold the planned stop. The guard covers one lost reply.
    profile = resolve_profile(pid).profile
    guard = poll_guard_s(profile)
    assert guard == pytest.approx(POLL_GUARD_S + profile.link.reply_timeout_s)
    silence = profile.safety.poll_period_s + guard
    assert silence < profile.safety.stale_after_s   # the quiet end never reads as stale
    if pid != "hc-200":
        return  # the guard's arithmetic above is what differs between the profiles
    session, link, _ = make(pid, {"temperature_c": "40"}, 7.3, thermal)
    session.run()
    start = next(t for t, op in link.ops if op == "start")
    stop = next(t for t, op in link.ops if op == "stop")
    assert stop == pytest.approx(start + 7.3, abs=1e-9)
    last_poll = max(t for t in link.polls if t < stop)   # later reads confirm the stop
    assert stop - last_poll >= guard - 1e-9


def test_poll_guard_never_makes_the_end_look_stale() -> None:
    profile = resolve_profile("hc-200").profile
    tight = profile.model_copy(update={"safety": profile.safety.model_copy(
        update={"stale_after_s": 0.25, "poll_period_s": 0.2})})
    assert poll_guard_s(tight) == pytest.approx(0.05)      # 0.25 - 0.2, not 0.13
    tighter = profile.model_copy(update={"safety": profile.safety.model_copy(
        update={"stale_after_s": 0.21, "poll_period_s": 0.2})})
    assert poll_guard_s(tighter) == POLL_GUARD_S            # never below the base guard


def test_backstops_are_armed_before_start() -> None:
    session, link, _ = make("hc-200", {"temperature_c": "40"}, 10.0, thermal)
    session.run()
    ops = [op for _, op in link.ops]
    assert ops.index("configure") < ops.index("arm") < ops.index("start")
    assert session.variables["timer_s"] >= 10.0 + session.profile.safety.timer_margin_s
    assert 0 < float(session.variables["watchdog_s"]) <= 2.0


def test_coupling_gap_moves_the_end_by_the_hold() -> None:
    session, link, _ = make("us-300", {"intensity_w_cm2": "1.5"}, 30.0,
                            ultrasound_with_gap((10.0, 15.0)))
    report = session.run()
    assert report.outcome == "completed", report.reason
    start = next(t for t, op in link.ops if op == "start")
    stop = next(t for t, op in link.ops if op == "stop")
    assert stop - start == pytest.approx(35.0, abs=0.25)     # 30 s treatment + 5 s hold
    assert report.dose["treatment_s"] == pytest.approx(30.0, abs=0.25)


def test_coupling_lost_too_long_ends_the_session() -> None:
    session, link, _ = make("us-300", {"intensity_w_cm2": "1.5"}, 300.0,
                            ultrasound_with_gap((10.0, 1000.0)))
    report = session.run()
    assert report.outcome == "fault" and report.stop_source == "interlock"
    assert "coupling lost" in report.reason
    stop = next(t for t, op in link.ops if op in ("stop", "emergency_stop"))
    start = next(t for t, op in link.ops if op == "start")
    max_hold = session.profile.rules["max_contact_hold_s"]
    assert stop - start == pytest.approx(10.0 + max_hold, abs=0.5)


def test_lost_link_mid_session_is_a_fault_and_the_stop_is_attempted() -> None:
    session, link, _ = make("hc-200", {"temperature_c": "40"}, 60.0, thermal, fail_after=5.0)
    report = session.run()
    assert report.outcome == "fault" and report.exit_status == 5
    assert "communication" in report.reason and "stop not confirmed" in report.reason
    assert report.stop_source == "device_watchdog"
    assert any(op in ("stop", "emergency_stop") for _, op in link.ops)


def test_the_session_keeps_full_garbage_collections_off_its_planned_end() -> None:
    from controller.session.gc_policy import POLICY, SAFE_MARGIN_S

    seen: list[tuple[float | None, bool]] = []

    def watched() -> bool:
        return any(getattr(r, "__self__", None) is session
                   for r in list(POLICY._watched.values()))

    def script(elapsed: float, on: bool) -> dict[str, Scalar]:
        seen.append((session.time_remaining(), watched()))
        return thermal(elapsed, on)

    session, _, _ = make("hc-200", {"temperature_c": "40"}, 3.0, script)
    session.run()
    assert POLICY.installed and not watched()
    during = [w for left, w in seen if left is not None]
    assert during and all(during)       # watched for its whole output time
    assert any(left is not None and left < SAFE_MARGIN_S + 0.2 for left, _ in seen)
