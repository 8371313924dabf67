"""One timed session on one device: the worker that owns the link and the machine.

Everything that touches the device happens on the worker thread. Other threads
(signal handlers, the display, a plan runner) only call `request_stop`, which
posts to the worker's mailbox. The planned end and every timeout are on the
injected monotonic clock; a wall-clock change cannot move them. Every path out
of an output — planned end, operator, patient, interlock, fault, a bug — goes
through `stopping.stop_output`, which commands the output off and confirms it.

This module is the orchestration: the phases share one `SessionContext`
(controller.session.context) and live in `arming` (record, connect, identify, arm,
start), `delivery` (the poll loop) and `stopping` (stop, fail, reject).
"""

from __future__ import annotations

import logging
import threading
import time

from controller.device.link import DeviceLink
from controller.modality.prescription import Prescription
from controller.modality.rules import DoseMeter
from controller.profiles.model import Profile
from controller.records.store import RecordsError, RecordStore
from controller.session import arming, backstops, checks, delivery, gc_policy, stopping
from controller.session.arming import IdentityGate, LinkFactory
from controller.session.context import Clock, Reject, SessionContext, StopWith, UpdateHook
from controller.session.machine import SessionState
from controller.session.mailbox import StopRequest
from controller.session.report import SessionReport, Snapshot, TimelineEvent, plain
from controller.session.timing import CONTROLLED_RAMP_DOWN_S, POLL_GUARD_S, poll_guard_s
from controller.session.variables import SessionVariables
from controller.session.verdicts import Verdict
from protocols.errors import Interrupted, ProtocolError
from protocols.map_common import Scalar

log = logging.getLogger(__name__)

# The timing names tests and benchmarks know from here live in controller.session.timing.
__all__ = ["CONTROLLED_RAMP_DOWN_S", "POLL_GUARD_S", "IdentityGate", "LinkFactory", "Session",
           "UpdateHook", "poll_guard_s"]


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
        self.port = port
        self.store = store
        self.operator = operator
        self.patient = patient
        self.clock = clock
        self._link_factory = link_factory
        self._on_identified = on_identified
        self._clear_fault = clear_fault
        self.ctx = SessionContext(
            profile, prescription, port, store=store, operator=operator, patient=patient,
            clock=clock, on_update=on_update, profile_path=profile_path,
            profile_sha256=profile_sha256,
            # Late-bound, so that a subclass's (a test's) waits are the ones taken.
            wait=lambda seconds: self._wait(seconds), pause=lambda s: self._pause(s))
        self.state: SessionState = self.ctx.state
        self.variables: SessionVariables = self.ctx.variables
        self.events: list[TimelineEvent] = self.ctx.events
        self._thread: threading.Thread | None = None
        self.report: SessionReport | None = None

    # -- what the phases found (read-only views of the context) -------------------------
    @property
    def rx(self) -> Prescription:
        """The prescription, as applied with the device's facts once identified."""
        return self.ctx.rx

    @property
    def link(self) -> DeviceLink | None:
        return self.ctx.link

    @property
    def session_id(self) -> str:
        return self.ctx.session_id

    @property
    def identity(self) -> dict[str, Scalar]:
        """The identify operation's results."""
        return self.ctx.identity

    @property
    def device(self) -> dict[str, str]:
        """Model, serial, firmware as text."""
        return self.ctx.device

    @property
    def meter(self) -> DoseMeter | None:
        return self.ctx.meter

    @property
    def t0(self) -> float:
        return self.ctx.t0

    @property
    def t_start(self) -> float | None:
        """When the start command was sent (None: no output was started)."""
        return self.ctx.t_start

    @property
    def t_off(self) -> float | None:
        """Best estimate of when the output stopped."""
        return self.ctx.t_off

    @property
    def stop_confirmed(self) -> bool | None:
        return self.ctx.stop_confirmed

    @property
    def device_elapsed_s(self) -> float | None:
        """The device's own count of output time, the highest it reported."""
        return self.ctx.device_elapsed_s

    @property
    def last_telemetry(self) -> dict[str, Scalar]:
        return self.ctx.last_telemetry

    # -- public API (any thread) ------------------------------------------------------
    def request_stop(self, source: str = "operator", emergency: bool = False,
                     reason: str = "") -> None:
        """Ask the worker to stop; safe from signal handlers and other threads. The stop
        overtakes routine work: it waits at most for the one exchange on the wire."""
        self.ctx.mailbox.post(StopRequest(source, emergency, reason or f"{source} stop"))

    def wake(self) -> None:
        """Wake the worker early (a periodic APScheduler job); wake-ups coalesce."""
        self.ctx.mailbox.wake()

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
        return self.ctx.time_remaining()

    def snapshot(self) -> Snapshot:
        return self.ctx.snapshot()

    # -- the worker ---------------------------------------------------------------------
    def run(self) -> SessionReport:
        ctx = self.ctx
        ctx.t0 = self.clock()
        # Full garbage collections pause every thread: keep them off this planned end.
        gc_policy.POLICY.install()
        watch = gc_policy.POLICY.watch(self.time_remaining)
        if self.store is not None:
            self.store.add_failure_listener(ctx.records_failure)
        try:
            arming.open_record(ctx)
            arming.connect(ctx, self._link_factory)
            arming.identify_device(ctx, clear_fault=self._clear_fault, gate=self._on_identified)
            arming.start_output(ctx)
            verdict, emergency = delivery.deliver(ctx)
            stopping.stop_output(ctx, verdict, emergency)
        except Reject as exc:
            stopping.reject(ctx, str(exc))
        except StopWith as exc:
            stopping.stop_output(ctx, exc.verdict, emergency=False)
        except Interrupted:
            # A stop was posted while the device was being identified or armed: the
            # output may not be on yet, but it is commanded off all the same.
            verdict, emergency = ctx.stop_verdict() or (Verdict(
                checks.FAULT, checks.BY_CONTROLLER, "interrupted without a stop request"),
                False)
            stopping.stop_output(ctx, verdict, emergency)
        except Exception as exc:
            log.debug("session failed", exc_info=True)
            what = "communication" if isinstance(exc, ProtocolError) else "internal error"
            stopping.fail(ctx, Verdict(checks.FAULT, checks.BY_CONTROLLER, f"{what}: {exc}"))
        finally:
            gc_policy.POLICY.forget(watch)
            if self.store is not None:
                self.store.remove_failure_listener(ctx.records_failure)
            if ctx.link is not None:
                ctx.link.close()
        return self._finish()

    def _wait(self, timeout: float) -> None:
        """Wait for a posted stop, a wake-up or the timeout (a seam for clock-driven
        unit tests)."""
        self.ctx.mailbox.wait(timeout)

    def _pause(self, seconds: float) -> None:
        """Sleep on the worker (a seam: clock-driven unit tests advance a fake clock)."""
        time.sleep(seconds)

    def _guard_s(self) -> float:
        """The planned-end guard now (controller.session.timing.guard_s)."""
        return self.ctx.guard_s()

    def _finish(self) -> SessionReport:
        """The report, with the device's count of output time reconciled; the record closed."""
        ctx, state = self.ctx, self.ctx.state
        # Plain text in reports and records (the enums are str, but print as enums).
        outcome = str(state.outcome or checks.FAULT)
        host = ctx.delivered(self.clock())
        # How old the device's last count may be: a poll period and the guard, which is
        # capped below stale_after_s (a poll frozen with the controller must not widen it).
        slack = self.profile.safety.poll_period_s + ctx.guard_s()
        delivered, note = backstops.reconcile(host, ctx.device_elapsed_s, slack)
        if note:
            ctx.event("decision", {"delivered_s": delivered, "host_delivered_s": host,
                                   "device_elapsed_s": ctx.device_elapsed_s, "reason": note})
        dose = ctx.meter.figures() if ctx.meter is not None else {}
        report = SessionReport(
            session_id=ctx.session_id, outcome=outcome, reason=state.reason,
            profile=self.profile.id,
            device={"port": self.port, **plain(ctx.identity), **ctx.device},
            prescription=ctx.rx.record(), planned_s=ctx.rx.duration_s,
            delivered_s=round(delivered, 3), stop_source=str(state.stop_source), dose=dose,
            events=ctx.events, stop_confirmed=ctx.stop_confirmed,
            output_started=ctx.t_start is not None, device_elapsed_s=ctx.device_elapsed_s,
            host_delivered_s=round(host, 3) if note else None,
            profile_file={"id": self.profile.id, "path": self.profile_path,
                          "sha256": self.profile_sha256})
        if self.store is not None and ctx.session_id:
            try:
                self.store.close_session(ctx.session_id, outcome, state.reason,
                                         state.stop_source or None, delivered, dose,
                                         device_elapsed_s=ctx.device_elapsed_s)
            except RecordsError as exc:
                report.reason += f"; records: {exc}"
        self.report = report
        return report
