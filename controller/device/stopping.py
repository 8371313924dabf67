"""Stopping a device's output and confirming it off: the primitives every route shares.

A session (controller.session.stopping) and a calibration (controller.calibration.device)
both stop through these: command the profile's `stop`, with its `emergency_stop` as the
fallback when the stop fails, then read the output state until it reads off or the
profile's confirm timeout passes. Nothing pre-empts the link from here on: the interrupt
check that lets stops overtake routine work is cleared, because the stop itself must never
be interrupted. The callers decide what a failure means and what to record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from controller.device.link import DeviceLink
from protocols.errors import ProtocolError
from protocols.map_common import Scalar

log = logging.getLogger(__name__)

EMERGENCY_STOP, STOP = "emergency_stop", "stop"
# The variable a profile's stop takes its ramp-down time from (`$ramp_down_s`,
# docs/profiles.md); 0 stops at once.
RAMP_DOWN = "ramp_down_s"
# The telemetry name that says whether the output is on (every modality's contract).
OUTPUT_ON = "output_on"


@dataclass
class StopSent:
    """What `command_stop` did: the operation that went through (None: none did)."""

    op: str | None = None
    ramp_down_s: Scalar = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def estop(self) -> bool:
        """The device e-stop was what reached (or was last tried on) the device."""
        return self.op == EMERGENCY_STOP or (self.op is None and bool(self.errors))


def command_stop(link: DeviceLink, variables: Mapping[str, Scalar], *, emergency: bool,
                 immediate: bool) -> StopSent:
    """A controlled stop ramps down where the device can; `immediate` stops at once
    without latching the device (an e-stop latches on some devices); the e-stop is the
    operator's choice (`emergency`) and the fallback when a stop fails."""
    link.set_interrupt(None)
    ops = [EMERGENCY_STOP] if emergency else [STOP, EMERGENCY_STOP]
    values = dict(variables)
    if immediate:
        values[RAMP_DOWN] = 0.0
    sent = StopSent(ramp_down_s=values.get(RAMP_DOWN, 0.0))
    for op in ops:
        try:
            link.run(op, values)
            sent.op = op
            return sent
        except ProtocolError as exc:
            sent.errors.append(f"{op}: {exc}")
    return sent


def output_reads_on(telemetry: Mapping[str, object]) -> bool:
    return bool(telemetry.get(OUTPUT_ON))


def confirm_stopped(link: DeviceLink, variables: Mapping[str, Scalar], *, timeout_s: float,
                    clock: Callable[[], float], pause: Callable[[float], None],
                    poll_s: float, partial: bool = False,
                    seen: Callable[[dict[str, Scalar]], None] | None = None) -> bool:
    """Read the output state until it is off (True) or `timeout_s` passes (False); a read
    that fails is retried until then. `partial`: telemetry may lack names (a calibration
    channel in service mode). Each reading goes to `seen` (a session's record)."""
    deadline = clock() + timeout_s
    while True:
        try:
            t = link.telemetry(variables, partial=True) if partial \
                else link.telemetry(variables)
            if seen is not None:
                seen(t)
            if not output_reads_on(t):
                return True
        except ProtocolError as exc:
            log.debug("confirming stop: %s", exc)
        if clock() >= deadline:
            return False
        pause(poll_s)
