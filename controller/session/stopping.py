"""Commanding an output off and confirming it (docs/design.md §2.5), for the session worker.

Send first, record after: a record write may wait on the disk. Nothing pre-empts the
link from here on: the interrupt check that lets stops overtake routine work is cleared,
because the stop itself must never be interrupted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.device.link import DeviceLink
from controller.session import checks
from controller.session.variables import RAMP_DOWN, SessionVariables
from protocols.errors import ProtocolError
from protocols.map_common import Scalar

log = logging.getLogger(__name__)

EMERGENCY_STOP, STOP = "emergency_stop", "stop"


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


def command_stop(link: DeviceLink, variables: SessionVariables, *, emergency: bool,
                 immediate: bool) -> StopSent:
    """A controlled stop ramps down where the device can; a fault stops at once without
    latching the device (an e-stop latches on some devices); the e-stop is the
    operator's choice and the fallback when a stop fails."""
    link.set_interrupt(None)
    ops = [EMERGENCY_STOP] if emergency else [STOP, EMERGENCY_STOP]
    values = dict(variables)
    if immediate:
        values[RAMP_DOWN] = 0.0
    sent = StopSent(ramp_down_s=values[RAMP_DOWN])
    for op in ops:
        try:
            link.run(op, values)
            sent.op = op
            return sent
        except ProtocolError as exc:
            sent.errors.append(f"{op}: {exc}")
    return sent


def confirm_stopped(link: DeviceLink, variables: SessionVariables, *, timeout_s: float,
                    clock: Callable[[], float], pause: Callable[[float], None],
                    poll_s: float, seen: Callable[[dict[str, Scalar]], None]) -> bool:
    """Read the output state until it is off (True) or `timeout_s` passes (False).

    Each reading goes to `seen` (the record), never to the dose meter: a reading after
    the stop would count the time up to it as "uncoupled" or "off"."""
    deadline = clock() + timeout_s
    while True:
        try:
            t = link.telemetry(variables)
            seen(t)
            if not checks.output_running(link.profile, t):
                return True
        except ProtocolError as exc:
            log.debug("confirming stop: %s", exc)
        if clock() >= deadline:
            return False
        pause(poll_s)
