"""Therapeutic ultrasound: acoustic power, energy dose, coupling hold, applicator heat.

Pure code with an injectable monotonic clock. Treatment time counts only while
the applicator is coupled (docs/design.md §2.7): the planned end moves later by the time
spent without contact, up to the profile's `max_contact_hold_s` in total.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from controller.modality.readings import number as _number

Clock = Callable[[], float]

PERCENT = 100.0
# Telemetry names this module reads (the modality contract's ultrasound names).
STATE = "state"
CONTACT = "contact_pct"
POWER = "power_w"
APPLICATOR_TEMP = "applicator_temp_c"
ERA = "era_cm2"
# The only telemetry state in which the device emits ("holding" is paused for contact).
RUNNING = "running"


def expected_power_w(intensity_w_cm2: float, era_cm2: float, duty_pct: float,
                     gain: float = 1.0) -> float:
    """Time-averaged acoustic power while coupled: intensity × ERA × duty/100 × gain."""
    return intensity_w_cm2 * era_cm2 * duty_pct / PERCENT * gain


def nominal_energy_j(intensity_w_cm2: float, era_cm2: float, duty_pct: float,
                     treatment_s: float) -> float:
    """Prescribed dose: intensity × ERA × duty × treatment time (1.5×5, 5 min -> 2250 J)."""
    return expected_power_w(intensity_w_cm2, era_cm2, duty_pct) * treatment_s


def power_mismatch(measured_w: float, expected_w: float, rel_tol: float) -> str | None:
    """Reason when the measured power is off the expected by more than `rel_tol`."""
    if expected_w <= 0:
        return None
    rel = abs(measured_w - expected_w) / expected_w
    if rel > rel_tol:
        return (f"measured acoustic power {measured_w:.3g} W is {rel:.0%} off the expected "
                f"{expected_w:.3g} W (tolerance {rel_tol:.0%})")
    return None


def applicator_interlock(temp_c: float, max_c: float | None) -> str | None:
    if max_c is not None and temp_c > max_c:
        return f"applicator temperature {temp_c:g} degC passed the limit {max_c:g} degC"
    return None


def is_coupled(telemetry: Mapping[str, object], contact_min_pct: float) -> bool:
    """Coupled = the device is running (not holding) and contact is at least the minimum."""
    contact = _number(telemetry, CONTACT)
    return telemetry.get(STATE) == RUNNING and contact is not None \
        and contact >= contact_min_pct


class CouplingHold:
    """Treatment-time bookkeeping for an output that pauses without contact.

    Between two samples, each coupled end counts half the interval as treatment
    (the change happened somewhere inside); the rest is hold. Until the next
    sample, time since the last one is extrapolated with the last state, read
    from `clock` (time.monotonic in service, a fake in tests).
    """

    def __init__(self, planned_s: float, max_hold_s: float,
                 clock: Clock = time.monotonic) -> None:
        self.planned_s = planned_s
        self.max_hold_s = max_hold_s
        self._clock = clock
        self._t0: float | None = None
        self._last: tuple[float, bool] | None = None
        self._treatment_s = 0.0

    def start(self, t_monotonic: float | None = None) -> None:
        """The output was switched on at this time (default: now)."""
        self._t0 = self._clock() if t_monotonic is None else t_monotonic

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def add(self, t_monotonic: float, coupled: bool) -> None:
        if self._t0 is None:
            self._t0 = t_monotonic
        if self._last is None:
            # Nothing is known before the first sample: its state covers the gap.
            if coupled and t_monotonic > self._t0:
                self._treatment_s += t_monotonic - self._t0
        elif t_monotonic > self._last[0]:
            ends = int(self._last[1]) + int(coupled)
            self._treatment_s += (t_monotonic - self._last[0]) * ends / 2.0
        else:
            return
        self._last = (t_monotonic, coupled)

    def treatment_s(self, now: float | None = None) -> float:
        """Time counted as treatment so far, extrapolated to `now`."""
        extra = 0.0
        if self._last is not None and self._last[1]:
            extra = max(0.0, self._now(now) - self._last[0])
        return self._treatment_s + extra

    def hold_s(self, now: float | None = None) -> float:
        """Time since the start not counted as treatment (lost coupling)."""
        if self._t0 is None:
            return 0.0
        return max(0.0, self._now(now) - self._t0 - self.treatment_s(now))

    def end_time(self, now: float | None = None) -> float:
        """The monotonic planned end: start + planned + hold so far (moves while uncoupled)."""
        if self._t0 is None:
            raise RuntimeError("coupling hold not started")
        return self._t0 + self.planned_s + self.hold_s(now)

    def remaining_s(self, now: float | None = None) -> float:
        return max(0.0, self.planned_s - self.treatment_s(now))

    def due(self, now: float | None = None) -> bool:
        """True once the planned treatment time has been delivered."""
        return self.remaining_s(now) <= 0.0

    def hold_exceeded(self, now: float | None = None) -> str | None:
        """Reason to end the session when lost coupling has used up the allowed hold."""
        held = self.hold_s(now)
        if held > self.max_hold_s:
            return (f"coupling lost for {held:.1f} s in total, more than the "
                    f"{self.max_hold_s:g} s the session end may move")
        return None

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now


class UltrasoundDoseMeter:
    """The ultrasound session's DoseMeter: energy, coupling hold, applicator heat.

    Measured energy integrates measured power (trapezoid) over intervals while
    coupled only; the nominal dose is intensity × ERA × duty × treatment time.
    ERA comes from the identified device, or from telemetry when not given.
    """

    def __init__(self, *, planned_s: float, intensity_w_cm2: float, duty_pct: float,
                 era_cm2: float | None, contact_min_pct: float, max_hold_s: float,
                 applicator_temp_max_c: float | None, energy_max_j: float | None,
                 clock: Clock = time.monotonic) -> None:
        self.intensity_w_cm2 = intensity_w_cm2
        self.duty_pct = duty_pct
        self.era_cm2 = era_cm2
        self.contact_min_pct = contact_min_pct
        self.applicator_temp_max_c = applicator_temp_max_c
        self.energy_max_j = energy_max_j
        self.hold = CouplingHold(planned_s, max_hold_s, clock)
        self.energy_j = 0.0
        self._last: tuple[float, float] | None = None   # (t, gated power)
        self.max_applicator_temp_c: float | None = None

    def add_sample(self, t_monotonic: float, telemetry: Mapping[str, object]) -> None:
        coupled = is_coupled(telemetry, self.contact_min_pct)
        self.hold.add(t_monotonic, coupled)
        if self.era_cm2 is None:
            self.era_cm2 = _number(telemetry, ERA)
        power = _number(telemetry, POWER)
        gated = power if coupled and power is not None else 0.0
        if self._last is not None and t_monotonic > self._last[0]:
            self.energy_j += (t_monotonic - self._last[0]) * (self._last[1] + gated) / 2.0
        if self._last is None or t_monotonic > self._last[0]:
            self._last = (t_monotonic, gated)
        temp = _number(telemetry, APPLICATOR_TEMP)
        if temp is not None:
            self.max_applicator_temp_c = temp if self.max_applicator_temp_c is None \
                else max(self.max_applicator_temp_c, temp)

    # -- timing: only coupled time counts, and the end moves by the hold -----------------
    def output_started(self, t_monotonic: float) -> None:
        self.hold.start(t_monotonic)

    def planned_end(self, t_start: float, planned_s: float, now: float) -> float:
        return self.hold.end_time(now) if self.hold.started else t_start + planned_s

    def delivered_s(self, t_start: float, end: float) -> float:
        total = max(0.0, end - t_start)
        return min(total, self.hold.treatment_s(end)) if self.hold.started else total

    def figures(self) -> dict[str, float]:
        treatment = self.hold.treatment_s(self._last[0] if self._last else None) \
            if self.hold.started else 0.0
        out = {"energy_j": self.energy_j, "treatment_s": treatment,
               "hold_s": self.hold.hold_s(self._last[0]) if self._last else 0.0}
        if self.era_cm2 is not None:
            out["era_cm2"] = self.era_cm2
            out["nominal_energy_j"] = nominal_energy_j(
                self.intensity_w_cm2, self.era_cm2, self.duty_pct, treatment)
        if self.max_applicator_temp_c is not None:
            out["max_applicator_temp_c"] = self.max_applicator_temp_c
        return out

    def check(self, telemetry: Mapping[str, object]) -> str | None:
        temp = _number(telemetry, APPLICATOR_TEMP)
        if temp is not None:
            reason = applicator_interlock(temp, self.applicator_temp_max_c)
            if reason:
                return reason
        if self.hold.started:
            reason = self.hold.hold_exceeded()
            if reason:
                return reason
        if self.energy_max_j is not None and self.energy_j > self.energy_max_j:
            return (f"delivered energy {self.energy_j:.0f} J passed the limit "
                    f"{self.energy_max_j:g} J")
        return None

