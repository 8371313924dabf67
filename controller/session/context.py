"""What the phases of one session share: the link, the profile, the prescription, the
variables, the clock, the record, the stop requests and the timeline.

The worker (controller.session.worker) builds one context and hands it to each phase in
turn: arming (controller.session.arming), delivery (controller.session.delivery) and
stopping (controller.session.stopping). Only the worker thread touches it, except the
`mailbox`, which other threads post stops to. The helpers here are the bookkeeping every
phase needs: the timeline and its record, the planned end, the pending stop causes.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping

from controller.device.link import DeviceLink
from controller.modality.prescription import Prescription
from controller.modality.rules import DoseMeter
from controller.profiles.model import Profile
from controller.records.store import RecordsError, RecordStore
from controller.session import backstops, checks
from controller.session.machine import SessionState, build_machine
from controller.session.mailbox import StopMailbox, StopRequest
from controller.session.report import Snapshot, TimelineEvent, plain
from controller.session.timing import POLL_HISTORY, guard_s
from controller.session.variables import CHANNEL, SessionVariables, session_variables
from controller.session.verdicts import Verdict
from protocols.engine import DeviceEvent
from protocols.map_common import Scalar

log = logging.getLogger(__name__)

Clock = Callable[[], float]
UpdateHook = Callable[[Snapshot], None]
# Wait for a posted stop, a wake-up or the timeout; pause (sleep) on the worker. Seams:
# clock-driven unit tests advance a fake clock instead.
Wait = Callable[[float], None]


class Reject(Exception):
    """Refuse the session: no output was started (raised before the start command)."""


class StopWith(Exception):
    """End the session with this verdict (raised where the output may be on)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


class SessionContext:
    """One session's shared state; owned by its worker thread."""

    def __init__(self, profile: Profile, prescription: Prescription, port: str, *,
                 store: RecordStore | None, operator: str, patient: str | None, clock: Clock,
                 on_update: UpdateHook | None, wait: Wait, pause: Wait,
                 profile_path: str, profile_sha256: str) -> None:
        self.profile = profile
        self.rx = prescription
        self.port = port
        self.store = store
        self.operator, self.patient = operator, patient
        self.clock = clock
        self.on_update = on_update
        self.wait, self.pause = wait, pause
        self.profile_path, self.profile_sha256 = profile_path, profile_sha256
        self.variables: SessionVariables = session_variables(profile, prescription)
        self.mailbox = StopMailbox()
        self.state = SessionState()
        self.machine = build_machine(self.state, after_state_change=self._state_changed)
        self.link: DeviceLink | None = None
        self.device_events: list[DeviceEvent] = []
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
        self.timer_checked = False
        self.last_telemetry: dict[str, Scalar] = {}
        self.last_running: dict[str, Scalar] = {}   # last poll that showed the output on
        self.last_ok = 0.0
        # Durations of the latest polls, for the planned-end guard.
        self.poll_times: collections.deque[float] = collections.deque(maxlen=POLL_HISTORY)
        self.records_failed = ""
        # After our own e-stop a latched e-stop flag is ours, not the device's cause.
        self.sent_estop = False

    def require_link(self) -> DeviceLink:
        """The open link (a phase that talks to the device runs after `connect`)."""
        assert self.link is not None, "no device link: the session is not connected"
        return self.link

    # -- time ---------------------------------------------------------------------------
    def planned_end(self) -> float:
        assert self.t_start is not None
        if self.meter is None:
            return self.t_start + self.rx.duration_s
        return self.meter.planned_end(self.t_start, self.rx.duration_s, self.clock())

    def guard_s(self) -> float:
        return guard_s(self.profile, self.poll_times)

    def time_remaining(self) -> float | None:
        if self.t_start is None or self.t_off is not None:
            return None
        return max(0.0, self.planned_end() - self.clock())

    def delivered(self, now: float) -> float:
        if self.t_start is None:
            return 0.0
        end = self.t_off if self.t_off is not None else now
        if self.meter is None:
            return max(0.0, end - self.t_start)
        return self.meter.delivered_s(self.t_start, end)

    def snapshot(self) -> Snapshot:
        now = self.clock()
        return Snapshot(state=str(self.state.state), remaining_s=self.time_remaining(),
                        delivered_s=self.delivered(now), telemetry=dict(self.last_telemetry),
                        dose=self.meter.figures() if self.meter else {})

    # -- what the device said -----------------------------------------------------------
    def seen(self, t: dict[str, Scalar]) -> None:
        """Telemetry read while the output may be on (or just after its stop)."""
        self.last_telemetry = t
        if self.t_start is not None:
            elapsed = backstops.device_elapsed(t)
            if elapsed is not None and (self.device_elapsed_s is None
                                        or elapsed > self.device_elapsed_s):
                self.device_elapsed_s = elapsed

    def event_verdict(self) -> Verdict | None:
        """The first pending device event that ends this session, if any."""
        while self.device_events:
            event = self.device_events.pop(0)
            self.event("reply", {"event": event.kind, **plain(event.fields)})
            channel = self.variables.get(CHANNEL)
            verdict = checks.event_verdict(self.profile, event,
                                           int(channel) if channel is not None else None)
            if verdict is not None:
                if self.t_off is None:
                    self.t_off = event.received_at
                return verdict
        return None

    # -- stop requests ------------------------------------------------------------------
    def stop_verdict(self) -> tuple[Verdict, bool] | None:
        """The posted stop request as a verdict, and whether it is an emergency."""
        req = self.mailbox.take()
        if req is None:
            return None
        if req.source == "fault":
            return Verdict(checks.FAULT, checks.BY_CONTROLLER, req.reason), False
        source = checks.BY_PATIENT if req.source == "patient" else checks.BY_OPERATOR
        return Verdict(checks.ABORTED, source, req.reason), req.emergency

    def pending_verdict(self) -> tuple[Verdict, bool] | None:
        """A device event that ends the session, else a posted stop, else None."""
        verdict = self.event_verdict()
        if verdict is not None:
            return verdict, False
        return self.stop_verdict()

    def interrupt_wanted(self) -> bool:
        """Checked by the link before every exchange but the first of an operation: a
        posted stop or the planned end pre-empts the rest of a multi-exchange poll."""
        if self.mailbox.stop_wanted():
            return True
        return self.t_start is not None and self.t_off is None \
            and self.clock() >= self.planned_end()

    def records_failure(self, exc: RecordsError) -> None:
        """Any records write failed, in any thread (the periodic flush included): nothing
        may run that cannot be recorded. Before the output, nothing starts; once it
        may be on, the session ends as a records fault (non-latching stop, exit 5)."""
        self.records_failed = str(exc)
        if self.t_start is not None:
            self.mailbox.post(StopRequest("fault", False, f"records failed: {exc}"))

    # -- the timeline -------------------------------------------------------------------
    def event(self, kind: str, detail: Mapping[str, object]) -> None:
        """One timeline event, kept in the report and written to the record."""
        t = self.clock() - self.t0
        record = plain(detail)      # one JSON-safe copy for the timeline and the records
        self.events.append(TimelineEvent(round(t, 4), kind, record))
        if self.store is not None and self.session_id:
            try:
                self.store.add_event(self.session_id, kind, record, t_s=t,
                                     delivered_s=self.delivered(self.clock()),
                                     dose=self.meter.figures() if self.meter else None)
            except RecordsError as exc:
                # Never let a records failure keep an output running: fault the session;
                # before output, nothing starts (see arming.start_output).
                log.error("records: %s", exc)
                self.records_failure(exc)

    def _state_changed(self) -> None:
        self.event("state", {"state": self.state.state})
