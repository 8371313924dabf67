"""The fault matrix (issue #6, part 2): every simulator fault option x every device it applies
to x every session phase where it can strike.

Each case runs one short real-time session against a simulated device on a pseudo-terminal,
with a records database of its own, and asserts:

1. the output ends stopped, by the simulator's own state (its output history ends "off";
   where the controller cannot confirm the stop, the device watchdog is waited for);
2. the outcome and exit status are the ones docs/design.md §4.3-4.4 define for that fault;
3. the fault struck in the phase the case names (read back from the session's state events)
   and the report's reason names the fault (for impairments the retry budget absorbs, the
   session completes instead);
4. the records database holds every event of the report, in order, with the decision, and
   the session row is closed with the report's outcome, reason and stop source.

How a fault is made to strike in a phase
----------------------------------------
The simulator schedules timed faults in seconds of *output* (from the device's first output
start), so by itself it can strike only while an output runs:

* ``ramping`` (ES-4 only: the other devices have no ramp) and ``delivering`` use the
  simulator's own schedule unchanged (``FaultPlan(lead_off_at=0.4)`` ...), except the US-300
  over-temperature: its trip shows only in telemetry read by several queries, and one that
  falls between two queries of a poll was misread before the fix (proved on its own by
  `test_interlock_between_two_telemetry_queries_is_named`), so the matrix still switches it on
  right after a poll, some 40 ms before the trip.
* ``arming`` and ``stopping`` use a trigger on the controller's side of the link: the
  session's device link is wrapped (``Session(link_factory=...)``) so that just before the
  controller sends its ``start`` command (the last exchange of arming) or its ``stop`` command
  (the first of stopping), the test switches the fault on in the simulator and waits until
  the simulator has acted on it (port closed, pad flagged off, e-stop latched, ...). Switching
  on means replacing the device's `FaultPlan` with one whose time for this fault is "now" in
  the fault schedule; before any output that schedule has no origin, so the trigger sets the
  model's ``first_output_at`` (the origin) to the trigger time. Nothing else in the simulator
  is touched: it then behaves exactly as for the same fault scheduled by time. The request
  after the trigger is the first to meet the fault: a silent device never sees the start; a
  garbled or slow link loses the start's reply although the device did start.
* Faults with no schedule of their own (``garble``, ``delay_ms``) are switched on the same way
  in ``ramping``/``delivering``: before the first telemetry read at the phase's strike time.
* ``identifying`` and ``session``: faults that are a property of the device from power-up (no
  applicator, a miscalibrated sensor) or of the whole link (garble, delay at levels the retry
  budget absorbs) are configured from the start.

A fault is left out of a phase where it cannot strike: heating faults and electrode faults
need an output running (the simulator applies them only then, and a heating fault needs
seconds, which a stop does not give it), and the ultrasound coupling only matters while the
output runs. ``seed`` is not a fault of its own: it seeds the garbling, which the garble cases
set. `test_every_fault_option_is_in_the_matrix` keeps the matrix complete as options are added.

Running time: the cases are real time and spend nearly all of it waiting (poll periods, reply
timeouts, the device watchdog), so the selected cases run side by side, each with its own
simulated device, pty, session and database, on `MATRIX_WORKERS` threads
(``MODCTL_MATRIX_WORKERS=1`` runs them one at a time, e.g. to debug one with ``-k``); each
parametrised test then checks its own case. The module fixture runs every selected case of
the session, so this file runs on one xdist worker (tests/support/scheduling.py): shared test
by test, each worker would run the whole matrix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.device.link import DeviceLink, open_engine
from controller.profiles.loader import resolve_profile
from controller.profiles.model import Profile
from controller.records.store import RecordStore
from controller.session.report import SessionReport
from simulator.faults import FAULT_NAMES, LINK_FAULTS, MODALITY_FAULTS, FaultPlan
from simulator.model_base import OutputChange
from simulator.server import SimulatedDevice
from tests.conftest import SimFactory
from tests.session_helpers import SETTINGS, history, make_session, run

MODALITY = {"hc-200": "thermal", "us-300": "ultrasound", "es-4": "tens"}
DEVICES = tuple(MODALITY)
# Planned durations: the ES-4 ramps 10 mA up at 10 mA/s, so its output ramps for 1 s first.
PLANNED_S = {"hc-200": 1.5, "us-300": 1.5, "es-4": 2.0}
# When a fault strikes, in seconds of output.
RAMPING_AT = 0.4
DELIVERING_AT = {"hc-200": 0.5, "us-300": 0.5, "es-4": 1.3}
# After the session, how long the device may take to stop by itself: its watchdog (at most
# 2 s after the last valid request, which came before the session ended) plus a margin.
WATCHDOG_MARGIN_S = 1.0
# How long a trigger waits for the simulator to act on a fault it switched on.
TRIGGER_SETTLE_S = 1.0
# Threads running cases side by side: ~70 cases of ~3 s each (the slowest ~13 s), each using
# a few percent of a core (nearly all of it is waiting). 12 brings the matrix to ~20 s
# (~50 s with 4) with the process still at about a third of a core.
MATRIX_WORKERS = max(1, int(os.environ.get("MODCTL_MATRIX_WORKERS", "12")))
CASE_TIMEOUT_S = 60.0

# Measured seconds a lost link adds to a case (retries until the budget runs out, the stop's
# retries, then the device watchdog): the US-300's SCPI poll is several queries, each waiting
# out its reply timeout. Only orders the cases (slowest first), so the pool ends together.
LOST_LINK_S = {"hc-200": 2.0, "us-300": 7.0, "es-4": 2.5}

EXIT_STATUS = {"completed": 0, "rejected": 3, "aborted": 4, "fault": 5}
# Link faults as the reason may name them: the controller's verdict on a lost link.
LINK_WORDS = ("communication", "no valid reply", "stale telemetry", "stop not confirmed")


@dataclass(frozen=True)
class Expect:
    outcome: str
    stop_source: str
    words: tuple[str, ...]
    """The reason must contain at least one of these (compared in lower case)."""
    confirmed: bool | None
    """report.stop_confirmed."""
    output_started: bool | None = True
    """Whether the device's output was ever on (None: either)."""


@dataclass(frozen=True)
class Case:
    pid: str
    fault: str
    phase: str
    value: Any
    """The option's value; for a timed fault the strike time, None where a trigger sets it."""
    expect: tuple[Expect, ...]
    """The report must match one of these (a slow link may be absorbed or not)."""
    settings: Mapping[str, str] | None = None
    prepare: str = ""
    """A named device state set before the session (see PREPARE)."""
    also: Mapping[str, Any] = field(default_factory=dict)
    """Further options configured from the start (the garble seed)."""
    level: str = ""
    """Distinguishes two levels of one option in the id (absorbed / beyond)."""
    after_poll: bool = False
    """Strike right after a telemetry poll (at the phase's strike time) instead of by the
    simulator's schedule: for faults the device reports only through telemetry, so that the
    change cannot fall between the queries of one poll (see the module docstring)."""

    @property
    def id(self) -> str:
        return "-".join(p for p in (self.pid, self.fault, self.level, self.phase) if p)

    @property
    def planned_s(self) -> float:
        return PLANNED_S[self.pid]

    @property
    def trigger(self) -> tuple[str, float] | None:
        """(operation, seconds after the start command) before which the fault is switched on;
        None when it is configured from the start (scheduled by the simulator, or permanent)."""
        if self.phase == "arming":
            return ("start", 0.0)
        if self.phase == "stopping":
            return ("stop", 0.0)
        if self.phase in ("ramping", "delivering") and (
                self.after_poll or not self.fault.endswith("_at")):
            return ("read_telemetry", strike_time(self.pid, self.phase) or 0.0)
        return None

    @property
    def cost(self) -> float:
        """A guess at the seconds the case takes, to start the slow ones first."""
        lost = any(e.stop_source == "device_watchdog" for e in self.expect)
        return (self.planned_s + (LOST_LINK_S[self.pid] if lost else 0.0)
                + (1.0 if self.phase == "stopping" else 0.0))


# -- what docs/design.md §4.3-4.4 expect, by kind of fault ---------------------------------

def completed() -> Expect:
    return Expect("completed", "controller", ("planned duration delivered",), True)


def link_lost(output_started: bool | None = True) -> Expect:
    # Silence, a closed port, every reply corrupted: the controller cannot confirm the stop,
    # so the device's own watchdog is what stops the output, and the record says so.
    return Expect("fault", "device_watchdog", ("stop not confirmed",), False,
                  output_started=output_started)


def link_fault() -> Expect:
    # A link that fails the retry budget but still carries the stop: a communication fault,
    # output stopped and confirmed.
    return Expect("fault", "controller", LINK_WORDS, True)


# What a link slower than the reply timeout may end in: every outcome that is safe and says
# what happened, never a value misread.
SLOW_LINK = (completed(), link_fault(), link_lost())


def interlock(*words: str, started: bool = True) -> Expect:
    return Expect("fault", "interlock", words, True, output_started=started)


def patient(started: bool = True) -> Expect:
    return Expect("aborted", "patient", ("patient stop",), True, output_started=started)


def rejected(*words: str) -> Expect:
    return Expect("rejected", "", words, None, output_started=False)




def _cases() -> list[Case]:
    cases: list[Case] = []
    for pid in DEVICES:
        phases = ("arming", *(("ramping",) if pid == "es-4" else ()), "delivering", "stopping")
        for phase in phases:
            at = strike_time(pid, phase)
            never_started = phase == "arming"
            cases.append(Case(pid, "silent_at", phase, at, (link_lost(not never_started),)))
            cases.append(Case(pid, "disconnect_at", phase, at, (link_lost(not never_started),)))
            # Every reply corrupted: the device still obeys (it started, it stops), but
            # nothing it says can be read, so the stop is not confirmed.
            cases.append(Case(pid, "garble", phase, 1.0, (link_lost(),), also={"seed": 1},
                              level="all"))
            # Replies slower than the reply timeout: a retry may still catch a late reply
            # to the same request (absorbed), or the budget runs out (a link fault).
            cases.append(Case(pid, "delay_ms", phase, 300.0, SLOW_LINK, level="beyond"))
        # Levels the retry budget absorbs, all session long.
        cases.append(Case(pid, "garble", "session", 0.1, (completed(),), also={"seed": 3},
                          level="absorbed"))
        cases.append(Case(pid, "delay_ms", "session", 25.0, (completed(),), level="absorbed"))

    # HC-200 thermal pad.
    cases.append(Case("hc-200", "overtemp_at", "delivering", strike_time("hc-200", "delivering"),
                      (interlock("pad temperature", "over-temperature"),),
                      settings={"temperature_c": "44"}, prepare="warm_pad"))
    cases.append(Case("hc-200", "undertemp_at", "delivering",
                      strike_time("hc-200", "delivering"),
                      (interlock("pad temperature", "under-temperature"),),
                      settings={"temperature_c": "12"}, prepare="cold_pad"))
    for phase in ("arming", "delivering", "stopping"):
        # Struck while arming, the device refuses the start: its output never comes on.
        cases.append(Case("hc-200", "pad_off_at", phase, strike_time("hc-200", phase),
                          (interlock("pad", started=phase != "arming"),)))
    # A sensor reading twice the truth reads 64 degC at power-up: the device latches its
    # over-temperature trip before anything starts. A small error cannot be seen in a
    # session (the device regulates on its own sensor): that is calibration's job.
    cases.append(Case("hc-200", "miscal_gain", "identifying", 2.0,
                      (rejected("over-temperature", "latched"),), level="trips"))
    cases.append(Case("hc-200", "miscal_gain", "session", 1.05, (completed(),), level="small"))
    cases.append(Case("hc-200", "miscal_offset", "session", 1.5, (completed(),)))

    # US-300 ultrasound.
    cases.append(Case("us-300", "overtemp_at", "delivering", None, (interlock("applicator"),),
                      settings={**SETTINGS["us-300"], "intensity_w_cm2": "1.0"},
                      prepare="warm_head", after_poll=True))
    # Coupling lost for 0.5 s: the output holds and the session end moves (docs/design.md §2.7).
    cases.append(Case("us-300", "contact_lost", "delivering", (0.5, 1.0), (completed(),)))
    cases.append(Case("us-300", "no_applicator", "identifying", True,
                      (rejected("applicator", "fault 2"),)))
    cases.append(Case("us-300", "miscal_gain", "session", 1.2, (completed(),)))

    # ES-4 TENS.
    for phase in ("ramping", "delivering", "stopping"):
        cases.append(Case("es-4", "lead_off_at", phase, strike_time("es-4", phase),
                          (interlock("lead off"),)))
        cases.append(Case("es-4", "overcurrent_at", phase, strike_time("es-4", phase),
                          (interlock("over-current"),)))
    for phase in ("arming", "ramping", "delivering", "stopping"):
        cases.append(Case("es-4", "patient_stop_at", phase, strike_time("es-4", phase),
                          (patient(started=phase != "arming"),)))
    cases.append(Case("es-4", "miscal_gain", "session", 1.2, (completed(),)))
    cases.append(Case("es-4", "miscal_offset", "session", 0.5, (completed(),)))
    return cases


def strike_time(pid: str, phase: str) -> float | None:
    """The scheduled time of a timed fault; None where a trigger switches it on."""
    if phase == "ramping":
        return RAMPING_AT
    if phase == "delivering":
        return DELIVERING_AT[pid]
    return None


CASES = _cases()


# -- striking a fault in a phase -----------------------------------------------------------

def switch_on(device: SimulatedDevice, fault: str, value: Any) -> None:
    """Turn a fault on in a running simulator, now (see the module docstring)."""
    model = device.model
    with model.lock:
        now = model.clock()
        if value is None:                      # a timed fault: its time is "now"
            if model.first_output_at is None:
                model.first_output_at = now    # the fault schedule's origin (no output yet)
            value = model.output_time(now)
        plan = dataclasses.replace(device.faults, **{fault: value})
        device.faults = model.faults = device.server.faults = plan


def fault_acted(device: SimulatedDevice, fault: str) -> bool:
    """Whether the simulator has acted on a fault just switched on."""
    model: Any = device.model
    with model.lock:
        if fault == "disconnect_at":
            return bool(device.server.disconnected)
        if fault == "pad_off_at":
            return not model.pad_connected
        if fault == "patient_stop_at":
            return bool(model.estop_latched)
        if fault in ("lead_off_at", "overcurrent_at"):
            return not model.output_on
    return True          # silence, garbling and delay act on the very next request


class TriggerLink(DeviceLink):
    """The session's device link: switches a fault on just before one operation is sent."""

    def __init__(self, profile: Profile, port: str, case: Case,
                 device: SimulatedDevice) -> None:
        super().__init__(profile, open_engine(profile, port))
        assert case.trigger is not None
        self.op, self.after_s = case.trigger
        self.case = case
        self.device = device
        self.started_at: float | None = None
        self.fired = False

    def run(self, op: str, variables: Mapping[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        if op == "start" and self.started_at is None:
            self.started_at = now
        since_start = 0.0 if self.started_at is None else now - self.started_at
        due = not self.fired and op == self.op and since_start >= self.after_s
        if due and not self.case.after_poll:
            self._strike()
        result = super().run(op, variables)
        if due and self.case.after_poll:
            self._strike()
        return result

    def _strike(self) -> None:
        self.fired = True
        switch_on(self.device, self.case.fault, self.case.value)
        deadline = time.monotonic() + TRIGGER_SETTLE_S
        while not fault_acted(self.device, self.case.fault):
            if time.monotonic() > deadline:
                raise AssertionError(f"the simulator never acted on {self.case.fault}")
            time.sleep(0.002)


PREPARE: dict[str, Callable[[Any], None]] = {
    # The pad is still warm (cold) from an application just before: the injected heating
    # (cooling) runaway passes the limit within a second instead of five.
    "warm_pad": lambda m: setattr(m, "pad_c", 44.0),
    "cold_pad": lambda m: setattr(m, "pad_c", 11.0),
    # The applicator face is still warm from a session just before: switched on after a poll
    # 0.5 s into the output, the injected heating passes the 41 degC trip some 40 ms later,
    # well before the next poll.
    "warm_head": lambda m: setattr(m, "temperature_c", 40.6),
}


@dataclass
class Result:
    report: SessionReport
    changes: list[OutputChange]
    """The device's output history once it has stopped (or the wait ran out)."""
    device: SimulatedDevice
    db: Path
    seconds: float


def run_case(case: Case, workdir: Path) -> Result:
    profile = resolve_profile(case.pid).profile
    scheduled = case.trigger is None
    faults = {**case.also, **({case.fault: case.value} if scheduled else {})}
    device = SimulatedDevice(profile, FaultPlan(**faults)).start()
    try:
        if case.prepare:
            with device.model.lock:
                PREPARE[case.prepare](device.model)
        begun = time.monotonic()
        kw: dict[str, Any] = {}
        if not scheduled:
            def factory(prof: Profile, port: str) -> DeviceLink:
                return TriggerLink(prof, port, case, device)
            kw["link_factory"] = factory
        db = workdir / "records.sqlite3"
        with RecordStore(db) as store:
            report = make_session(case.pid, device, case.planned_s, case.settings,
                                  store=store, **kw).run()
        # Where the controller could not confirm the stop, the device watchdog has to act.
        deadline = time.monotonic() + profile.safety.watchdog_s + WATCHDOG_MARGIN_S
        changes = history(device)
        while changes and changes[-1].on and time.monotonic() < deadline:
            time.sleep(0.01)
            changes = history(device)
        return Result(report, changes, device, db, time.monotonic() - begun)
    finally:
        device.stop()


class Matrix:
    """The selected cases, running side by side; `result(case)` waits for one."""

    def __init__(self, cases: list[Case], base: Path) -> None:
        self._pool = ThreadPoolExecutor(MATRIX_WORKERS, thread_name_prefix="fault-matrix")
        self._futures: dict[str, Future[Result]] = {}
        for case in sorted(cases, key=lambda c: -c.cost):
            workdir = base / case.id
            workdir.mkdir()
            self._futures[case.id] = self._pool.submit(run_case, case, workdir)

    def result(self, case: Case) -> Result:
        return self._futures[case.id].result(timeout=CASE_TIMEOUT_S)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    module = sys.modules[__name__]
    selected = [item.callspec.params["case"] for item in request.session.items
                if getattr(item, "module", None) is module and hasattr(item, "callspec")
                and "case" in item.callspec.params]
    runner = Matrix(selected, tmp_path_factory.mktemp("fault-matrix"))
    yield runner
    runner.close()


# -- checks --------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def struck_in(report: SessionReport) -> str:
    """The phase the session was in when the outcome was decided, from its state events.

    A planned-end decision followed by a fault is a fault that struck while stopping.
    """
    states = [e.detail.get("state") for e in report.events if e.kind == "state"]
    before_stop = [s for s in states if s in ("identifying", "arming", "ramping",
                                              "delivering", "holding")]
    decision = next((e.detail for e in report.events
                     if e.kind == "decision" and "outcome" in e.detail), {})
    phase = before_stop[-1] if before_stop else "connecting"
    if decision.get("reason") == "planned duration delivered":
        return "stopping"
    return "delivering" if phase == "holding" else phase


def matches(report: SessionReport, changes: list[OutputChange], expect: Expect) -> bool:
    return (report.outcome == expect.outcome
            and report.exit_status == EXIT_STATUS[expect.outcome]
            and report.stop_source == expect.stop_source
            and report.stop_confirmed is expect.confirmed
            and (expect.output_started is None
                 or any(c.on for c in changes) == expect.output_started)
            and any(w in report.reason.lower() for w in expect.words))


def assert_records_hold_everything(result: Result) -> None:
    report = result.report
    with RecordStore(result.db) as store:
        row = store.get_session(report.session_id)
    assert row is not None, "the session was never recorded"
    assert (row.status, row.outcome, row.reason, row.stop_source or "") == \
        ("closed", report.outcome, report.reason, report.stop_source)
    recorded = [(e.kind, e.detail) for e in row.events]
    reported = [(e.kind, _plain(e.detail)) for e in report.events]
    assert recorded == reported, "the records miss, add or reorder events of the report"
    decisions = [e.detail for e in row.events if e.kind == "decision" and "outcome" in e.detail]
    assert decisions and decisions[-1]["outcome"] in (report.outcome, "completed"), decisions


def _param(case: Case) -> Any:
    return pytest.param(case, id=case.id)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_fault_matrix(case: Case, matrix: Matrix) -> None:
    result = matrix.result(case)
    report, changes = result.report, result.changes
    summary = (f"{report.outcome}/{report.stop_source or '-'} (exit {report.exit_status}, "
               f"stop confirmed {report.stop_confirmed}): {report.reason}; device: "
               + ", ".join(f"{'on' if c.on else 'off'} ({c.cause})" for c in changes))
    # 1. The output ended stopped, as the simulator itself sees it.
    assert not changes or not changes[-1].on, "device output left on: " + summary
    # 2 and 3. Outcome, exit status, stop source and reason as docs/design.md §4.3-4.4 define.
    assert any(matches(report, changes, e) for e in case.expect), summary
    # A slow link may be absorbed where it begins and fail a later exchange: no phase check.
    if case.phase in ("arming", "ramping", "delivering", "stopping") \
            and report.outcome != "completed" and case.fault != "delay_ms":
        assert struck_in(report) == case.phase, summary
    if case.fault == "garble" and report.outcome == "completed":
        assert result.device.server.replies_garbled > 0, "nothing was garbled"
    if case.fault == "contact_lost":
        states = [e.detail.get("state") for e in report.events if e.kind == "state"]
        assert "holding" in states, "the output never held for lost coupling"
    # 4. The records hold every event of the report, and the decision.
    assert_records_hold_everything(result)


def test_interlock_between_two_telemetry_queries_is_named(sim_device: SimFactory) -> None:
    """The matrix's US-300 over-temperature case, with the trip placed deterministically
    where load alone sometimes puts it: between the status and the power query of one poll.

    The face trips at 41.01 degC (the model's trip overshoots by up to 0.15 degC) and the
    device reports it to one decimal, 41.0, which is not past the controller's 41 degC limit;
    the device's status on the next poll (fault 1) is what names the interlock.
    """
    device = sim_device("us-300")
    model: Any = device.model
    original = model.telemetry
    tripped: list[float] = []

    def telemetry(name: str, channel: int | None, now: float) -> Any:
        t = model.output_time(now)
        if name == "power_w" and not tripped and t is not None and t >= 0.5 \
                and model.output_on:
            tripped.append(now)
            model.temperature_c = 41.01     # the face passes its trip now: the device
            model.tick(now + 1e-4)          # latches fault 1 and stops the output
        return original(name, channel, now)

    model.telemetry = telemetry
    report = run("us-300", device, 2.0, {**SETTINGS["us-300"], "intensity_w_cm2": "1.0"})
    assert tripped, "the output never ran 0.5 s"
    last = history(device)[-1]
    assert not last.on and last.cause == "interlock"
    assert (report.outcome, report.exit_status, report.stop_source) == \
        ("fault", 5, "interlock"), report.reason
    assert "applicator" in report.reason


def test_scpi_late_reply_is_not_taken_for_the_next_answer(sim_device: SimFactory) -> None:
    """The matrix's US-300 slow-link cases, made deterministic: one telemetry answer (the
    applicator temperature) comes late, just after the controller's next query went out.
    The retry of the temperature query gets its answer; the late line must not then be taken
    for the intensity."""
    device = sim_device("us-300")
    receive = device.endpoint.receive
    held: list[bytes] = []
    done: list[bool] = []

    def late(data: bytes, now: float) -> list[bytes]:
        replies = receive(data, now)
        if done or not device.model.output_on:
            return replies
        if data.startswith(b"MEASure:TEMPerature?") and not held:
            held.extend(replies)         # the answer is late ...
            return []
        if held and data.startswith(b"SOURce:INTensity?"):
            done.append(True)            # ... and arrives just after the next query
            return held + replies
        return replies

    device.endpoint.receive = late  # type: ignore[method-assign]
    report = run("us-300", device, 1.5)
    assert done, "the late answer was never delivered"
    changes = history(device)
    assert changes and not changes[-1].on
    assert any(matches(report, changes, e) for e in SLOW_LINK), report.reason


def test_every_fault_option_is_in_the_matrix() -> None:
    covered = {(MODALITY[c.pid], name) for c in CASES for name in (c.fault, *c.also)}
    for pid, modality in MODALITY.items():
        for name in sorted(LINK_FAULTS | MODALITY_FAULTS[modality]):
            assert (modality, name) in covered, f"{name} on {pid} is not in the fault matrix"
    assert set(FAULT_NAMES) == LINK_FAULTS.union(*MODALITY_FAULTS.values())
