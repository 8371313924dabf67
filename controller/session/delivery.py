"""The session while its output runs: poll, judge, wait, until something ends it.

The loop looks for a stop before anything else: a device event or a posted stop
(operator, patient, records failure) is acted on at once, then the planned end on the
injected monotonic clock. Polls keep the device's watchdog fed and the dose meter
current; none starts inside the planned-end guard (controller.session.timing), so the
stop never waits behind one. A poll that does run into the planned end or a posted stop
is cut short by the link's interrupt check.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.records.store import RecordsError
from controller.session import backstops, checks
from controller.session.context import SessionContext
from controller.session.report import plain
from controller.session.variables import RAMP_UP, TIMER
from controller.session.verdicts import Verdict
from protocols.errors import Interrupted, ProtocolError
from protocols.map_common import Scalar


def deliver(ctx: SessionContext) -> tuple[Verdict, bool]:
    """Run until something ends the output; returns why, and whether to e-stop."""
    link = ctx.require_link()
    assert ctx.t_start is not None
    period = ctx.profile.safety.poll_period_s
    next_poll = ctx.clock()
    ramp_s = float(ctx.variables.get(RAMP_UP, 0) or 0)
    if ramp_s <= 0:
        ctx.state.fire("ramp_complete")
    while True:
        now = ctx.clock()
        verdict = ctx.pending_verdict()
        if verdict is not None:
            return verdict
        end = ctx.planned_end()
        if now >= end:
            return Verdict(checks.COMPLETED, checks.BY_CONTROLLER,
                           "planned duration delivered"), False
        guard = ctx.guard_s()
        if now >= next_poll and end - now > guard:
            found = _poll(ctx, ramp_s)
            if found is not None:
                return found, False
            next_poll += period
            if next_poll <= now:
                next_poll = now + period
        elif now - ctx.last_ok > ctx.profile.safety.stale_after_s:
            return Verdict(checks.FAULT, checks.BY_CONTROLLER,
                           f"stale telemetry: nothing valid for {now - ctx.last_ok:.2f} s"
                           ), False
        # Inside the guard no poll may start: sleep to the end rather than wake for a
        # poll that will not happen (which spun here until the end, holding the GIL).
        # The guard grows with the measured poll, so "now" may already be inside it.
        end, now = ctx.planned_end(), ctx.clock()
        last_start = end - ctx.guard_s()
        wake = next_poll if next_poll < last_start and now < last_start else end
        ctx.wait(wake - now)
        link.poll_events()


def _poll(ctx: SessionContext, ramp_s: float) -> Verdict | None:
    """One telemetry poll: recorded, metered and judged; a verdict ends the output."""
    link = ctx.require_link()
    assert ctx.meter is not None and ctx.t_start is not None
    began = ctx.clock()
    try:
        t = link.telemetry(ctx.variables)
    except Interrupted as exc:
        if exc.after is not None and not ctx.mailbox.stop_wanted():
            # The planned end cut short the retries of a failing link: say so.
            return Verdict(checks.FAULT, checks.BY_CONTROLLER,
                           f"communication: {exc.after} (retries cut short at the "
                           "planned end)")
        return None     # a stop or the planned end: the loop acts on it at once
    except ProtocolError as exc:
        return Verdict(checks.FAULT, checks.BY_CONTROLLER, f"communication: {exc}")
    at = ctx.clock()
    ctx.poll_times.append(at - began)
    ctx.last_ok = at
    ctx.seen(t)
    ctx.meter.add_sample(at, t)
    if ctx.store is not None and ctx.session_id:
        try:
            ctx.store.add_sample(ctx.session_id, plain(t), t_s=at - ctx.t0,
                                 delivered_s=ctx.delivered(at), dose=ctx.meter.figures())
        except RecordsError as exc:
            return Verdict(checks.FAULT, checks.BY_CONTROLLER, f"records failed: {exc}")
    verdict = _judge(ctx, t, at)
    if verdict is not None and checks.output_running(ctx.profile, t) \
            and verdict.stop_source == checks.BY_CONTROLLER:
        # One telemetry read is several exchanges: a device that tripped between
        # them looks inconsistent. Read once more before blaming a mismatch.
        try:
            again = link.telemetry(ctx.variables)
        except Interrupted:
            return None
        except ProtocolError as exc:
            return Verdict(checks.FAULT, checks.BY_CONTROLLER, f"communication: {exc}")
        at = ctx.clock()
        ctx.seen(again)
        t = again
        verdict = _judge(ctx, t, at)
    if verdict is not None:
        return verdict
    if not ctx.timer_checked:
        ctx.timer_checked = True
        problem = backstops.timer_problem(t, float(ctx.variables[TIMER]), at - ctx.t_start)
        ctx.event("reply", {"op": "timer_check", "remaining_s": t.get("remaining_s"),
                            "armed_s": ctx.variables[TIMER], "confirmed": problem is None})
        if problem:
            return Verdict(checks.FAULT, checks.BY_CONTROLLER, problem)
    ctx.last_running = t
    _follow_state(ctx, t, at, ramp_s)
    if ctx.on_update is not None:
        ctx.on_update(ctx.snapshot())
    return None


def _judge(ctx: SessionContext, t: Mapping[str, Scalar], at: float) -> Verdict | None:
    """Output off unasked, an interlock on a measured value, or a mismatch."""
    assert ctx.meter is not None
    if not checks.output_running(ctx.profile, t):
        ctx.t_off = at
        return checks.explain_stop(ctx.profile, t)
    reason = ctx.meter.check(t)
    if reason is not None:
        return Verdict(checks.FAULT, checks.BY_INTERLOCK, reason)
    return checks.verify(ctx.profile, ctx.rx, t)


def _follow_state(ctx: SessionContext, t: Mapping[str, Scalar], at: float,
                  ramp_s: float) -> None:
    """Ramping -> delivering, and holding while the device holds (contact lost)."""
    assert ctx.t_start is not None
    state = ctx.state.state
    if state == "ramping" and (t.get("channel_state") == "running"
                               or at - ctx.t_start >= ramp_s):
        ctx.state.fire("ramp_complete")
    elif state == "delivering" and t.get("state") == "holding":
        ctx.state.fire("contact_lost")
    elif state == "holding" and t.get("state") == "running":
        ctx.state.fire("contact_restored")
