"""What every simulated device shares: clock, output history, watchdog and timer.

A modality model holds the device's semantic state and physics. It never sees
bytes: a family endpoint decodes a request, asks the binding what it means and
calls `apply`, `value`, `telemetry` or `reading` here. Refusals are raised as
`Refused` with a kind; each family endpoint maps kinds to its own error codes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from controller.profiles.model import Profile
from protocols.map_common import Scalar
from simulator.faults import FaultPlan

Clock = Callable[[], float]

RefusalKind = Literal[
    "out_of_range",      # value outside what the device accepts
    "illegal_value",     # not a value of this parameter at all (wrong PIN, bad token)
    "invalid_state",     # not now: settings while running, start unconfigured
    "fault_latched",     # a trip / fault / e-stop is latched
    "hardware_missing",  # pad disconnected, no applicator
    "lead_off",          # electrodes not attached
    "service_required",  # needs calibration/service mode
    "busy",
]


class Refused(Exception):
    def __init__(self, kind: RefusalKind, text: str) -> None:
        self.kind = kind
        self.text = text
        super().__init__(f"{kind}: {text}")


@dataclass(frozen=True)
class OutputChange:
    """One change of output at the device, as the device saw it."""

    t: float
    """time.monotonic() (or the injected clock) when it happened."""
    on: bool
    cause: str
    """start | stop | emergency_stop | timer | watchdog | interlock | lead_off |
    patient_stop | over_current | fault"""
    channel: int | None = None


@dataclass(frozen=True)
class SimEvent:
    """An unsolicited report (only families with event frames send them)."""

    kind: str
    """Named as the profile's event kinds: lead_off, session_complete, ..."""
    channel: int | None
    value: int = 0


@dataclass
class ModelBase:
    """Common state; modality models subclass this and implement the abstract hooks."""

    profile: Profile
    faults: FaultPlan = field(default_factory=FaultPlan)
    clock: Clock = time.monotonic
    history: list[OutputChange] = field(default_factory=list)
    service_mode: bool = False
    watchdog_s: float = 0.0
    first_output_at: float | None = None
    last_kick: float = 0.0
    lock: threading.RLock = field(default_factory=threading.RLock)
    """Held by the endpoint around every call, so tests may inspect state safely."""

    # -- hooks every modality implements ---------------------------------------
    def apply(self, action: str, values: dict[str, Scalar], now: float) -> None:
        """A write: `set` values, or a control action. Raises Refused."""
        raise NotImplementedError

    def value(self, name: str, channel: int | None) -> Scalar:
        """The current value of a variable the host writes (setpoint, timer...)."""
        raise NotImplementedError

    def telemetry(self, name: str, channel: int | None, now: float) -> Scalar:
        """A telemetry quantity, by the modality contract's name."""
        raise NotImplementedError

    def reading(self, name: str, channel: int | None) -> Scalar:
        """Calibration values and the device's own measurement (cal_gain, cal_measured...)."""
        raise NotImplementedError

    def tick(self, now: float) -> list[SimEvent]:
        """Advance physics, timers and the watchdog to `now`."""
        raise NotImplementedError

    @property
    def output_on(self) -> bool:
        raise NotImplementedError

    def prepare_read(self, ops: frozenset[str], values: dict[str, Scalar], now: float) -> None:
        """Before rendering a read that carries arguments (a measurement at a level)."""

    def telemetry_reported(self, names: set[str]) -> None:
        """After telemetry was sent: clears report-once flags (patient stop pressed)."""

    # -- shared behaviour -------------------------------------------------------
    def kick(self, now: float) -> None:
        """Every valid request addressed to the device restarts its watchdog."""
        self.last_kick = now

    def watchdog_expired(self, now: float) -> bool:
        return self.watchdog_s > 0 and now - self.last_kick >= self.watchdog_s

    def output_time(self, now: float) -> float | None:
        """Seconds since the device first started an output: the fault schedule's clock."""
        return None if self.first_output_at is None else now - self.first_output_at

    def fault_due(self, at: float | None, now: float) -> bool:
        t = self.output_time(now)
        return at is not None and t is not None and t >= at

    def record(self, now: float, on: bool, cause: str, channel: int | None = None) -> None:
        if on and self.first_output_at is None:
            self.first_output_at = now
        self.history.append(OutputChange(now, on, cause, channel))

    def reported_fault_code(self, internal: int, names: dict[int, str]) -> int:
        """The code the profile gives a fault this model knows by its own number.

        `names` gives each of the model's numbers the modality's name for the fault
        (`over_temperature`); the profile's `faults` tables say which code carries that
        name, and which code means no fault. A fault the profile does not name is sent as
        the model's own number (what the shipped manuals use)."""
        name = names.get(internal)
        for table in self.profile.faults.values():
            for code, entry in table.items():
                if (name is None and entry.class_ == "none") or \
                        (name is not None and entry.name == name):
                    return code
        return internal

    def last_stop(self) -> OutputChange | None:
        return next((c for c in reversed(self.history) if not c.on), None)
