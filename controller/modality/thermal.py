"""Heat and cold therapy: thermal dose (CEM43), the cold regime, pad interlocks.

Pure code: numbers in, numbers or reasons out. No device I/O, no register names;
the thresholds come from the profile through `controller.modality.rules`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from controller.modality.dose_timing import ContinuousTiming
from controller.modality.readings import number as _number

# CEM43 (Sapareto & Dewey 1984): minutes at 43 degC equivalent to an exposure.
CEM43_REFERENCE_C = 43.0
# R halves the dose per degree above the breakpoint, quarters it below.
CEM43_R_AT_OR_ABOVE = 0.5
CEM43_R_BELOW = 0.25
SECONDS_PER_MINUTE = 60.0
# Telemetry names this module reads (the modality contract's thermal names).
PAD_TEMPERATURE = "temperature_c"
OUTPUT_ON = "output_on"


def cem43_rate(temp_c: float) -> float:
    """CEM43 minutes accumulated per minute at a constant `temp_c`: R^(43 - T)."""
    r = CEM43_R_AT_OR_ABOVE if temp_c >= CEM43_REFERENCE_C else CEM43_R_BELOW
    return float(r ** (CEM43_REFERENCE_C - temp_c))


def cem43_for(temp_c: float, minutes: float) -> float:
    """CEM43 of `minutes` at a constant temperature (1 min at 44 degC -> 2.0)."""
    return minutes * cem43_rate(temp_c)


def is_cold(setpoint_c: float, skin_temp_c: float) -> bool:
    """Cold therapy is a setpoint below skin temperature (the profile's `skin_temp_c`)."""
    return setpoint_c < skin_temp_c


def pad_interlock(temp_c: float, max_c: float | None, min_c: float | None) -> str | None:
    """Reason to end the session when the measured pad temperature passes a limit."""
    if max_c is not None and temp_c > max_c:
        return f"pad temperature {temp_c:g} degC passed the limit {max_c:g} degC"
    if min_c is not None and temp_c < min_c:
        return f"pad temperature {temp_c:g} degC fell below the limit {min_c:g} degC"
    return None


def budget_reason(cem43_min: float, budget_min: float | None) -> str | None:
    """Reason to end the session once the thermal dose reaches its budget."""
    if budget_min is not None and cem43_min >= budget_min:
        return (f"thermal dose CEM43 {cem43_min:.3g} min reached the session budget "
                f"{budget_min:g} min")
    return None


class Cem43Accumulator:
    """Integrates CEM43 over measured pad temperature samples.

    Each interval between two samples adds Δt[min] × the mean of the two
    endpoint rates (trapezoid on R^(43-T)). The rate is convex in T, so on a
    temperature ramp this errs high, the safe side for a budget.
    """

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None
        self.cem43_min = 0.0
        self.max_temp_c: float | None = None
        self.min_temp_c: float | None = None

    def add(self, t_s: float, temp_c: float) -> None:
        """One sample: monotonic time in seconds and pad temperature in degC."""
        if not (math.isfinite(t_s) and math.isfinite(temp_c)):
            raise ValueError(f"not a finite sample: t={t_s!r}, temperature={temp_c!r}")
        self.max_temp_c = temp_c if self.max_temp_c is None else max(self.max_temp_c, temp_c)
        self.min_temp_c = temp_c if self.min_temp_c is None else min(self.min_temp_c, temp_c)
        if self._last is not None:
            t0, temp0 = self._last
            if t_s <= t0:   # a repeated or out-of-order sample adds no time
                return
            minutes = (t_s - t0) / SECONDS_PER_MINUTE
            self.cem43_min += minutes * (cem43_rate(temp0) + cem43_rate(temp_c)) / 2.0
        self._last = (t_s, temp_c)


class ThermalDoseMeter(ContinuousTiming):
    """The thermal session's DoseMeter: CEM43, pad interlocks, dose budget."""

    def __init__(self, *, pad_temp_max_c: float | None, pad_temp_min_c: float | None,
                 cem43_budget_min: float | None) -> None:
        self.pad_temp_max_c = pad_temp_max_c
        self.pad_temp_min_c = pad_temp_min_c
        self.cem43_budget_min = cem43_budget_min
        self.dose = Cem43Accumulator()
        self._output_s = 0.0
        self._last_on: tuple[float, bool] | None = None

    def add_sample(self, t_monotonic: float, telemetry: Mapping[str, object]) -> None:
        temp = _number(telemetry, PAD_TEMPERATURE)
        if temp is not None:
            self.dose.add(t_monotonic, temp)
        on = telemetry.get(OUTPUT_ON)
        if isinstance(on, bool):
            if self._last_on is not None and t_monotonic > self._last_on[0]:
                # Half an interval per "on" end: the switch happened somewhere inside.
                ends_on = int(self._last_on[1]) + int(on)
                self._output_s += (t_monotonic - self._last_on[0]) * ends_on / 2.0
            self._last_on = (t_monotonic, on)

    def figures(self) -> dict[str, float]:
        out = {"cem43_min": self.dose.cem43_min, "output_s": self._output_s}
        if self.dose.max_temp_c is not None and self.dose.min_temp_c is not None:
            out["max_pad_temp_c"] = self.dose.max_temp_c
            out["min_pad_temp_c"] = self.dose.min_temp_c
        return out

    def check(self, telemetry: Mapping[str, object]) -> str | None:
        temp = _number(telemetry, PAD_TEMPERATURE)
        if temp is not None:
            reason = pad_interlock(temp, self.pad_temp_max_c, self.pad_temp_min_c)
            if reason:
                return reason
        return budget_reason(self.dose.cem43_min, self.cem43_budget_min)

