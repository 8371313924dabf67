"""The seam between a profile and the modality code: derived quantities, rules, dose.

`modality_for(profile)` gives the profile's modality rules. They read the
profile's limits and rules only (never its protocol map) and hand plain numbers
to the pure modality modules (`modality_thermal`, `modality_ultrasound`,
`modality_tens`). Each session gets a `DoseMeter` from `dose_meter`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from controller.modality import tens, thermal, ultrasound
from controller.modality.ceilings import ceilings_for, effective_rule, tightest_max
from controller.modality.limits import effective_interlocks
from controller.modality.readings import finite
from controller.modality.readings import number as _num
from controller.profiles.model import Profile
from controller.session.verdicts import (
    Outcome,
    ReportedFault,
    StopSource,
    Verdict,
    class_verdict,
    mismatch,
)
from protocols.map_framed import FramedMap

Value = float | int | str
FAULT, INTERLOCK = Outcome.FAULT, StopSource.INTERLOCK
Clock = ultrasound.Clock
# Device facts learned at identification that derived limits may need.
FACT_ERA = "era_cm2"
FACT_MAX_RAMP = "max_ramp_s"
# A profile rule giving the device's longest start ramp (optional until the
# TENS contract lists it; a device fact of the same name takes precedence).
RULE_MAX_RAMP = "max_ramp_s"


class Prescription(Protocol):
    """What the modality reads of a prescription (controller.modality.prescription.Prescription):
    a structural type, so this module never imports the prescription module that
    imports it."""

    @property
    def values(self) -> Mapping[str, Value]: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def regimes(self) -> tuple[str, ...]: ...
    @property
    def facts(self) -> Mapping[str, float]: ...


class DoseMeter(Protocol):
    """What a session engine feeds with telemetry and asks for dose and interlocks."""

    def add_sample(self, t_monotonic: float, telemetry: Mapping[str, object]) -> None:
        """One telemetry sample (the profile's telemetry names) at a monotonic time."""

    def figures(self) -> dict[str, float]:
        """Dose so far, for the session report's `dose` field."""

    def check(self, telemetry: Mapping[str, object]) -> str | None:
        """A reason to end the session as an interlock, or None."""

    def output_started(self, t_monotonic: float) -> None:
        """The output was switched on at this monotonic time (controller.modality.dose_timing)."""

    def planned_end(self, t_start: float, planned_s: float, now: float) -> float:
        """When the output should end, on the monotonic clock."""

    def delivered_s(self, t_start: float, end: float) -> float:
        """Treatment time between the start and `end`."""


@dataclass(frozen=True)
class Derived:
    """A quantity the modality computes from the prescription (and device facts)."""

    name: str
    value: float
    unit: str
    basis: str
    """The inputs, as `name=value` text, for messages and records."""


class ModalityRules:
    """Modality knowledge bound to one profile's limits and rules."""

    name = ""
    needs_facts: frozenset[str] = frozenset()
    """Device facts without which some derived limit cannot be checked."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    def derived(self, values: Mapping[str, Value], duration_s: float,
                facts: Mapping[str, float]) -> list[Derived]:
        """Derived quantities computable from these values (skip any that are not)."""
        return []

    def rule_problems(self, values: Mapping[str, Value],
                      facts: Mapping[str, float]) -> list[tuple[str, str]]:
        """Modality rules the prescription breaks, as (parameter, message)."""
        return []

    def session_values(self, values: Mapping[str, Value],
                       facts: Mapping[str, float]) -> dict[str, float]:
        """Session variables the modality decides (the TENS ramp in whole seconds)."""
        return {}

    def pending(self, facts: Mapping[str, float]) -> list[str]:
        """Derived limits that cannot be checked until these facts are known."""
        return []

    def dose_meter(self, prescription: Prescription, facts: Mapping[str, float] | None = None,
                   clock: Clock = time.monotonic) -> DoseMeter:
        raise NotImplementedError

    # -- what the device reports (asked by controller.session.checks) ------------
    def explain_stop(self, t: Mapping[str, object],
                     faults: list[ReportedFault]) -> Verdict | None:
        """Why the output is off when the controller did not stop it (None: no reason)."""
        return faults[0].verdict() if faults else None

    def latched_fault(self, t: Mapping[str, object],
                      faults: list[ReportedFault]) -> str | None:
        """A latched fault at identification: no output may start."""
        if faults:
            return f"device reports fault {faults[0].code} ({faults[0].label})"
        return None

    def verify(self, values: Mapping[str, Value], t: Mapping[str, object]) -> str | None:
        """Telemetry against what was commanded, within the profile's tolerances."""
        return None

    # -- helpers ----------------------------------------------------------------
    def _derived_max(self, name: str) -> float | None:
        """The profile's derived maximum, never above the modality's ceiling."""
        bound = self.profile.limits.derived.get(name)
        ceiling = ceilings_for(self.profile.modality).derived.get(name)
        return tightest_max(None if bound is None else bound.max, ceiling)

    def _rule(self, name: str) -> float | None:
        """A profile rule with its ceiling applied (present even if the profile lacks it)."""
        return effective_rule(self.profile.modality, name, self.profile.rules.get(name))

    def _interlocks(self, prescription: Prescription) -> dict[str, float]:
        return effective_interlocks(self.profile, list(prescription.regimes))

    def _event_labels(self, names: tuple[str, ...]) -> list[str]:
        """The profile's words for these events (its event kinds' labels), where it has them."""
        events = self.profile.protocol.events if isinstance(self.profile.protocol, FramedMap) \
            else None
        kinds = {k.name: k for k in events.kinds.values()} if events is not None else {}
        return [kinds[name].text(None) for name in names if name in kinds]


class ThermalRules(ModalityRules):
    name = "thermal"

    def explain_stop(self, t: Mapping[str, object],
                     faults: list[ReportedFault]) -> Verdict | None:
        if t.get("watchdog_expired"):
            return class_verdict("link", "")
        if t.get("timer_expired"):
            return class_verdict("timer", "")
        if t.get("trip_high"):
            return Verdict(FAULT, INTERLOCK, "over-temperature: device trip latched")
        if t.get("trip_low"):
            return Verdict(FAULT, INTERLOCK, "under-temperature: device trip latched")
        if t.get("pad_connected") is False:
            return Verdict(FAULT, INTERLOCK, "pad off: the pad is disconnected")
        return super().explain_stop(t, faults)

    def latched_fault(self, t: Mapping[str, object],
                      faults: list[ReportedFault]) -> str | None:
        if t.get("trip_high") or t.get("trip_low") or faults:
            label = faults[0].label if faults else "trip"
            return f"device reports a latched fault ({label})"
        if t.get("pad_connected") is False:
            return "the pad is not connected"
        return None

    def verify(self, values: Mapping[str, Value], t: Mapping[str, object]) -> str | None:
        tol = self.profile.safety.tolerances
        if "setpoint_c" not in tol:
            return None
        return mismatch("setpoint", t.get("setpoint_c"), values.get("temperature_c"),
                        tol["setpoint_c"], "degC")

    def derived(self, values: Mapping[str, Value], duration_s: float,
                facts: Mapping[str, float]) -> list[Derived]:
        setpoint = _num(values, "temperature_c")
        if setpoint is None:
            return []
        # Planned dose if the pad sat at the setpoint for the whole session.
        planned = thermal.cem43_for(setpoint, duration_s / thermal.SECONDS_PER_MINUTE)
        return [Derived("cem43_min", planned, "min",
                        f"temperature_c={setpoint:g} for {duration_s:g} s")]

    def is_cold(self, setpoint_c: float) -> bool:
        skin = self._rule("skin_temp_c")
        return skin is not None and thermal.is_cold(setpoint_c, skin)

    def dose_meter(self, prescription: Prescription, facts: Mapping[str, float] | None = None,
                   clock: Clock = time.monotonic) -> DoseMeter:
        locks = self._interlocks(prescription)
        return thermal.ThermalDoseMeter(
            pad_temp_max_c=locks.get("pad_temp_max_c"),
            pad_temp_min_c=locks.get("pad_temp_min_c"),
            cem43_budget_min=self._derived_max("cem43_min"))


class UltrasoundRules(ModalityRules):
    name = "ultrasound"
    needs_facts = frozenset({FACT_ERA})

    def explain_stop(self, t: Mapping[str, object],
                     faults: list[ReportedFault]) -> Verdict | None:
        if faults:
            return faults[0].verdict()
        if t.get("state") == "done":
            return class_verdict("timer", "")
        return None

    def latched_fault(self, t: Mapping[str, object],
                      faults: list[ReportedFault]) -> str | None:
        if t.get("state") == "fault" or faults:
            shown = f"fault {faults[0].code} ({faults[0].label})" if faults else \
                "a latched fault"
            return f"device reports {shown}"
        return None

    def verify(self, values: Mapping[str, Value], t: Mapping[str, object]) -> str | None:
        tol = self.profile.safety.tolerances
        if "intensity_w_cm2" in tol:
            problem = mismatch("intensity", t.get("intensity_w_cm2"),
                               values.get("intensity_w_cm2"), tol["intensity_w_cm2"], "W/cm2")
            if problem:
                return problem
        power, era = finite(t.get("power_w")), finite(t.get("era_cm2"))
        if "power_rel" in tol and t.get("state") == "running" and power is not None and era:
            expected = ultrasound.expected_power_w(
                float(values["intensity_w_cm2"]), era, float(values["duty_pct"]))
            if expected > 0 and abs(power - expected) > tol["power_rel"] * expected:
                return (f"measured power {power:.2f} W is not the commanded "
                        f"{expected:.2f} W (tolerance {tol['power_rel']:.0%})")
        return None

    def derived(self, values: Mapping[str, Value], duration_s: float,
                facts: Mapping[str, float]) -> list[Derived]:
        intensity, duty = _num(values, "intensity_w_cm2"), _num(values, "duty_pct")
        era = facts.get(FACT_ERA)
        if intensity is None or duty is None or era is None:
            return []
        basis = f"intensity_w_cm2={intensity:g}, era_cm2={era:g}, duty_pct={duty:g}"
        power = ultrasound.expected_power_w(intensity, era, duty)
        energy = ultrasound.nominal_energy_j(intensity, era, duty, duration_s)
        return [Derived("power_w", power, "W", basis),
                Derived("energy_j", energy, "J", f"{basis}, {duration_s:g} s")]

    def pending(self, facts: Mapping[str, float]) -> list[str]:
        return [] if FACT_ERA in facts else \
            sorted(n for n in self.profile.limits.derived if n == "energy_j")

    def dose_meter(self, prescription: Prescription, facts: Mapping[str, float] | None = None,
                   clock: Clock = time.monotonic) -> DoseMeter:
        facts = {**prescription.facts, **(facts or {})}
        rules, v = self.profile.rules, prescription.values
        return ultrasound.UltrasoundDoseMeter(
            planned_s=prescription.duration_s,
            intensity_w_cm2=float(v["intensity_w_cm2"]), duty_pct=float(v["duty_pct"]),
            era_cm2=facts.get(FACT_ERA),
            contact_min_pct=rules.get("contact_min_pct", 0.0),
            max_hold_s=rules.get("max_contact_hold_s", 0.0),
            applicator_temp_max_c=self._interlocks(prescription).get("applicator_temp_max_c"),
            energy_max_j=self._derived_max("energy_j"), clock=clock)


class TensRules(ModalityRules):
    name = "tens"

    def explain_stop(self, t: Mapping[str, object],
                     faults: list[ReportedFault]) -> Verdict | None:
        if t.get("channel_state") == "lead_off":
            return Verdict(FAULT, INTERLOCK, "lead off: the device stopped the channel")
        if t.get("patient_stop"):
            words = self._event_labels((tens.PATIENT_STOP_EVENT,)) or [tens.PATIENT_STOP]
            return Verdict(Outcome.ABORTED, StopSource.PATIENT, words[0])
        if t.get("watchdog_expired"):
            return class_verdict("link", "")
        if t.get("estop_latched"):
            return Verdict(FAULT, INTERLOCK, tens.estop_reason(
                [f.verdict().reason for f in faults], self._event_labels(tens.ESTOP_CAUSE_EVENTS)))
        if faults:
            return faults[0].verdict()
        if finite(t.get("remaining_s")) == 0:
            return class_verdict("timer", "")
        return None

    def latched_fault(self, t: Mapping[str, object],
                      faults: list[ReportedFault]) -> str | None:
        found = super().latched_fault(t, faults)
        if found is None and t.get("estop_latched"):
            return "device e-stop is latched"
        return found

    def verify(self, values: Mapping[str, Value], t: Mapping[str, object]) -> str | None:
        tol = self.profile.safety.tolerances
        if "amplitude_ma" not in tol or t.get("channel_state") != "running":
            return None
        return mismatch("delivered amplitude", t.get("amplitude_ma"),
                        values.get("amplitude_ma"), tol["amplitude_ma"], "mA")

    def derived(self, values: Mapping[str, Value], duration_s: float,
                facts: Mapping[str, float]) -> list[Derived]:
        amp, width = _num(values, "amplitude_ma"), _num(values, "pulse_width_us")
        freq, area = _num(values, "frequency_hz"), _num(values, "electrode_area_cm2")
        out: list[Derived] = []
        if amp is None or width is None:
            return out
        out.append(Derived("charge_per_phase_uc", tens.charge_per_phase_uc(amp, width), "uC",
                           f"amplitude_ma={amp:g}, pulse_width_us={width:g}"))
        if freq is None or area is None or area <= 0:
            return out
        basis = f"amplitude_ma={amp:g}, pulse_width_us={width:g}, frequency_hz={freq:g}"
        try:
            rms = tens.rms_current_ma(amp, width, freq)
        except ValueError:
            return out
        out.append(Derived("current_rms_ma", rms, "mA", basis))
        out.append(Derived("current_density_rms_ma_cm2", rms / area, "mA/cm2",
                           f"{basis}, electrode_area_cm2={area:g}"))
        return out

    def _rate(self) -> float | None:
        return self._rule("ramp_rate_ma_s")

    def _max_ramp(self, facts: Mapping[str, float]) -> float | None:
        return facts.get(FACT_MAX_RAMP, self.profile.rules.get(RULE_MAX_RAMP))

    def session_values(self, values: Mapping[str, Value],
                       facts: Mapping[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        channel, amp, rate = _num(values, "channel"), _num(values, "amplitude_ma"), self._rate()
        if channel is not None:
            out["channel_mask"] = 1 << int(channel)
        if amp is not None and rate is not None and rate > 0:
            out["ramp_up_s"] = tens.ramp_up_s(amp, rate, self._max_ramp(facts))
        return out

    def rule_problems(self, values: Mapping[str, Value],
                      facts: Mapping[str, float]) -> list[tuple[str, str]]:
        amp, rate = _num(values, "amplitude_ma"), self._rate()
        if amp is None or rate is None or rate <= 0:
            return []
        ramp = self.session_values(values, facts).get("ramp_up_s", 0.0)
        reason = tens.ramp_problem(amp, ramp, rate)
        if reason is None:
            return []
        cap = self._max_ramp(facts)
        return [("amplitude_ma", f"{reason} (the device ramps for at most {cap:g} s)"
                 if cap is not None else reason)]

    def dose_meter(self, prescription: Prescription, facts: Mapping[str, float] | None = None,
                   clock: Clock = time.monotonic) -> DoseMeter:
        v = prescription.values
        return tens.TensDoseMeter(
            pulse_width_us=float(v["pulse_width_us"]), frequency_hz=float(v["frequency_hz"]),
            electrode_area_cm2=float(v["electrode_area_cm2"]),
            impedance_max_ohm=self._interlocks(prescription).get("impedance_max_ohm"),
            density_max_ma_cm2=self._derived_max("current_density_rms_ma_cm2"))


_RULES: dict[str, type[ModalityRules]] = {
    "thermal": ThermalRules, "ultrasound": UltrasoundRules, "tens": TensRules}


def modality_for(profile: Profile) -> ModalityRules:
    """The modality rules for a profile's modality."""
    return _RULES[profile.modality](profile)

