"""How a session's output ends (docs/design.md §2.5): every path out goes through here.

`stop_output` commands the output off and confirms it (the device-level primitives in
controller.device.stopping), records it, and decides the outcome: a device cause seen
while stopping outranks ours, and a stop the device does not confirm is a fault. Send
first, record after: a record write may wait on the disk. `fail` is the last resort for a
failure anywhere (a bug included); `reject` ends a session before any output.
"""

from __future__ import annotations

import contextlib
import logging

from controller.device.stopping import command_stop, confirm_stopped
from controller.session import checks
from controller.session.context import SessionContext
from controller.session.machine import ACTIVE_OUTPUT, TERMINAL
from controller.session.timing import CONFIRM_POLL_S, CONTROLLED_RAMP_DOWN_S
from controller.session.variables import stop_ramps
from controller.session.verdicts import Verdict
from protocols.errors import ProtocolError

log = logging.getLogger(__name__)

NOT_CONFIRMED = "stop not confirmed by device"


def stop_output(ctx: SessionContext, verdict: Verdict, emergency: bool) -> None:
    """Command the output off, confirm it, and decide the outcome."""
    state = ctx.state
    state.outcome, state.stop_source, state.reason = \
        verdict.outcome, verdict.stop_source, verdict.reason
    # Operator and patient stops ramp down; the planned end and faults stop at once.
    ramped = verdict.outcome == checks.ABORTED and not emergency
    t_cmd = ctx.clock()
    _command(ctx, emergency, immediate=not ramped)
    if state.state in ACTIVE_OUTPUT:
        state.fire("end_output")
    elif state.state in ("identifying", "arming"):
        state.fire("fail")
    if ctx.t_start is None:
        state.stop_source = ""
    elif ctx.t_off is None:
        ctx.t_off = t_cmd + (CONTROLLED_RAMP_DOWN_S if ramped and stop_ramps(ctx.profile)
                             else 0.0)
    _close_dose(ctx)
    ctx.event("decision", {"outcome": verdict.outcome, "stop_source": verdict.stop_source,
                           "reason": verdict.reason, "emergency": emergency})
    ctx.stop_confirmed = _confirm(ctx)
    _device_cause_outranks(ctx, verdict)
    if not ctx.stop_confirmed:
        # Doubt is a fault: a session whose stop is unconfirmed never reads "completed".
        state.outcome = checks.FAULT
        state.reason += f"; {NOT_CONFIRMED}"
        if ctx.t_start is not None and state.stop_source in (checks.BY_CONTROLLER, ""):
            # We could not reach the device: its own watchdog is what stops it.
            state.stop_source = checks.BY_DEVICE_WATCHDOG
        ctx.event("fault", {"reason": NOT_CONFIRMED})
    state.fire("stop_done")


def fail(ctx: SessionContext, verdict: Verdict) -> None:
    """A failure anywhere: if an output may be on, stop it; record why. Never raises: if
    stopping fails too, a last-resort e-stop is sent."""
    state = ctx.state
    try:
        if state.state in TERMINAL:
            return
        if state.state == "connecting":
            state.outcome, state.reason = verdict.outcome, verdict.reason
            state.fire("fail")
        elif state.state == "stopping":
            state.outcome = checks.FAULT
            state.reason += f"; then {verdict.reason}"
            ctx.stop_confirmed = False
            state.fire("stop_done")
        else:
            stop_output(ctx, verdict, emergency=False)
    except Exception:
        log.exception("session failure handling failed; sending emergency stop")
        state.outcome = checks.FAULT
        state.reason = f"{verdict.reason}; internal error while stopping"
        ctx.stop_confirmed = False
        if ctx.link is not None:
            try:
                ctx.link.set_interrupt(None)
                ctx.link.run("emergency_stop", ctx.variables)
            except Exception:
                log.exception("emergency stop failed")


def reject(ctx: SessionContext, reason: str) -> None:
    """Refuse the session before any output: nothing was started."""
    ctx.state.outcome, ctx.state.reason, ctx.state.stop_source = checks.REJECTED, reason, ""
    ctx.event("decision", {"outcome": "rejected", "reason": reason})
    ctx.state.fire("reject")


def _device_cause_outranks(ctx: SessionContext, verdict: Verdict) -> None:
    """A device that stopped on its own (interlock, lead off, patient stop) while we
    were stopping it has the last word: the cause is recorded, not lost."""
    if ctx.link is None:
        return
    with contextlib.suppress(ProtocolError):
        ctx.link.poll_events()
    cause = ctx.event_verdict()
    if cause is None and ctx.last_telemetry and not ctx.sent_estop:
        # After our own e-stop a latched e-stop flag is ours, not the device's cause.
        cause = checks.device_interlock(ctx.profile, ctx.last_telemetry)
    if cause is None or verdict.outcome == checks.FAULT or \
            (cause.outcome, cause.stop_source) == (verdict.outcome, verdict.stop_source):
        return
    state = ctx.state
    state.outcome, state.stop_source = cause.outcome, cause.stop_source
    state.reason = f"{cause.reason} (while stopping: {verdict.reason})"
    ctx.event("decision", {"outcome": cause.outcome, "stop_source": cause.stop_source,
                           "reason": state.reason})


def _close_dose(ctx: SessionContext) -> None:
    """Account the dose up to the stop: the last running state held until then.

    Polls stop a guard time before the planned end, so without this the dose
    figures would miss the final fraction of a poll period.
    """
    if ctx.meter is not None and ctx.t_off is not None and ctx.last_running:
        ctx.meter.add_sample(ctx.t_off, ctx.last_running)


def _command(ctx: SessionContext, emergency: bool, immediate: bool) -> None:
    """Send the stop first, record it after."""
    if ctx.link is None:
        return
    sent = command_stop(ctx.link, ctx.variables, emergency=emergency, immediate=immediate)
    # After our own e-stop a latched e-stop flag is ours, not the device's cause.
    ctx.sent_estop = sent.estop
    if sent.op is not None:
        ctx.event("command", {"op": sent.op, "ramp_down_s": sent.ramp_down_s})
    else:
        ctx.event("fault", {"reason": "stop command failed", "errors": sent.errors})


def _confirm(ctx: SessionContext) -> bool:
    """Read the output state until off, each reading kept as the last telemetry (never
    given to the dose meter: a reading after the stop would count as "off" time)."""
    if ctx.link is None:
        return False
    confirmed = confirm_stopped(
        ctx.link, ctx.variables, timeout_s=ctx.profile.safety.stop_confirm_timeout_s,
        clock=ctx.clock, pause=ctx.pause, poll_s=CONFIRM_POLL_S, seen=ctx.seen)
    if confirmed:
        ctx.event("reply", {"op": "confirm_stop", "output_on": False})
    return confirmed
