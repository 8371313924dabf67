"""TENS: charge per phase, r.m.s. current density, ramp rate, stimulation time, no-restore.

Pure code: no device I/O, no register names. The ramp cap (the device's longest
ramp) and all limits are arguments, taken from the profile by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NoReturn

from controller.modality.dose_timing import ContinuousTiming
from controller.modality.readings import number as _number

US_PER_S = 1e6
# mA × µs = nC; a thousand nC per µC.
NC_PER_UC = 1000.0
# Float noise allowance when comparing a computed ramp rate with the limit.
RATE_SLACK = 1e-9
# Telemetry names this module reads (the modality contract's TENS names).
CHANNEL_STATE = "channel_state"
AMPLITUDE = "amplitude_ma"
IMPEDANCE = "impedance_ohm"
# Channel states in which current flows; "lead_off" is the device's own stop.
ON_STATES = frozenset({"ramping_up", "running", "ramping_down"})
LEAD_OFF = "lead_off"
# Event names (the modality's words for a profile's event kinds, docs/profiles.md) of the
# device's own stops that latch its e-stop: the profile's labels for them word a latched
# e-stop flag, which does not say which one it was.
ESTOP_CAUSE_EVENTS = ("over_current", "patient_stop")
PATIENT_STOP_EVENT = "patient_stop"
ESTOP_LATCHED = "device e-stop latched"
# The neutral words when the profile names no cause (and for the patient stop flag).
ESTOP_NO_CAUSE = "cause not reported"
PATIENT_STOP = "patient stop"


def estop_reason(reported: list[str], possible: list[str]) -> str:
    """A latched e-stop flag in words: the faults the device reports with it, else the
    causes the profile words for it (its latching events), else a neutral text."""
    if reported:
        return f"{ESTOP_LATCHED} ({'; '.join(reported)})"
    if possible:
        return f"{ESTOP_LATCHED} (possible causes: {'; '.join(possible)})"
    return f"{ESTOP_LATCHED} ({ESTOP_NO_CAUSE})"


def charge_per_phase_uc(amplitude_ma: float, pulse_width_us: float) -> float:
    """Charge of one phase: amplitude × pulse width (25 mA × 200 µs -> 5 µC)."""
    return amplitude_ma * pulse_width_us / NC_PER_UC


def rms_current_ma(amplitude_ma: float, pulse_width_us: float, frequency_hz: float) -> float:
    """R.m.s. current of a rectangular biphasic pulse train.

    I_rms = I_peak × sqrt(2 × pulse_width × frequency)

    Assumptions: each period has two rectangular phases of `pulse_width_us`
    (one per polarity) at the peak amplitude and no current between pulses, so
    the mean square is I_peak² × 2·pw·f. That is exact for the symmetric
    biphasic waveform in continuous mode. It is an upper bound for the others:
    an asymmetric biphasic pulse's charge-balancing phase is longer and lower
    (I/k over k·pw adds I²·pw/k, not I²·pw), burst mode leaves gaps between
    bursts, and modulated mode never exceeds the set amplitude, width and rate.
    """
    duty = 2.0 * pulse_width_us / US_PER_S * frequency_hz
    if not 0.0 <= duty <= 1.0:
        raise ValueError(f"pulse width {pulse_width_us:g} us at {frequency_hz:g} Hz: "
                         "the two phases do not fit in one period")
    return amplitude_ma * math.sqrt(duty)


def current_density_rms_ma_cm2(amplitude_ma: float, pulse_width_us: float,
                               frequency_hz: float, electrode_area_cm2: float) -> float:
    """R.m.s. current density under one electrode of the pair: I_rms / area."""
    if electrode_area_cm2 <= 0:
        raise ValueError(f"electrode area {electrode_area_cm2:g} cm2 must be positive")
    return rms_current_ma(amplitude_ma, pulse_width_us, frequency_hz) / electrode_area_cm2


def ramp_up_s(amplitude_ma: float, rate_ma_s: float, max_ramp_s: float | None = None) -> int:
    """Whole seconds to ramp from 0 (or by a change of) `amplitude_ma` at `rate_ma_s`.

    ceil(amplitude / rate), at least 1 s for any non-zero amplitude, capped to
    the device's longest ramp. A capped ramp is faster than the rate: pass the
    result to `ramp_problem` to refuse it.
    """
    if rate_ma_s <= 0:
        raise ValueError(f"ramp rate {rate_ma_s:g} mA/s must be positive")
    if amplitude_ma <= 0:
        return 0
    # The slack keeps float noise (0.3 / 0.1 = 3.0000000000000004) from adding a second.
    seconds = max(1, math.ceil(amplitude_ma / rate_ma_s - RATE_SLACK))
    if max_ramp_s is not None:
        seconds = min(seconds, math.floor(max_ramp_s))
    return seconds


def ramp_problem(amplitude_ma: float, ramp_s: float, rate_ma_s: float) -> str | None:
    """Reason a ramp of `ramp_s` to `amplitude_ma` would exceed `rate_ma_s`, else None."""
    if amplitude_ma <= 0:
        return None
    if ramp_s <= 0 or amplitude_ma / ramp_s > rate_ma_s * (1.0 + RATE_SLACK):
        needed = amplitude_ma / rate_ma_s
        got = "no ramp" if ramp_s <= 0 else \
            f"a ramp of {ramp_s:g} s ({amplitude_ma / ramp_s:.3g} mA/s)"
        return (f"amplitude_ma={amplitude_ma:g} needs at least {needed:.3g} s of ramp at "
                f"{rate_ma_s:g} mA/s; {got} would be faster")
    return None


class RestoreRefused(Exception):
    """An output was about to be restored without a new operator action."""


class NoRestore:
    """The no-restore rule (docs/design.md §2.8) for one channel, as a tiny state machine.

    `start(request_id)` consumes the operator's prescription: each one starts an
    output once. After `interrupt` (lead off, e-stop, reconnect, restart) the
    amplitude is never brought back: `resume()` always refuses, and only a
    fresh prescription (a request id never started before) can start again.
    """

    def __init__(self) -> None:
        self.state = "idle"   # idle -> delivering -> interrupted | finished
        self.reason: str | None = None
        self._used: set[str] = set()

    def start(self, request_id: str) -> None:
        if self.state == "delivering":
            raise RestoreRefused("the output is already delivering")
        if request_id in self._used:
            raise RestoreRefused(f"prescription {request_id} was already started once; "
                                 "a new operator prescription is needed")
        self._used.add(request_id)
        self.state, self.reason = "delivering", None

    def interrupt(self, reason: str) -> None:
        if self.state == "delivering":
            self.state, self.reason = "interrupted", reason

    def finish(self) -> None:
        if self.state == "delivering":
            self.state = "finished"

    def resume(self) -> NoReturn:
        why = f" after {self.reason}" if self.reason else ""
        raise RestoreRefused(f"TENS output is never restored{why} without a new operator "
                             "action: build a fresh prescription and start again")


class TensDoseMeter(ContinuousTiming):
    """The TENS session's DoseMeter: stimulation time, peak amplitude and density.

    Stimulation time counts intervals while the channel state is one of
    ON_STATES (half an interval for each "on" end). Peak figures come from the
    measured amplitude, with the prescribed pulse width, frequency and area.
    """

    def __init__(self, *, pulse_width_us: float, frequency_hz: float,
                 electrode_area_cm2: float, impedance_max_ohm: float | None,
                 density_max_ma_cm2: float | None) -> None:
        self.pulse_width_us = pulse_width_us
        self.frequency_hz = frequency_hz
        self.electrode_area_cm2 = electrode_area_cm2
        self.impedance_max_ohm = impedance_max_ohm
        self.density_max_ma_cm2 = density_max_ma_cm2
        self.stimulation_s = 0.0
        self.max_amplitude_ma = 0.0
        self._last: tuple[float, bool] | None = None

    def add_sample(self, t_monotonic: float, telemetry: Mapping[str, object]) -> None:
        on = telemetry.get(CHANNEL_STATE) in ON_STATES
        if self._last is not None and t_monotonic > self._last[0]:
            ends = int(self._last[1]) + int(on)
            self.stimulation_s += (t_monotonic - self._last[0]) * ends / 2.0
        if self._last is None or t_monotonic > self._last[0]:
            self._last = (t_monotonic, on)
        amp = _number(telemetry, AMPLITUDE)
        if on and amp is not None:
            self.max_amplitude_ma = max(self.max_amplitude_ma, amp)

    def _density(self, amplitude_ma: float) -> float:
        return current_density_rms_ma_cm2(amplitude_ma, self.pulse_width_us,
                                          self.frequency_hz, self.electrode_area_cm2)

    def figures(self) -> dict[str, float]:
        return {
            "stimulation_s": self.stimulation_s,
            "max_amplitude_ma": self.max_amplitude_ma,
            "max_charge_per_phase_uc": charge_per_phase_uc(self.max_amplitude_ma,
                                                           self.pulse_width_us),
            "max_current_density_rms_ma_cm2": self._density(self.max_amplitude_ma),
        }

    def check(self, telemetry: Mapping[str, object]) -> str | None:
        state = telemetry.get(CHANNEL_STATE)
        impedance = _number(telemetry, IMPEDANCE)
        if state == LEAD_OFF:
            shown = f" (impedance {impedance:g} ohm)" if impedance is not None else ""
            return f"lead off: the device stopped the channel{shown}"
        if state not in ON_STATES:
            return None
        if impedance is not None and self.impedance_max_ohm is not None \
                and impedance > self.impedance_max_ohm:
            return (f"electrode impedance {impedance:g} ohm passed the limit "
                    f"{self.impedance_max_ohm:g} ohm")
        amp = _number(telemetry, AMPLITUDE)
        if amp is not None and self.density_max_ma_cm2 is not None:
            density = self._density(amp)
            if density > self.density_max_ma_cm2 * (1.0 + RATE_SLACK):
                return (f"r.m.s. current density {density:.3g} mA/cm2 at the measured "
                        f"{amp:g} mA passed the limit {self.density_max_ma_cm2:g} mA/cm2")
        return None

