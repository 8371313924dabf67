"""Sessions the clinic service runs: started through the session-start service, one worker
each, on the device slots it holds.

A request to start goes through the same checks as `modctl session run` (the prescription's
limits and ceilings, the calibration gate, the patient's minimum interval, then on the
device the identity gate and the latched-fault check) and the same `Session` worker; only
the caller differs: the operator is the authenticated account, and the session's link is
the slot's held link. Stops are posted to the worker's mailbox (they overtake routine work)
from the request thread and never wait on a client.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from controller.modality.prescription import Prescription
from controller.records.store import RecordStore
from controller.service.devices import DeviceSlot
from controller.session.machine import ACTIVE_OUTPUT
from controller.session.report import SessionReport, Snapshot, plain
from controller.session.service import ClinicRules, SessionStarter
from controller.session.worker import Session

log = logging.getLogger(__name__)

# How long a start request waits for the device to be free of the watch's look (one
# identification) before answering "busy".
SLOT_WAIT_S = 5.0
# How long a start request waits to know whether the output started: identification and
# arming take 50-500 ms on the shipped models, a few seconds on a device answering at the
# slow end of its manual. Past this the answer is 201 with the state it has reached.
START_WAIT_S = 10.0
# How long a stop request waits for the stop to be confirmed at the device before it
# answers 202 (still stopping) instead of the final report.
STOP_WAIT_S = 5.0
# Final reports kept in memory for `GET /api/sessions/{id}` (older ones come from the
# records, which hold the same facts). Few: every object kept lengthens the full garbage
# collections that pause every thread, stops included.
RECENT_REPORTS = 50
# The states a screen shows for a device while its session is on (the worker's states
# folded into the words of the API).
DEVICE_STATE = {"connecting": "arming", "identifying": "arming", "arming": "arming",
                "ramping": "delivering", "delivering": "delivering", "holding": "holding",
                "stopping": "stopping"}

# A device held by a running plan between its steps.
RESERVED = "reserved"

Publish = Callable[[str, dict[str, object]], None]
Now = Callable[[], datetime]


class StartRefused(Exception):
    """The session may not start; `status` is the HTTP status that says why (409)."""

    def __init__(self, status: int, message: str, report: SessionReport | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.report = report
        """The session's report when it was refused at the device (it is on the record)."""


@dataclass(eq=False)
class Run:
    """One session the service started."""

    session: Session
    slot: DeviceSlot
    operator: str
    patient: str | None
    reservation: object | None = None
    """The plan run that holds the device between its steps, or None."""
    started_at: float = field(default_factory=time.time)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def id(self) -> str:
        return self.session.session_id

    def summary(self) -> dict[str, object]:
        """What `GET /api/devices` and `GET /api/sessions/{id}` show while it runs."""
        snap: Snapshot = self.session.snapshot()
        rx = self.session.rx
        return {"id": self.id, "device": self.slot.name, "patient": self.patient,
                "operator": self.operator, "profile": self.session.profile.id,
                "modality": self.session.profile.modality, "settings": plain(rx.values),
                "state": snap["state"], "planned_s": rx.duration_s,
                "elapsed_s": round(snap["delivered_s"], 3), "remaining_s": snap["remaining_s"],
                "telemetry": plain(snap["telemetry"]), "dose": snap["dose"], "final": False}


class Runs:
    """Every session of the service: start, look up, stop, stop all."""

    def __init__(self, store: RecordStore, rules: ClinicRules, publish: Publish, *,
                 now: Now | None = None) -> None:
        self.store = store
        self.rules = rules
        self._publish = publish
        self._now = now
        self._lock = threading.Lock()
        self._active: list[Run] = []
        self._reports: collections.OrderedDict[str, SessionReport] = collections.OrderedDict()
        self.accepting = True

    def starter(self, slot: DeviceSlot | None = None) -> SessionStarter:
        if slot is None:
            return SessionStarter(self.store, self.rules, now=self._now)
        return SessionStarter(self.store, self.rules, now=self._now, link_factory=slot.borrow)

    # -- start ------------------------------------------------------------------------------
    def start(self, slot: DeviceSlot, rx: Prescription, *, operator: str,
              patient: str | None, clear_fault: bool = False,
              reservation: object | None = None) -> Run:
        """Start a session on `slot`; StartRefused (409) when it may not start. A plan run
        passes its `reservation` of the device (only it may start sessions there)."""
        if not self.accepting:
            raise StartRefused(409, "the service is shutting down; no session starts")
        profile = slot.profile
        if profile is None:
            raise StartRefused(409, f"device '{slot.name}': {slot.load_problem}")
        if not slot.lock.acquire(timeout=SLOT_WAIT_S):
            raise StartRefused(409, f"device '{slot.name}' is busy")
        try:
            if slot.busy_with is not None and slot.busy_with is not reservation:
                raise StartRefused(409, f"device '{slot.name}' is busy with another session"
                                        if isinstance(slot.busy_with, Run) else
                                        f"device '{slot.name}' is reserved by a running plan")
            if slot.released_by:
                raise StartRefused(409, f"device '{slot.name}' is released to a technician "
                                        f"({slot.released_by}); a technician must hold it "
                                        "again (POST /api/devices/NAME/hold)")
            slot.look_now(profile)
            if not slot.watch.present:
                raise StartRefused(409, f"device '{slot.name}' is {slot.watch.problem}")
            if slot.watch.problem and not clear_fault:
                raise StartRefused(409, f"device '{slot.name}': {slot.watch.problem}")
            starter = self.starter(slot)
            refusal = starter.refusal(profile, rx, slot.row.port, patient)
            if refusal is not None:
                raise StartRefused(409, refusal)
            session = starter.session(profile, rx, slot.row.port, operator=operator,
                                      patient=patient, clear_fault=clear_fault,
                                      on_update=lambda snap: self._update(slot, snap))
            run = Run(session, slot, operator, patient, reservation)
            slot.busy_with = run
            with self._lock:
                self._active.append(run)
        finally:
            slot.lock.release()
        self._device_changed(slot)
        threading.Thread(target=self._run, args=(run, starter), daemon=True,
                         name=f"run {slot.name}").start()
        return self._started(run)

    def _started(self, run: Run) -> Run:
        """Wait until the output is on, or the session has ended before it (a refusal at the
        device: StartRefused with the session id, for the record)."""
        deadline = time.monotonic() + START_WAIT_S
        session = run.session
        while time.monotonic() < deadline and not run.done.is_set():
            if session.session_id and str(session.state.state) in ACTIVE_OUTPUT:
                break
            run.done.wait(0.01)
        report = session.report
        if report is not None and not report.output_started:
            raise StartRefused(409, report.reason, report)
        return run

    def _run(self, run: Run, starter: SessionStarter) -> None:
        slot = run.slot
        try:
            with starter.running(run.session) as session:
                session.wait()
        except Exception:
            log.exception("session on %s", slot.name)
            run.session.request_stop("fault", reason="the clinic service failed while the "
                                     "session ran")
            run.session.wait()
        finally:
            report = run.session.report
            with self._lock:
                if run in self._active:
                    self._active.remove(run)
                if report is not None and report.session_id:
                    self._reports[report.session_id] = report
                    while len(self._reports) > RECENT_REPORTS:
                        self._reports.popitem(last=False)
            slot.busy_with = run.reservation
            if run.reservation is None:
                # Look at once: a latched trip or e-stop shows now, not at the next watch.
                try:
                    slot.look()
                except Exception:  # the watch will look again; the run has ended anyway
                    log.exception("looking at %s after its session", slot.name)
            run.done.set()
            if report is not None:
                self._publish("session", {"device": slot.name, "id": report.session_id,
                                          "patient": run.patient,
                                          "stop_source": report.stop_source,
                                          "state": report.outcome, "final": True,
                                          "outcome": report.outcome, "reason": report.reason,
                                          "delivered_s": report.delivered_s,
                                          "stop_confirmed": report.stop_confirmed})
            self._device_changed(slot)

    def _update(self, slot: DeviceSlot, snap: Snapshot) -> None:
        run = slot.busy_with
        self._publish("telemetry", {"device": slot.name,
                                    "id": run.id if isinstance(run, Run) else "",
                                    "patient": run.patient if isinstance(run, Run) else None,
                                    "state": snap["state"], "remaining_s": snap["remaining_s"],
                                    "delivered_s": round(snap["delivered_s"], 3),
                                    "telemetry": plain(snap["telemetry"]), "dose": snap["dose"]})

    def _device_changed(self, slot: DeviceSlot) -> None:
        self._publish("device", {"device": slot.name, "state": self.device_state(slot)})

    # -- look up ----------------------------------------------------------------------------
    def device_state(self, slot: DeviceSlot) -> str:
        run = slot.busy_with
        if isinstance(run, Run):
            return DEVICE_STATE.get(str(run.session.state.state), "stopping")
        if run is not None:
            return RESERVED
        return slot.idle_state()

    def active(self) -> list[Run]:
        """Every run holding a device, also one whose record id is not known yet."""
        with self._lock:
            return list(self._active)

    def get(self, session_id: str) -> Run | SessionReport | None:
        with self._lock:
            for run in self._active:
                if run.id and run.id == session_id:
                    return run
            return self._reports.get(session_id)

    # -- stop -------------------------------------------------------------------------------
    def post_stop(self, run: Run, *, emergency: bool, by: str) -> None:
        """Post the stop to the session's mailbox; returns at once (safe on the event loop)."""
        kind = "emergency stop" if emergency else "stop"
        run.session.request_stop("operator", emergency=emergency,
                                 reason=f"operator {kind} by {by} (clinic service)")

    def stop(self, run: Run, *, emergency: bool, by: str) -> SessionReport | None:
        """Post the stop and wait (up to STOP_WAIT_S) for its confirmed end."""
        self.post_stop(run, emergency=emergency, by=by)
        return run.session.wait(STOP_WAIT_S)

    def post_stop_all(self, *, emergency: bool, reason: str) -> list[Run]:
        """Post a stop to every running session; returns at once with them."""
        runs = self.active()
        for run in runs:
            run.session.request_stop("operator", emergency=emergency, reason=reason)
        return runs

    @staticmethod
    def wait_all(runs: list[Run]) -> None:
        """Wait (up to STOP_WAIT_S in all) for every one of `runs` to end."""
        deadline = time.monotonic() + STOP_WAIT_S
        for run in runs:
            run.session.wait(max(0.0, deadline - time.monotonic()))

    def stop_all(self, *, emergency: bool, reason: str) -> list[Run]:
        """Post a stop to every running session first, then wait for them all: one slow
        device never delays the stop of another."""
        runs = self.post_stop_all(emergency=emergency, reason=reason)
        self.wait_all(runs)
        return runs
