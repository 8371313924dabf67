"""The run loop of one plan: the steps in order, the prompts, the pauses, the stop signals.

Each step is a real `Session` through the step runner the caller gives. Before
each step an interactive operator may start it, pause, skip it or stop the plan;
`pause_after` is always waited. A step that does not complete stops the plan:
later steps are never started, finished ones stay recorded. `plan.start` and
`plan.end` go to the audit trail, and a run that cannot write `plan.start` is refused.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from types import FrameType
from typing import TextIO

from controller.plans.plan import (
    EXAMPLE_WARNING,
    Plan,
    PlanReport,
    PlanStep,
    StepResult,
    format_duration,
)
from controller.plans.precheck import DeviceCheck, LinkFactory, PlanCheck, precheck
from controller.records.store import RecordsError, RecordStore
from controller.session.service import StepRunner

Ask = Callable[[str], str]
Sleep = Callable[[float], None]

# The pause countdown is refreshed this often (and a stop is noticed this fast).
PAUSE_TICK_S = 1.0
# Off a terminal (a log), a pause says how long is left this often.
PAUSE_REPORT_S = 30.0
# Answers at the between-steps prompt.
START_ANSWERS = frozenset({"", "c", "continue", "y", "yes", "start"})
PAUSE_ANSWERS = frozenset({"p", "pause"})
SKIP_ANSWERS = frozenset({"s", "skip"})
STOP_ANSWERS = frozenset({"q", "quit", "stop", "x"})
PROMPT = "[Enter] start it, [p] pause, [s] skip this step, [q] stop the plan: "
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stop(Exception):
    """The operator stopped the plan between steps (answer, Ctrl-C, SIGTERM, end of input)."""


class PlanRun:
    """One run of one plan: its report, its audit entries and the stop signals."""

    def __init__(self, name: str, source: str, example: bool, store: RecordStore | None,
                 operator: str, patient: str | None, booking_id: str | None,
                 out: TextIO) -> None:
        self.store = store
        self.out = out
        self.report = PlanReport(
            plan_run_id=uuid.uuid4().hex, plan=name, source=source, example=example,
            booking_id=booking_id, operator=operator, patient=patient, outcome="",
            reason="", started_at=_now())
        self._signalled = ""
        self._raise_on_signal = False

    # -- the run --------------------------------------------------------------------------
    def run(self, plan: Plan, ports: Mapping[str, str], interactive: bool,
            run_step: StepRunner,
            ask: Ask, sleep: Sleep, device_check: DeviceCheck | None,
            link_factory: LinkFactory, plan_check: PlanCheck | None = None) -> PlanReport:
        self.report.steps = [StepResult.planned(s, ports.get(s.role, "")) for s in plan.steps]
        self.report.planned_s = plan.treatment_s()
        if plan.example:
            self._say(f"*** {EXAMPLE_WARNING} ***")
        if not self._audit_start(plan, ports):
            return self.report
        with self._stop_signals():
            try:
                self._run(plan, ports, interactive, run_step, ask, sleep, device_check,
                          link_factory, plan_check)
            except _Stop as exc:
                self._end("stopped", f"plan stopped by the operator {exc}")
        return self._finish()

    def _run(self, plan: Plan, ports: Mapping[str, str], interactive: bool,
             run_step: StepRunner,
             ask: Ask, sleep: Sleep, device_check: DeviceCheck | None,
             link_factory: LinkFactory, plan_check: PlanCheck | None) -> None:
        self._say(f"plan '{plan.name}': checking {len(plan.steps)} steps and "
                  f"{len(plan.profiles)} devices before anything starts")
        with self._interruptible():
            rxs, problems = precheck(plan, ports, device_check, link_factory, plan_check)
        self._check_signal()
        if problems:
            self._refused(problems)
            return
        total = len(plan.steps)
        for step in plan.steps:
            result = self.report.steps[step.index - 1]
            self._say(f"next: step {step.index} of {total} '{step.name}' on {step.role} "
                      f"({step.profile.id}, {ports[step.role]}) for "
                      f"{format_duration(step.duration_s)}: {_settings(step)}")
            if step.notes:
                self._say(f"  notes: {step.notes}")
            if interactive and not self._ask_to_start(ask):
                result.outcome, result.reason = "skipped", "skipped by the operator"
                self._say(f"  step {step.index} skipped")
                continue
            self._check_signal()
            session = run_step(step.profile, rxs[step.index], ports[step.role],
                               self.report.operator, self.report.patient)
            result.take(session)
            self._say(f"  step {step.index} {result.outcome}: {result.reason} (delivered "
                      f"{result.delivered_s:.1f} of {result.planned_s:g} s, session "
                      f"{result.session_id or 'not recorded'})")
            if result.outcome != "completed":
                self._step_failed(step, result)
                return
            self._check_signal()
            if step.pause_after_s > 0 and step.index < total:
                self._pause(step.pause_after_s, sleep, step.index + 1)
        self._end("completed", _completed_reason(self.report.steps))

    def _step_failed(self, step: PlanStep, result: StepResult) -> None:
        what = f"{step.label()} ended {result.outcome}: {result.reason}"
        if result.outcome == "aborted":
            self._end("stopped", f"{what} (stopped by {result.stop_source or 'the operator'})")
        elif result.outcome == "rejected" and not self.report.any_output():
            self._end("rejected", what)
        else:
            self._end("fault", what)

    def _ask_to_start(self, ask: Ask) -> bool:
        """True to start the step, False to skip it; raises _Stop to stop the plan."""
        while True:
            answer = self._read(ask, PROMPT)
            if answer in START_ANSWERS:
                return True
            if answer in SKIP_ANSWERS:
                return False
            if answer in STOP_ANSWERS:
                raise _Stop("at the prompt")
            if answer in PAUSE_ANSWERS:
                self._read(ask, "paused; press Enter when ready to go on: ")
                continue
            self._say(f"  '{answer}' is not an answer here: c (or Enter), p, s or q")

    def _read(self, ask: Ask, prompt: str) -> str:
        with self._interruptible():
            try:
                return ask(prompt).strip().lower()
            except EOFError:
                raise _Stop("(no answer: end of input)") from None

    def _pause(self, seconds: float, sleep: Sleep, next_step: int) -> None:
        """Wait between steps, showing what is waited for and how long is left: rewritten in
        place on a terminal, a line every `PAUSE_REPORT_S` otherwise (a log)."""
        self._say(f"  pause of {format_duration(seconds)} before step {next_step} "
                  "(Ctrl-C stops the plan)")
        live = _is_terminal(self.out)
        end = time.monotonic() + seconds
        last_line = time.monotonic()
        with self._interruptible():
            while (left := end - time.monotonic()) > 0:
                sleep(min(PAUSE_TICK_S, left))
                self._check_signal()
                left = max(0.0, end - time.monotonic())
                text = (f"  pause: {_mm_ss(left)} left of {_mm_ss(seconds)} before step "
                        f"{next_step} (Ctrl-C stops the plan)")
                if live:
                    self._write(f"\r{text}\x1b[K")
                elif time.monotonic() - last_line >= PAUSE_REPORT_S and left > 0:
                    self._say(text)
                    last_line = time.monotonic()
        if live:
            self._write("\r\x1b[K")

    # -- ending ---------------------------------------------------------------------------
    def refuse(self, problems: list[str]) -> PlanReport:
        """Refuse a plan that cannot even be loaded or matched (bookings)."""
        if self._audit_start(None, {}):
            self._refused(problems)
            return self._finish()
        return self.report

    def _refused(self, problems: list[str]) -> None:
        self.report.problems = list(problems)
        for p in problems:
            self._say(f"refused: {p}")
        self._end("rejected", f"refused before anything started: {len(problems)} "
                  f"problem{'s' if len(problems) != 1 else ''}")

    def _end(self, outcome: str, reason: str) -> None:
        self.report.outcome, self.report.reason = outcome, reason

    def _finish(self) -> PlanReport:
        r = self.report
        r.ended_at = _now()
        r.delivered_s = round(sum(s.delivered_s for s in r.steps), 3)
        if self.store is not None:
            detail = {"plan_run_id": r.plan_run_id, "outcome": r.outcome, "reason": r.reason,
                      "booking_id": r.booking_id, "delivered_s": r.delivered_s,
                      "steps": [{"name": s.name, "outcome": s.outcome,
                                 "session_id": s.session_id} for s in r.steps]}
            try:
                entry = self.store.audit(r.operator, "plan.end", r.plan, detail)
                r.audit.append({"id": entry, "action": "plan.end"})
            except RecordsError as exc:
                r.reason += f"; records: {exc}"
        self._say(f"plan '{r.plan}': {r.outcome} - {r.reason}")
        return r

    def _audit_start(self, plan: Plan | None, ports: Mapping[str, str]) -> bool:
        """Write `plan.start`; False (and the run refused) when it cannot be recorded."""
        if self.store is None:
            return True
        r = self.report
        detail = {"plan_run_id": r.plan_run_id, "source": r.source, "example": r.example,
                  "booking_id": r.booking_id, "patient": r.patient, "ports": dict(ports),
                  "steps": [s.name for s in plan.steps] if plan else []}
        try:
            r.audit.append({"id": self.store.audit(r.operator, "plan.start", r.plan, detail),
                            "action": "plan.start"})
        except RecordsError as exc:
            # Nothing may run that cannot be recorded.
            r.problems = [str(exc)]
            self._end("rejected", f"refused before anything started: {exc}")
            r.ended_at = _now()
            self._say(f"refused: {exc}")
            return False
        return True

    # -- signals ----------------------------------------------------------------------------
    @contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """Between steps Ctrl-C and SIGTERM stop the plan (run_session has its own, in-step)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def request_stop(self, why: str) -> None:
        """Stop the plan from another thread (the clinic service): before the next step, or
        in a pause (within one `sleep` tick). The running step is stopped by its session."""
        self._signalled = why

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = signal.Signals(signum).name
        if self._raise_on_signal:
            raise _Stop(f"({self._signalled})")

    @contextmanager
    def _interruptible(self) -> Iterator[None]:
        """Inside: a stop signal raises at once (waiting, prompting, probing devices)."""
        self._check_signal()
        self._raise_on_signal = True
        try:
            yield
        except KeyboardInterrupt:
            raise _Stop("(Ctrl-C)") from None
        finally:
            self._raise_on_signal = False

    def _check_signal(self) -> None:
        if self._signalled:
            raise _Stop(f"({self._signalled})")

    def _write(self, text: str) -> None:
        with suppress(BrokenPipeError, ValueError):
            self.out.write(text)
            self.out.flush()

    def _say(self, text: str) -> None:
        # A closed output must never change how the plan ends.
        with suppress(BrokenPipeError, ValueError):
            print(text, file=self.out, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _mm_ss(seconds: float) -> str:
    whole = int(seconds + 0.999)  # 0.2 s left reads 00:01, never 00:00 before the end
    return f"{whole // 60:02d}:{whole % 60:02d}"


def _settings(step: PlanStep) -> str:
    return " ".join(f"{k}={v}" for k, v in step.settings.items()) or "(profile defaults)"


def _completed_reason(steps: list[StepResult]) -> str:
    done = sum(s.outcome == "completed" for s in steps)
    skipped = sum(s.outcome == "skipped" for s in steps)
    extra = f", {skipped} skipped by the operator" if skipped else ""
    return f"{done} of {len(steps)} steps completed{extra}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
