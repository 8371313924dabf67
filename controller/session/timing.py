"""When a session polls, and how close to the planned end it stops polling.

Deadlines that end an output are the worker's own, on the injected monotonic clock
(docs/design.md §2.3); this module holds the arithmetic and its tunables.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.profiles.model import Profile

# No telemetry poll starts within this margin plus one reply timeout of the planned
# end, so the stop does not wait behind a poll even when one of its replies is lost
# and retried (measured: a 30 ms guard alone let stops wait 160-390 ms on an
# overloaded machine). The longest silence before the stop stays under 2 poll periods.
POLL_GUARD_S = 0.03
# How many recent poll durations the planned-end guard looks at.
POLL_HISTORY = 8
# An operator's controlled stop ramps down this fast where the device supports a
# ramp: command (p99 < 5 ms) plus ramp stays inside the 20 ms operator-stop target
# to output off. The planned end stops at once, exactly on time, as the device's own
# timer would.
CONTROLLED_RAMP_DOWN_S = 0.01
# How often the output state is read while confirming a stop.
CONFIRM_POLL_S = 0.02


def poll_guard_s(profile: Profile) -> float:
    """How long before the planned end no poll starts: POLL_GUARD_S plus one lost
    reply, but never so long that the silence before the end reads as stale."""
    safety = profile.safety
    extra = min(profile.link.reply_timeout_s, safety.poll_period_s)
    return max(POLL_GUARD_S, min(POLL_GUARD_S + extra,
                                 safety.stale_after_s - safety.poll_period_s))


def guard_s(profile: Profile, recent_polls_s: Iterable[float]) -> float:
    """The planned-end guard now: the base guard (one lost reply), or the longest recent
    poll plus the base margin, since one poll is several exchanges and near the slow end
    of a manual takes longer than a poll period. Capped so the quiet end never reads as
    stale telemetry; a poll that still runs into the planned end is cut short by the
    link's interrupt check."""
    base = poll_guard_s(profile)
    longest = max(recent_polls_s, default=None)
    if longest is None:
        return base
    safety = profile.safety
    cap = safety.stale_after_s - safety.poll_period_s
    return max(base, min(POLL_GUARD_S + longest, cap))
