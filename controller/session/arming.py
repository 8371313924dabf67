"""The session before its output: open the record, connect, identify, arm, start.

Nothing is written to the device until it has identified as the profile's model with no
latched fault and the prescription's limits were re-checked with what it reported.
Then `configure` and `arm` (watchdog and session timer, read back), and the start
command — the first moment the output may be on. A refusal before that raises `Reject`;
a device that refuses the start itself raises `StopWith`, since it may have started.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from controller.device.link import DeviceLink, identify
from controller.modality.prescription import PrescriptionRejected, apply_device_facts
from controller.modality.rules import modality_for
from controller.profiles.model import IdentityError, Profile
from controller.records.store import RecordsError
from controller.session import backstops, checks
from controller.session.context import Reject, SessionContext, StopWith
from controller.session.report import plain
from controller.session.variables import TIMER, WATCHDOG
from controller.session.verdicts import Verdict
from protocols.errors import DeviceRefused, Interrupted, ProtocolError

LinkFactory = Callable[[Profile, str], DeviceLink]
# Called with the device's identity ({"model", "serial", "firmware"}) once it has
# identified; returns a reason to refuse the session (e.g. the calibration gate for the
# registered device that reports this identity), or None.
IdentityGate = Callable[[Mapping[str, str]], "str | None"]

# Prescriptions that have started an output in this process. An output is never
# restored: after any stop (lead off, e-stop, fault, restart) only a new operator
# request — a new prescription — can start one again.
_STARTED: set[str] = set()
_STARTED_LOCK = threading.Lock()


def open_record(ctx: SessionContext) -> None:
    """Open the session's record first: nothing may run that cannot be recorded."""
    if ctx.store is None:
        return
    try:
        ctx.session_id = ctx.store.open_session(
            profile=ctx.profile.id, port=ctx.port, identity={}, operator=ctx.operator,
            patient=ctx.patient, prescription=ctx.rx.record(),
            planned_s=ctx.rx.duration_s, profile_path=ctx.profile_path,
            profile_sha256=ctx.profile_sha256)
    except RecordsError as exc:
        raise Reject(f"records unavailable: {exc}") from None


def connect(ctx: SessionContext, link_factory: LinkFactory) -> None:
    """Open the link; device events and the stop interrupt go to the context."""
    try:
        ctx.link = link_factory(ctx.profile, ctx.port)
    except ProtocolError as exc:
        # The transport's own sentence names the port ("cannot open PORT: ...").
        text = str(exc)
        raise Reject(text if text.startswith("cannot open") else
                     f"cannot open {ctx.port}: {text}") from None
    ctx.link.set_event_handler(ctx.device_events.append)
    ctx.link.set_interrupt(ctx.interrupt_wanted)
    ctx.state.fire("connected")


def identify_device(ctx: SessionContext, *, clear_fault: bool,
                    gate: IdentityGate | None) -> None:
    """Identify (read-only), clear a latched fault only when the operator asked, pass the
    identity gate, and re-check the prescription's limits with the device's facts."""
    link = ctx.require_link()
    try:
        found = identify(link, ctx.variables)
    except Interrupted:
        raise
    except ProtocolError as exc:
        # Identification only reads: nothing was written, so nothing may start.
        raise Reject(f"the device did not identify as the {ctx.profile.model} of the "
                     f"profile: {exc}") from None
    except IdentityError as exc:
        raise Reject(f"device identity unreadable: {exc}") from None
    ctx.identity, ctx.device = found.results, found.identity
    ctx.event("reply", {"op": "identify", "identity": plain(ctx.identity)})
    problem = found.latched_fault
    if problem and clear_fault and link.has("clear_fault") \
            and not found.telemetry.get("output_on"):
        # The operator asked for it, having checked the patient and the device.
        link.run("clear_fault", ctx.variables)
        ctx.event("command", {"op": "clear_fault", "was": problem})
        problem = checks.latched_fault(ctx.profile, link.telemetry(ctx.variables)) or ""
    if problem:
        hint = "" if clear_fault else \
            " (check the patient and the device, then run again with --clear-fault)"
        raise Reject(f"device not ready: {problem}{hint}")
    _record_identity(ctx, gate)
    facts = found.facts
    try:
        ctx.rx = apply_device_facts(ctx.profile, ctx.rx, facts)
    except PrescriptionRejected as exc:
        raise Reject("; ".join(exc.messages())) from None
    # The prescription as applied: limits re-checked with what the device reported.
    ctx.event("decision", {"prescription": ctx.rx.record()})
    ctx.meter = modality_for(ctx.profile).dose_meter(ctx.rx, facts, clock=ctx.clock)
    ctx.state.fire("identified")


def _record_identity(ctx: SessionContext, gate: IdentityGate | None) -> None:
    """Keep who the device says it is (model, serial, firmware) on the session record,
    and let the caller refuse it (the calibration gate of the registered device that
    reports this identity, whatever port spelling reached it)."""
    if ctx.store is not None and ctx.session_id:
        try:
            ctx.store.set_session_identity(ctx.session_id, {**plain(ctx.identity), **ctx.device})
        except RecordsError as exc:
            raise Reject(f"records unavailable: {exc}") from None
    if gate is not None:
        refusal = gate(ctx.device)
        if refusal:
            raise Reject(refusal)


def start_output(ctx: SessionContext) -> None:
    """Configure, arm the backstops (read back), and start: from the start command on,
    every exit path stops the output."""
    link = ctx.require_link()
    if ctx.rx.pending:
        raise Reject("limits not yet checkable: " + ", ".join(ctx.rx.pending))
    with _STARTED_LOCK:
        if ctx.rx.request_id in _STARTED:
            raise Reject("this prescription already started an output; an output is "
                         "never restored without a new operator request")
        _STARTED.add(ctx.rx.request_id)
    link.run("configure", ctx.variables)
    ctx.event("command", {"op": "configure"})
    link.run("arm", ctx.variables)
    armed = link.read_back("arm", ctx.variables)
    ctx.event("command", {"op": "arm", "watchdog_s": ctx.variables[WATCHDOG],
                          "timer_s": ctx.variables[TIMER],
                          "read_back": {k: {"written": rb.written, "read": rb.read}
                                        for k, rb in armed.items()}})
    problem = backstops.armed_problem(armed)
    if problem:
        raise Reject(problem)
    if ctx.records_failed:
        raise Reject(f"records failed: {ctx.records_failed}; nothing is started "
                     "that cannot be recorded")
    if ctx.mailbox.stop_wanted():
        raise Interrupted("stop requested before the output started")
    # From here the output may be on: every exit path stops it.
    ctx.t_start = ctx.clock()
    try:
        link.run("start", ctx.variables)
    except DeviceRefused as exc:
        raise StopWith(_why_refused(ctx, exc)) from None
    ctx.last_ok = ctx.clock()
    if ctx.meter is not None:
        ctx.meter.output_started(ctx.t_start)
    ctx.state.fire("output_started")
    ctx.event("command", {"op": "start", "planned_s": ctx.rx.duration_s})


def _why_refused(ctx: SessionContext, exc: DeviceRefused) -> Verdict:
    """The device refused to start: its own reason (an event, a flag) if it gives one."""
    link = ctx.require_link()
    link.poll_events()
    verdict = ctx.event_verdict()
    if verdict is None:
        try:
            verdict = checks.device_interlock(ctx.profile, link.telemetry(ctx.variables))
        except ProtocolError:
            verdict = None
    return verdict or Verdict(checks.FAULT, checks.BY_CONTROLLER,
                              f"device refused to start: {exc}")
