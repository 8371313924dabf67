"""Treatment plans the clinic service runs: the same plan loop as `modctl plan run --yes`
(checks before the first step, one session per step, pauses, the plan's audit pair), on a
thread of its own, with every step's session started by `Runs` on the plan's devices.

A plan reserves its devices for its whole run: between steps nobody else may start a
session there (409 "reserved by a running plan"), and the device watch leaves them alone.
Stopping a plan stops its running step (a controlled stop, or an e-stop) and ends the
plan before its next step; stopping the step's session alone does the same.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from controller.device.link import DeviceLink
from controller.modality.prescription import Prescription
from controller.plans.gates import calibration_gate, interval_gate
from controller.plans.plan import Plan
from controller.plans.report import PlanReport
from controller.plans.run_loop import PlanRun
from controller.profiles.model import Profile
from controller.service.devices import DeviceSlot
from controller.service.runs import Run, Runs, StartRefused
from controller.session.report import SessionReport

log = logging.getLogger(__name__)

# Plan reports kept in memory for `GET /api/plans/runs/{id}` (the audit trail keeps all).
RECENT_PLANS = 200

Publish = Callable[[str, dict[str, object]], None]
Finished = Callable[[PlanReport], None]


class PlanRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(eq=False)
class PlanState:
    """One plan the service is running (or ran)."""

    id: str
    plan: Plan
    devices: dict[str, DeviceSlot]
    operator: str
    patient: str | None
    booking_id: str | None
    loop: PlanRun | None = None
    current: Run | None = None
    report: PlanReport | None = None
    log: io.StringIO = field(default_factory=io.StringIO)
    done: threading.Event = field(default_factory=threading.Event)

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id, "plan": self.plan.name, "operator": self.operator,
            "patient": self.patient, "booking_id": self.booking_id,
            "devices": {role: slot.name for role, slot in self.devices.items()},
            "final": self.report is not None,
            "current_session": self.current.id if self.current is not None else None,
            "progress": self.log.getvalue().splitlines()[-20:]}
        if self.report is not None:
            out["report"] = self.report.to_dict()
        return out


class PlanRuns:
    def __init__(self, runs: Runs, publish: Publish) -> None:
        self.runs = runs
        self._publish = publish
        self._lock = threading.Lock()
        self._plans: dict[str, PlanState] = {}

    def start(self, plan: Plan, devices: Mapping[str, DeviceSlot], *, operator: str,
              patient: str | None, booking_id: str | None = None,
              finished: Finished | None = None) -> PlanState:
        """Reserve the plan's devices and run it on its own thread; PlanRefused when a
        device is missing, of the wrong profile, busy or released."""
        slots = dict(devices)
        problems = [f"device role '{r}' ({p}): give a device for it"
                    for r, p in plan.roles().items() if r not in slots]
        problems += [f"device role '{r}': no such role in plan '{plan.name}' (roles: "
                     f"{', '.join(plan.roles())})" for r in slots if r not in plan.roles()]
        for role, slot in slots.items():
            want = plan.roles().get(role)
            if want is not None and (slot.profile is None or slot.profile.id != want):
                problems.append(f"device role '{role}' needs a {want}; device '{slot.name}' "
                                f"is a {slot.row.profile}")
        if problems:
            raise PlanRefused(422, "; ".join(problems))
        if len({s.name for s in slots.values()}) != len(slots):
            raise PlanRefused(422, "each device role needs a device of its own")
        state = PlanState(uuid.uuid4().hex, plan, slots, operator, patient, booking_id)
        self._reserve(state)
        with self._lock:
            self._plans[state.id] = state
            while len(self._plans) > RECENT_PLANS:
                oldest = next(k for k, p in self._plans.items() if p.done.is_set())
                del self._plans[oldest]
        threading.Thread(target=self._run, args=(state, finished), daemon=True,
                         name=f"plan {plan.name}").start()
        return state

    def _reserve(self, state: PlanState) -> None:
        taken: list[DeviceSlot] = []
        try:
            for slot in state.devices.values():
                with slot.lock:
                    if not self.runs.accepting:
                        raise PlanRefused(409, "the service is shutting down; no plan starts")
                    if slot.busy_with is not None:
                        raise PlanRefused(409, f"device '{slot.name}' is busy")
                    if slot.released_by:
                        raise PlanRefused(409, f"device '{slot.name}' is released to a "
                                               f"technician ({slot.released_by})")
                    slot.busy_with = state
                    taken.append(slot)
        except PlanRefused:
            for slot in taken:
                slot.busy_with = None
            raise

    def _run(self, state: PlanState, finished: Finished | None) -> None:
        by_port = {slot.row.port: slot for slot in state.devices.values()}
        starter = self.runs.starter()

        def run_step(profile: Profile, rx: Prescription, port: str, operator: str,
                     patient: str | None) -> SessionReport:
            return self._step(state, by_port[port], profile, rx, operator, patient)

        def borrow(profile: Profile, port: str) -> DeviceLink:
            return by_port[port].borrow(profile, port)

        state.loop = PlanRun(state.plan.name, state.plan.source, state.plan.example,
                             self.runs.store, state.operator, state.patient, state.booking_id,
                             state.log)
        try:
            state.report = state.loop.run(
                state.plan, {role: s.row.port for role, s in state.devices.items()},
                False, run_step, input, time.sleep, calibration_gate(starter), borrow,
                interval_gate(starter, state.patient))
        except Exception:  # the plan loop records its own end; this is a bug
            log.exception("plan %s", state.plan.name)
        finally:
            for slot in state.devices.values():
                if slot.busy_with is state:
                    slot.busy_with = None
            state.current = None
            report = state.report
            if report is not None and finished is not None:
                try:
                    finished(report)
                except Exception:  # the plan has ended; say why the rest failed
                    log.exception("plan %s: after its end", state.plan.name)
            state.done.set()
            self._publish("plan", {"id": state.id, "plan": state.plan.name, "final": True,
                                   "outcome": report.outcome if report else "fault",
                                   "reason": report.reason if report else "plan loop failed"})

    def _step(self, state: PlanState, slot: DeviceSlot, profile: Profile, rx: Prescription,
              operator: str, patient: str | None) -> SessionReport:
        try:
            run = self.runs.start(slot, rx, operator=operator, patient=patient,
                                  reservation=state)
        except StartRefused as exc:
            return exc.report or SessionReport(
                session_id="", outcome="rejected", reason=exc.message, profile=profile.id,
                device={"port": slot.row.port}, prescription=rx.record(),
                planned_s=rx.duration_s, delivered_s=0.0, stop_source="", dose={})
        state.current = run
        run.done.wait()
        state.current = None
        assert run.session.report is not None
        return run.session.report

    def get(self, plan_id: str) -> PlanState | None:
        with self._lock:
            return self._plans.get(plan_id)

    def running(self) -> list[PlanState]:
        with self._lock:
            return [p for p in self._plans.values() if not p.done.is_set()]

    def end_all(self, *, by: str) -> list[PlanState]:
        """No plan starts another step (the room's e-stop; its sessions are stopped by it)."""
        plans = self.running()
        for state in plans:
            if state.loop is not None:
                state.loop.request_stop(f"(room emergency stop by {by})")
        return plans

    def stop(self, state: PlanState, *, emergency: bool, by: str) -> None:
        """End the plan: its running step stops now, no further step starts."""
        kind = "emergency stop" if emergency else "stop"
        if state.loop is not None:
            state.loop.request_stop(f"(plan {kind} by {by})")
        run = state.current
        if run is not None:
            self.runs.stop(run, emergency=emergency, by=by)
