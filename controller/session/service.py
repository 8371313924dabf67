"""The one way a session starts, whatever asked for it: `session run`, a plan step, a booking,
and (next) the clinic service's HTTP API.

The caller has checked roles and built the prescription (both need the operator and the
request in hand). From there every route shares the same sequence, on one injected clock:
sessions left open by a crash are marked interrupted; the calibration gate looks the device
up by name or by the port's real path; the patient's minimum interval per modality is
checked against the records; then the session runs with the identity gate (the calibration
gate again, by the model and serial number the device reports), the profile file's path and
hash for the record, and the housekeeping jobs (coalesced wake-ups, telemetry flushing that
turns a write failure into a records fault). Nothing here prints: refusals are returned as
sentences and notes as rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.calibration.gate import check_calibration, identity_gate
from controller.clinic import clock as clinic_time
from controller.clinic.patients import interval_conflict
from controller.device.link import DeviceLink
from controller.modality.prescription import Prescription
from controller.profiles.loader import profile_file
from controller.profiles.model import Profile
from controller.records.store import RecordStore, SessionRow
from controller.session.report import SessionReport
from controller.session.scheduling import every, make_scheduler
from controller.session.worker import LinkFactory, Session, UpdateHook

Now = Callable[[], datetime]
StepRunner = Callable[[Profile, Prescription, str, str, "str | None"], SessionReport]
"""Runs one session to its end: (profile, prescription, port, operator, patient)."""
# Buffered telemetry is written at least this often (a crash loses at most this much).
FLUSH_PERIOD_S = 1.0


@dataclass(frozen=True)
class ClinicRules:
    """What the clinic's roles file says about starting sessions."""

    require_registered: bool = False
    min_interval_s: float = 0.0


class SessionStarter:
    """Checks and starts sessions against one records store (or none: a bare demo)."""

    def __init__(self, store: RecordStore | None, rules: ClinicRules = ClinicRules(), *,
                 now: Now | None = None,
                 link_factory: LinkFactory = DeviceLink.open) -> None:
        self.store = store
        self.rules = rules
        # The clinic's clock for every date decision of a start (calibration due, minimum
        # interval); never for anything that stops an output (that is monotonic).
        self.now: Now = now or (lambda: clinic_time.now())
        self.link_factory = link_factory

    def mark_interrupted(self) -> list[SessionRow]:
        """Sessions a crash left open, now marked interrupted; nothing is ever resumed."""
        return [] if self.store is None else self.store.mark_interrupted_sessions()

    def refusal(self, profile: Profile, rx: Prescription, port: str,
                patient: str | None) -> str | None:
        """Why this session may not start, as far as can be told before the device is
        reached (the identity gate checks again once it has identified); or None."""
        if self.store is None:
            return None
        now = self.now()
        reason = check_calibration(self.store, profile, port, now,
                                   require_registered=self.rules.require_registered)
        if reason is None and patient is not None:
            reason = interval_conflict(self.store, patient, profile.modality, now,
                                       now + timedelta(seconds=rx.duration_s),
                                       self.rules.min_interval_s)
        return reason

    def session(self, profile: Profile, rx: Prescription, port: str, *, operator: str,
                patient: str | None, clear_fault: bool = False,
                on_update: UpdateHook | None = None) -> Session:
        """A session ready to start, with the identity gate and the profile's provenance."""
        gate = None
        if self.store is not None:
            gate = identity_gate(self.store, profile, port, self.now(),
                                 require_registered=self.rules.require_registered)
        path, sha256 = profile_file(profile)
        return Session(profile, rx, port, store=self.store, operator=operator,
                       patient=patient, clear_fault=clear_fault, on_identified=gate,
                       profile_path=path, profile_sha256=sha256,
                       link_factory=self.link_factory, on_update=on_update)

    def run(self, profile: Profile, rx: Prescription, port: str, operator: str,
            patient: str | None) -> SessionReport:
        """Run one session to its end, blocking, with no signal handling or display (a
        plan step from a caller that handles neither; the CLI passes its own runner)."""
        session = self.session(profile, rx, port, operator=operator, patient=patient)
        with self.running(session):
            report = session.wait()
        assert report is not None
        return report

    @contextmanager
    def running(self, session: Session) -> Iterator[Session]:
        """Start `session` on its worker with its housekeeping jobs; the jobs end on exit.

        Wake-ups coalesce (they only let the worker re-check its deadlines early); the
        flush job never raises: a failed write keeps its telemetry and reaches the session
        as a records fault through the store's failure listeners."""
        scheduler = make_scheduler()
        every(scheduler, session.profile.safety.poll_period_s, session.wake,
              "session wake-up")
        if self.store is not None:
            every(scheduler, FLUSH_PERIOD_S, self.store.flush_quietly, "records flush")
        scheduler.start()
        try:
            yield session.start()
        finally:
            scheduler.shutdown(wait=False)
