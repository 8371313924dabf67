"""One timed session on one device: the worker that owns the link and the machine.

Everything that touches the device happens on the worker thread. Other threads
(signal handlers, the display, a plan runner) only call `request_stop`, which
posts to the worker's queue. The planned end and every timeout are on the
injected monotonic clock; a wall-clock change cannot move them. Every path out
of an output — planned end, operator, patient, interlock, fault, a bug — goes
through `_stop_output`, which commands the output off and confirms it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping

from controller.device.link import DeviceLink, identify
from controller.modality.prescription import Prescription, PrescriptionRejected, apply_device_facts
from controller.modality.rules import DoseMeter, modality_for
from controller.profiles.model import IdentityError, Profile
from controller.records.store import RecordsError, RecordStore
from controller.session import backstops, checks, gc_policy
from controller.session.machine import ACTIVE_OUTPUT, SessionState, build_machine
from controller.session.mailbox import StopMailbox, StopRequest
from controller.session.report import SessionReport, Snapshot, TimelineEvent, plain
from controller.session.stopping import command_stop, confirm_stopped
from controller.session.timing import (
    CONFIRM_POLL_S,
    CONTROLLED_RAMP_DOWN_S,
    POLL_GUARD_S,
    POLL_HISTORY,
    guard_s,
    poll_guard_s,
)
from controller.session.variables import session_variables, stop_ramps
from controller.session.verdicts import Verdict
from protocols.engine import DeviceEvent
from protocols.errors import DeviceRefused, Interrupted, ProtocolError
from protocols.map_common import Scalar

log = logging.getLogger(__name__)

# The timing names tests and benchmarks know from here live in controller.session.timing.
__all__ = ["CONTROLLED_RAMP_DOWN_S", "POLL_GUARD_S", "IdentityGate", "LinkFactory", "Session",
           "UpdateHook", "poll_guard_s"]

Clock = Callable[[], float]
LinkFactory = Callable[[Profile, str], DeviceLink]
UpdateHook = Callable[[Snapshot], None]
# Called with the device's identity ({"model", "serial", "firmware"}) once it has
# identified; returns a reason to refuse the session (e.g. the calibration gate for the
# registered device that reports this identity), or None.
IdentityGate = Callable[[Mapping[str, str]], "str | None"]

# Prescriptions that have started an output in this process. An output is never
# restored: after any stop (lead off, e-stop, fault, restart) only a new operator
# request — a new prescription — can start one again.
_STARTED: set[str] = set()
_STARTED_LOCK = threading.Lock()


class _StopWith(Exception):
    """End the session with this verdict (raised where the output may be on)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


class _Reject(Exception):
    pass


class Session:
    """A session ready to run. `start()` runs it on a worker thread; `wait()` for the report."""

    def __init__(self, profile: Profile, prescription: Prescription, port: str, *,
                 store: RecordStore | None = None, operator: str = "", patient: str | None = None,
                 clock: Clock = time.monotonic, link_factory: LinkFactory = DeviceLink.open,
                 on_update: UpdateHook | None = None, clear_fault: bool = False,
                 profile_path: str = "", profile_sha256: str = "",
                 on_identified: IdentityGate | None = None) -> None:
        self.profile = profile
        self.profile_path, self.profile_sha256 = profile_path, profile_sha256
        self._on_identified = on_identified
        self.rx = prescription
        self.port = port
        self.store = store
        self.operator = operator
        self.patient = patient
        self.clock = clock
        self._link_factory = link_factory
        self._on_update = on_update
        self._clear_fault = clear_fault
        self._records_failed = ""
        self._sent_estop = False
        self._mailbox = StopMailbox()
        self._device_events: list[DeviceEvent] = []
        self.state = SessionState()
        self._machine = build_machine(self.state, after_state_change=self._state_changed)
        self.link: DeviceLink | None = None
        self.session_id = ""
        self.events: list[TimelineEvent] = []
        self.identity: dict[str, Scalar] = {}     # the identify operation's results
        self.device: dict[str, str] = {}         # model, serial, firmware as text
        self.meter: DoseMeter | None = None
        self.t0 = 0.0
        self.t_start: float | None = None       # when the start command was sent
        self.t_off: float | None = None         # best estimate of when the output stopped
        self.stop_confirmed: bool | None = None
        # The device's own count of output time, the highest it reported.
        self.device_elapsed_s: float | None = None
        self._timer_checked = False
        self.last_telemetry: dict[str, Scalar] = {}
        self._last_running: dict[str, Scalar] = {}   # last poll that showed the output on
        self._last_ok = 0.0
        # Durations of the latest polls, for the planned-end guard.
        self._poll_times: collections.deque[float] = collections.deque(maxlen=POLL_HISTORY)
        self._thread: threading.Thread | None = None
        self.report: SessionReport | None = None
        self.variables = session_variables(profile, prescription)

    # -- public API (any thread) ------------------------------------------------------
    def request_stop(self, source: str = "operator", emergency: bool = False,
                     reason: str = "") -> None:
        """Ask the worker to stop; safe from signal handlers and other threads. The stop
        overtakes routine work: it waits at most for the one exchange on the wire."""
        self._mailbox.post(StopRequest(source, emergency, reason or f"{source} stop"))

    def wake(self) -> None:
        """Wake the worker early (a periodic APScheduler job); wake-ups coalesce."""
        self._mailbox.wake()

    def start(self) -> Session:
        self._thread = threading.Thread(target=self.run, name=f"session {self.profile.id}",
                                        daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> SessionReport | None:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.report

    def time_remaining(self) -> float | None:
        if self.t_start is None or self.t_off is not None:
            return None
        return max(0.0, self._planned_end() - self.clock())

    # -- the worker ---------------------------------------------------------------------
    def run(self) -> SessionReport:
        self.t0 = self.clock()
        # Full garbage collections pause every thread: keep them off this planned end.
        gc_policy.POLICY.install()
        watch = gc_policy.POLICY.watch(self.time_remaining)
        if self.store is not None:
            self.store.add_failure_listener(self._records_failure)
        try:
            self._open_record()
            self._connect()
            self._identify()
            self._start_output()
            verdict, emergency = self._deliver()
            self._stop_output(verdict, emergency)
        except _Reject as exc:
            self._reject(str(exc))
        except _StopWith as exc:
            self._stop_output(exc.verdict, emergency=False)
        except Interrupted:
            # A stop was posted while the device was being identified or armed: the
            # output may not be on yet, but it is commanded off all the same.
            verdict, emergency = self._stop_verdict() or (Verdict(
                checks.FAULT, checks.BY_CONTROLLER, "interrupted without a stop request"),
                False)
            self._stop_output(verdict, emergency)
        except Exception as exc:
            log.debug("session failed", exc_info=True)
            what = "communication" if isinstance(exc, ProtocolError) else "internal error"
            self._fail(Verdict(checks.FAULT, checks.BY_CONTROLLER, f"{what}: {exc}"))
        finally:
            gc_policy.POLICY.forget(watch)
            if self.store is not None:
                self.store.remove_failure_listener(self._records_failure)
            if self.link is not None:
                self.link.close()
        return self._finish()

    def _open_record(self) -> None:
        if self.store is None:
            return
        try:
            self.session_id = self.store.open_session(
                profile=self.profile.id, port=self.port, identity={}, operator=self.operator,
                patient=self.patient, prescription=self.rx.record(),
                planned_s=self.rx.duration_s, profile_path=self.profile_path,
                profile_sha256=self.profile_sha256)
        except RecordsError as exc:
            # Nothing may run that cannot be recorded.
            raise _Reject(f"records unavailable: {exc}") from None

    def _connect(self) -> None:
        try:
            self.link = self._link_factory(self.profile, self.port)
        except ProtocolError as exc:
            raise _Reject(f"cannot open {self.port}: {exc}") from None
        self.link.set_event_handler(self._device_events.append)
        self.link.set_interrupt(self._interrupt_wanted)
        self.state.fire("connected")

    def _identify(self) -> None:
        assert self.link is not None
        try:
            found = identify(self.link, self.variables)
        except Interrupted:
            raise
        except ProtocolError as exc:
            # Identification only reads: nothing was written, so nothing may start.
            raise _Reject(f"device did not identify as a {self.profile.model}: {exc}") \
                from None
        except IdentityError as exc:
            raise _Reject(f"device identity unreadable: {exc}") from None
        self.identity, self.device = found.results, found.identity
        self._event("reply", {"op": "identify", "identity": plain(self.identity)})
        problem = found.latched_fault
        if problem and self._clear_fault and self.link.has("clear_fault") \
                and not found.telemetry.get("output_on"):
            # The operator asked for it, having checked the patient and the device.
            self.link.run("clear_fault", self.variables)
            self._event("command", {"op": "clear_fault", "was": problem})
            problem = checks.latched_fault(self.profile,
                                           self.link.telemetry(self.variables)) or ""
        if problem:
            hint = "" if self._clear_fault else \
                " (check the patient and the device, then run again with --clear-fault)"
            raise _Reject(f"device not ready: {problem}{hint}")
        self._record_identity()
        facts = found.facts
        try:
            self.rx = apply_device_facts(self.profile, self.rx, facts)
        except PrescriptionRejected as exc:
            raise _Reject("; ".join(exc.messages())) from None
        # The prescription as applied: limits re-checked with what the device reported.
        self._event("decision", {"prescription": self.rx.record()})
        self.meter = modality_for(self.profile).dose_meter(self.rx, facts, clock=self.clock)
        self.state.fire("identified")

    def _record_identity(self) -> None:
        """Keep who the device says it is (model, serial, firmware) on the session record,
        and let the caller refuse it (the calibration gate of the registered device that
        reports this identity, whatever port spelling reached it)."""
        if self.store is not None and self.session_id:
            try:
                self.store.set_session_identity(self.session_id,
                                                {**plain(self.identity), **self.device})
            except RecordsError as exc:
                raise _Reject(f"records unavailable: {exc}") from None
        if self._on_identified is not None:
            refusal = self._on_identified(self.device)
            if refusal:
                raise _Reject(refusal)

    def _start_output(self) -> None:
        assert self.link is not None
        if self.rx.pending:
            raise _Reject("limits not yet checkable: " + ", ".join(self.rx.pending))
        with _STARTED_LOCK:
            if self.rx.request_id in _STARTED:
                raise _Reject("this prescription already started an output; an output is "
                              "never restored without a new operator request")
            _STARTED.add(self.rx.request_id)
        self.link.run("configure", self.variables)
        self._event("command", {"op": "configure"})
        self.link.run("arm", self.variables)
        armed = self.link.read_back("arm", self.variables)
        self._event("command", {"op": "arm", "watchdog_s": self.variables["watchdog_s"],
                                "timer_s": self.variables["timer_s"],
                                "read_back": {k: {"written": rb.written, "read": rb.read}
                                              for k, rb in armed.items()}})
        problem = backstops.armed_problem(armed)
        if problem:
            raise _Reject(problem)
        if self._records_failed:
            raise _Reject(f"records failed: {self._records_failed}; nothing is started "
                          "that cannot be recorded")
        if self._mailbox.stop_wanted():
            raise Interrupted("stop requested before the output started")
        # From here the output may be on: every exit path stops it.
        self.t_start = self.clock()
        try:
            self.link.run("start", self.variables)
        except DeviceRefused as exc:
            raise _StopWith(self._why_refused(exc)) from None
        self._last_ok = self.clock()
        if self.meter is not None:
            self.meter.output_started(self.t_start)
        self.state.fire("output_started")
        self._event("command", {"op": "start", "planned_s": self.rx.duration_s})

    def _why_refused(self, exc: DeviceRefused) -> Verdict:
        """The device refused to start: its own reason (an event, a flag) if it gives one."""
        assert self.link is not None
        self.link.poll_events()
        verdict = self._event_verdict()
        if verdict is None:
            try:
                verdict = checks.device_interlock(self.profile,
                                                  self.link.telemetry(self.variables))
            except ProtocolError:
                verdict = None
        return verdict or Verdict(checks.FAULT, checks.BY_CONTROLLER,
                                  f"device refused to start: {exc}")

    def _deliver(self) -> tuple[Verdict, bool]:
        """Run until something ends the output; returns why, and whether to e-stop."""
        assert self.link is not None and self.t_start is not None
        period = self.profile.safety.poll_period_s
        next_poll = self.clock()
        ramp_s = float(self.variables.get("ramp_up_s", 0) or 0)
        if ramp_s <= 0:
            self.state.fire("ramp_complete")
        while True:
            now = self.clock()
            verdict = self._pending_verdict()
            if verdict is not None:
                return verdict
            end = self._planned_end()
            if now >= end:
                return Verdict(checks.COMPLETED, checks.BY_CONTROLLER,
                               "planned duration delivered"), False
            guard = self._guard_s()
            if now >= next_poll and end - now > guard:
                found = self._poll(now, ramp_s)
                if found is not None:
                    return found, False
                next_poll += period
                if next_poll <= now:
                    next_poll = now + period
            elif now - self._last_ok > self.profile.safety.stale_after_s:
                return Verdict(checks.FAULT, checks.BY_CONTROLLER,
                               f"stale telemetry: nothing valid for {now - self._last_ok:.2f} s"
                               ), False
            # Inside the guard no poll may start: sleep to the end rather than wake for a
            # poll that will not happen (which spun here until the end, holding the GIL).
            # The guard grows with the measured poll, so "now" may already be inside it.
            end, now = self._planned_end(), self.clock()
            last_start = end - self._guard_s()
            wake = next_poll if next_poll < last_start and now < last_start else end
            self._wait(wake - now)
            self.link.poll_events()

    def _guard_s(self) -> float:
        return guard_s(self.profile, self._poll_times)

    def _poll(self, now: float, ramp_s: float) -> Verdict | None:
        assert self.link is not None and self.meter is not None and self.t_start is not None
        began = self.clock()
        try:
            t = self.link.telemetry(self.variables)
        except Interrupted as exc:
            if exc.after is not None and not self._mailbox.stop_wanted():
                # The planned end cut short the retries of a failing link: say so.
                return Verdict(checks.FAULT, checks.BY_CONTROLLER,
                               f"communication: {exc.after} (retries cut short at the "
                               "planned end)")
            return None     # a stop or the planned end: the loop acts on it at once
        except ProtocolError as exc:
            return Verdict(checks.FAULT, checks.BY_CONTROLLER, f"communication: {exc}")
        at = self.clock()
        self._poll_times.append(at - began)
        self._last_ok = at
        self._seen(t)
        self.meter.add_sample(at, t)
        if self.store is not None and self.session_id:
            try:
                self.store.add_sample(self.session_id, plain(t), t_s=at - self.t0,
                                      delivered_s=self._delivered(at),
                                      dose=self.meter.figures())
            except RecordsError as exc:
                return Verdict(checks.FAULT, checks.BY_CONTROLLER, f"records failed: {exc}")
        verdict = self._judge(t, at)
        if verdict is not None and checks.output_running(self.profile, t) \
                and verdict.stop_source == checks.BY_CONTROLLER:
            # One telemetry read is several exchanges: a device that tripped between
            # them looks inconsistent. Read once more before blaming a mismatch.
            try:
                again = self.link.telemetry(self.variables)
            except Interrupted:
                return None
            except ProtocolError as exc:
                return Verdict(checks.FAULT, checks.BY_CONTROLLER, f"communication: {exc}")
            at = self.clock()
            self._seen(again)
            t = again
            verdict = self._judge(t, at)
        if verdict is not None:
            return verdict
        if not self._timer_checked:
            self._timer_checked = True
            problem = backstops.timer_problem(t, float(self.variables["timer_s"]),
                                              at - self.t_start)
            self._event("reply", {"op": "timer_check", "remaining_s": t.get("remaining_s"),
                                  "armed_s": self.variables["timer_s"],
                                  "confirmed": problem is None})
            if problem:
                return Verdict(checks.FAULT, checks.BY_CONTROLLER, problem)
        self._last_running = t
        self._follow_state(t, at, ramp_s)
        if self._on_update is not None:
            self._on_update(self.snapshot())
        return None

    def _seen(self, t: dict[str, Scalar]) -> None:
        """Telemetry read while the output may be on (or just after its stop)."""
        self.last_telemetry = t
        if self.t_start is not None:
            elapsed = backstops.device_elapsed(t)
            if elapsed is not None and (self.device_elapsed_s is None
                                        or elapsed > self.device_elapsed_s):
                self.device_elapsed_s = elapsed

    def _judge(self, t: Mapping[str, object], at: float) -> Verdict | None:
        """Output off unasked, an interlock on a measured value, or a mismatch."""
        assert self.meter is not None
        if not checks.output_running(self.profile, t):
            self.t_off = at
            return checks.explain_stop(self.profile, t)
        reason = self.meter.check(t)
        if reason is not None:
            return Verdict(checks.FAULT, checks.BY_INTERLOCK, reason)
        return checks.verify(self.profile, self.rx, t)

    def _follow_state(self, t: Mapping[str, object], at: float, ramp_s: float) -> None:
        assert self.t_start is not None
        state = self.state.state
        if state == "ramping" and (t.get("channel_state") == "running"
                                   or at - self.t_start >= ramp_s):
            self.state.fire("ramp_complete")
        elif state == "delivering" and t.get("state") == "holding":
            self.state.fire("contact_lost")
        elif state == "holding" and t.get("state") == "running":
            self.state.fire("contact_restored")

    def _event_verdict(self) -> Verdict | None:
        """The first pending device event that ends this session, if any."""
        while self._device_events:
            event = self._device_events.pop(0)
            self._event("reply", {"event": event.kind, **plain(event.fields)})
            channel = self.variables.get("channel")
            verdict = checks.event_verdict(self.profile, event,
                                           int(channel) if channel is not None else None)
            if verdict is not None:
                if self.t_off is None:
                    self.t_off = event.received_at
                return verdict
        return None

    def _pending_verdict(self) -> tuple[Verdict, bool] | None:
        verdict = self._event_verdict()
        if verdict is not None:
            return verdict, False
        return self._stop_verdict()

    def _stop_verdict(self) -> tuple[Verdict, bool] | None:
        """The posted stop request as a verdict, and whether it is an emergency."""
        req = self._mailbox.take()
        if req is None:
            return None
        if req.source == "fault":
            return Verdict(checks.FAULT, checks.BY_CONTROLLER, req.reason), False
        source = checks.BY_PATIENT if req.source == "patient" else checks.BY_OPERATOR
        return Verdict(checks.ABORTED, source, req.reason), req.emergency

    def _interrupt_wanted(self) -> bool:
        """Checked by the link before every exchange but the first of an operation: a
        posted stop or the planned end pre-empts the rest of a multi-exchange poll."""
        if self._mailbox.stop_wanted():
            return True
        return self.t_start is not None and self.t_off is None \
            and self.clock() >= self._planned_end()

    def _wait(self, timeout: float) -> None:
        """Wait for a posted stop, a wake-up or the timeout (a seam for clock-driven
        unit tests)."""
        self._mailbox.wait(timeout)

    # -- stopping -----------------------------------------------------------------------
    def _stop_output(self, verdict: Verdict, emergency: bool) -> None:
        """Command the output off, confirm it, and decide the outcome."""
        self.state.outcome, self.state.stop_source = verdict.outcome, verdict.stop_source
        self.state.reason = verdict.reason
        # Operator and patient stops ramp down; the planned end and faults stop at once.
        ramped = verdict.outcome == checks.ABORTED and not emergency
        t_cmd = self.clock()
        self._command_stop(emergency, immediate=not ramped)
        if self.state.state in ACTIVE_OUTPUT:
            self.state.fire("end_output")
        elif self.state.state in ("identifying", "arming"):
            self.state.fire("fail")
        if self.t_start is None:
            self.state.stop_source = ""
        elif self.t_off is None:
            self.t_off = t_cmd + (CONTROLLED_RAMP_DOWN_S if ramped and stop_ramps(self.profile)
                                  else 0.0)
        self._close_dose()
        self._event("decision", {"outcome": verdict.outcome, "stop_source": verdict.stop_source,
                                 "reason": verdict.reason, "emergency": emergency})
        self.stop_confirmed = self._confirm_stopped()
        self._device_cause_outranks(verdict)
        if not self.stop_confirmed:
            # Doubt is a fault: a session whose stop is unconfirmed never reads "completed".
            self.state.outcome = checks.FAULT
            self.state.reason += "; stop not confirmed by device"
            if self.t_start is not None and self.state.stop_source in (checks.BY_CONTROLLER, ""):
                # We could not reach the device: its own watchdog is what stops it.
                self.state.stop_source = checks.BY_DEVICE_WATCHDOG
            self._event("fault", {"reason": "stop not confirmed by device"})
        self.state.fire("stop_done")

    def _device_cause_outranks(self, verdict: Verdict) -> None:
        """A device that stopped on its own (interlock, lead off, patient stop) while we
        were stopping it has the last word: the cause is recorded, not lost."""
        if self.link is None:
            return
        with contextlib.suppress(ProtocolError):
            self.link.poll_events()
        cause = self._event_verdict()
        if cause is None and self.last_telemetry and not self._sent_estop:
            # After our own e-stop a latched e-stop flag is ours, not the device's cause.
            cause = checks.device_interlock(self.profile, self.last_telemetry)
        if cause is None or verdict.outcome == checks.FAULT or \
                (cause.outcome, cause.stop_source) == (verdict.outcome, verdict.stop_source):
            return
        self.state.outcome, self.state.stop_source = cause.outcome, cause.stop_source
        self.state.reason = f"{cause.reason} (while stopping: {verdict.reason})"
        self._event("decision", {"outcome": cause.outcome, "stop_source": cause.stop_source,
                                 "reason": self.state.reason})

    def _close_dose(self) -> None:
        """Account the dose up to the stop: the last running state held until then.

        Polls stop a guard time before the planned end, so without this the dose
        figures would miss the final fraction of a poll period.
        """
        if self.meter is not None and self.t_off is not None and self._last_running:
            self.meter.add_sample(self.t_off, self._last_running)

    def _command_stop(self, emergency: bool, immediate: bool) -> None:
        """Send the stop first, record it after (controller.session.stopping)."""
        if self.link is None:
            return
        sent = command_stop(self.link, self.variables, emergency=emergency,
                            immediate=immediate)
        # After our own e-stop a latched e-stop flag is ours, not the device's cause.
        self._sent_estop = sent.estop
        if sent.op is not None:
            self._event("command", {"op": sent.op, "ramp_down_s": sent.ramp_down_s})
        else:
            self._event("fault", {"reason": "stop command failed", "errors": sent.errors})

    def _confirm_stopped(self) -> bool:
        if self.link is None:
            return False
        confirmed = confirm_stopped(
            self.link, self.variables, timeout_s=self.profile.safety.stop_confirm_timeout_s,
            clock=self.clock, pause=self._pause, poll_s=CONFIRM_POLL_S, seen=self._seen)
        if confirmed:
            self._event("reply", {"op": "confirm_stop", "output_on": False})
        return confirmed

    def _pause(self, seconds: float) -> None:
        """Sleep on the worker (a seam: clock-driven unit tests advance a fake clock)."""
        time.sleep(seconds)

    def _fail(self, verdict: Verdict) -> None:
        """A failure anywhere: if an output may be on, stop it; record why."""
        st = self.state.state
        try:
            if st in ("completed", "aborted", "fault", "rejected"):
                return
            if st == "connecting":
                self.state.outcome, self.state.reason = verdict.outcome, verdict.reason
                self.state.fire("fail")
            elif st == "stopping":
                self.state.outcome = checks.FAULT
                self.state.reason += f"; then {verdict.reason}"
                self.stop_confirmed = False
                self.state.fire("stop_done")
            else:
                self._stop_output(verdict, emergency=False)
        except Exception:
            log.exception("session failure handling failed; sending emergency stop")
            self.state.outcome = checks.FAULT
            self.state.reason = f"{verdict.reason}; internal error while stopping"
            self.stop_confirmed = False
            if self.link is not None:
                try:
                    self.link.set_interrupt(None)
                    self.link.run("emergency_stop", self.variables)
                except Exception:
                    log.exception("emergency stop failed")

    def _reject(self, reason: str) -> None:
        self.state.outcome, self.state.reason, self.state.stop_source = \
            checks.REJECTED, reason, ""
        self._event("decision", {"outcome": "rejected", "reason": reason})
        self.state.fire("reject")

    # -- bookkeeping ----------------------------------------------------------------------
    def _planned_end(self) -> float:
        assert self.t_start is not None
        if self.meter is None:
            return self.t_start + self.rx.duration_s
        return self.meter.planned_end(self.t_start, self.rx.duration_s, self.clock())

    def _delivered(self, now: float) -> float:
        if self.t_start is None:
            return 0.0
        end = self.t_off if self.t_off is not None else now
        if self.meter is None:
            return max(0.0, end - self.t_start)
        return self.meter.delivered_s(self.t_start, end)

    def snapshot(self) -> Snapshot:
        now = self.clock()
        return Snapshot(state=str(self.state.state), remaining_s=self.time_remaining(),
                        delivered_s=self._delivered(now), telemetry=dict(self.last_telemetry),
                        dose=self.meter.figures() if self.meter else {})

    def _records_failure(self, exc: RecordsError) -> None:
        """Any records write failed, in any thread (the periodic flush included): nothing
        may run that cannot be recorded. Before the output, nothing starts; once it
        may be on, the session ends as a records fault (non-latching stop, exit 5)."""
        self._records_failed = str(exc)
        if self.t_start is not None:
            self._mailbox.post(StopRequest("fault", False, f"records failed: {exc}"))

    def _state_changed(self) -> None:
        self._event("state", {"state": self.state.state})

    def _event(self, kind: str, detail: Mapping[str, object]) -> None:
        t = self.clock() - self.t0
        record = plain(detail)      # one JSON-safe copy for the timeline and the records
        self.events.append(TimelineEvent(round(t, 4), kind, record))
        if self.store is not None and self.session_id:
            try:
                self.store.add_event(self.session_id, kind, record, t_s=t,
                                     delivered_s=self._delivered(self.clock()),
                                     dose=self.meter.figures() if self.meter else None)
            except RecordsError as exc:
                # Never let a records failure keep an output running: fault the session;
                # before output, nothing starts (see _start_output).
                log.error("records: %s", exc)
                self._records_failure(exc)

    def _finish(self) -> SessionReport:
        # Plain text in reports and records (the enums are str, but print as enums).
        outcome = str(self.state.outcome or checks.FAULT)
        host = self._delivered(self.clock())
        # How old the device's last count may be: a poll period and the guard, which is
        # capped below stale_after_s (a poll frozen with the controller must not widen it).
        slack = self.profile.safety.poll_period_s + self._guard_s()
        delivered, note = backstops.reconcile(host, self.device_elapsed_s, slack)
        if note:
            self._event("decision", {"delivered_s": delivered, "host_delivered_s": host,
                                     "device_elapsed_s": self.device_elapsed_s,
                                     "reason": note})
        dose = self.meter.figures() if self.meter is not None else {}
        report = SessionReport(
            session_id=self.session_id, outcome=outcome, reason=self.state.reason,
            profile=self.profile.id,
            device={"port": self.port, **plain(self.identity), **self.device},
            prescription=self.rx.record(), planned_s=self.rx.duration_s,
            delivered_s=round(delivered, 3), stop_source=str(self.state.stop_source), dose=dose,
            events=self.events, stop_confirmed=self.stop_confirmed,
            output_started=self.t_start is not None, device_elapsed_s=self.device_elapsed_s,
            host_delivered_s=round(host, 3) if note else None,
            profile_file={"id": self.profile.id, "path": self.profile_path,
                          "sha256": self.profile_sha256})
        if self.store is not None and self.session_id:
            try:
                self.store.close_session(self.session_id, outcome, self.state.reason,
                                         self.state.stop_source or None, delivered, dose,
                                         device_elapsed_s=self.device_elapsed_s)
            except RecordsError as exc:
                report.reason += f"; records: {exc}"
        self.report = report
        return report
