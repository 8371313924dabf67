"""What the device itself reports about the backstops and the time it delivered.

The record must hold what the device holds, not what the controller planned
(design invariant 11): after `arm`, the written watchdog and session timer are
read back where the family allows it; once the output runs, the device's own
timer count (`remaining_s`) must agree with the timer that was armed; at the end,
the device's own count of output time (`elapsed_s`) is recorded beside the
host-measured time and wins when the two disagree by more than the device's
counting resolution (after the controller was frozen or killed, the host's
figure is wrong; the device's is what the patient received).
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.device.link import ReadBack
from controller.modality.readings import number
from protocols.map_common import Scalar

# Device timers and elapsed counters count whole seconds.
DEVICE_COUNT_RESOLUTION_S = 1.0
# The first running poll may come this long after the start command was sent; with the
# resolution, how far the device's remaining time may lie below the armed timer.
TIMER_CHECK_SLACK_S = 1.0


def armed_problem(read_back: Mapping[str, ReadBack]) -> str | None:
    """Why the device does not hold what `arm` wrote, or None."""
    wrong = [f"{key} reads {rb.read} (written {rb.written})"
             for key, rb in read_back.items() if rb.confirmed is False]
    if not wrong:
        return None
    return "device did not take the backstops: " + "; ".join(wrong)


def timer_problem(telemetry: Mapping[str, Scalar], timer_s: float,
                  since_start_s: float) -> str | None:
    """Why the device's session timer does not look armed with `timer_s`, or None.

    Right after the start the device's remaining time is the armed timer less the
    whole seconds elapsed since; a timer left at its default, or never loaded, shows."""
    remaining = number(telemetry, "remaining_s")
    if remaining is None:
        return ("device reports no session timer count (remaining_s is "
                f"{telemetry.get('remaining_s')!r})")
    low = timer_s - since_start_s - DEVICE_COUNT_RESOLUTION_S - TIMER_CHECK_SLACK_S
    if not low <= remaining <= timer_s + DEVICE_COUNT_RESOLUTION_S:
        return (f"device session timer reads {remaining:g} s remaining {since_start_s:.1f} s "
                f"after the start; it was armed with {timer_s:g} s")
    return None


def device_elapsed(telemetry: Mapping[str, Scalar]) -> float | None:
    """The device's own count of output time; None when it reports no finite number."""
    return number(telemetry, "elapsed_s")


def reconcile(host_s: float, device_s: float | None, slack_s: float) -> tuple[float, str]:
    """The delivered time to record, and a sentence when the device's count won.

    The device counts whole seconds and its last count may be up to `slack_s` old
    (a poll period and the stop), so a difference within that is the host's finer
    measurement; beyond it the host missed something (frozen, suspended) and the
    device's count is what was delivered."""
    if device_s is None:
        return host_s, ""
    if device_s - slack_s <= host_s <= device_s + DEVICE_COUNT_RESOLUTION_S + slack_s:
        return host_s, ""
    return device_s, (f"delivered time taken from the device's own count ({device_s:g} s); "
                      f"the controller measured {host_s:.2f} s")
