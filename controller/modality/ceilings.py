"""Clinical ceilings: the most any profile or clinic may allow, per modality (docs/design.md §3.2).

These are modality knowledge, so they live in code and not in editable profile
text (docs/design.md §2.11). A profile's clinical limits, regimes, derived limits,
interlocks and rules may only narrow them: validation refuses a profile that
goes past a ceiling or lacks a limit a ceiling requires, and at request time
the effective limit is the tightest of ceiling, absolute and clinical, so even a
profile that got past validation cannot deliver above a ceiling.

Keys are the modality contract's names (parameter meanings), never a device
model: any TENS device is bound by the TENS ceilings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

CEILING = "ceiling"
DURATION = "duration_s"

# -- the table (docs/design.md §3.2: the values live only here) -------------------
# All modalities: a session is at most 30 min.
SESSION_MAX_S = 1800.0
# Heat: pad setpoint at most 45 degC, and stop when the pad passes 45 degC.
HEAT_SETPOINT_MAX_C = 45.0
PAD_STOP_MAX_C = 45.0
# CEM43 budget per session. The design leaves the budget to the profile; this caps
# it at the shipped heat/cold unit's budget, 60 CEM43 min: a full 30-min session at 44 degC
# (2.0 per min), one degree under the setpoint ceiling; at 45 degC it ends the session
# after 15 min. Reported skin injury starts from a few tens of CEM43 minutes upward,
# so no profile may allow more than one such maximal heat session.
CEM43_BUDGET_MAX_MIN = 60.0
# Cold: a setpoint below neutral skin temperature. 33 degC is the value the thermal
# module's cold regime has always used (the shipped heat/cold profile's `skin_temp_c`
# and its cold regime's `below`); a profile may only raise it (treat more setpoints as cold).
COLD_BELOW_C = 33.0
COLD_SETPOINT_MIN_C = 10.0
COLD_SESSION_MAX_S = 1200.0
# Ultrasound: 1 or 3 MHz, at most 2.0 W/cm2 (the device's 3.0 stays its absolute
# limit in the profile), stop when the applicator passes 41 degC.
US_FREQUENCIES_MHZ = (1.0, 3.0)
US_INTENSITY_MAX_W_CM2 = 2.0
US_APPLICATOR_STOP_MAX_C = 41.0
# TENS: 1-150 Hz, 50-400 us, at most 80 mA; charge per phase at most 80 mA x 400 us
# = 32 uC; r.m.s. current density at most 2 mA/cm2; ramp up at most 10 mA/s.
TENS_FREQUENCY_HZ = (1.0, 150.0)
TENS_PULSE_WIDTH_US = (50.0, 400.0)
TENS_AMPLITUDE_MAX_MA = 80.0
TENS_CHARGE_MAX_UC = 32.0
TENS_DENSITY_MAX_MA_CM2 = 2.0
TENS_RAMP_RATE_MAX_MA_S = 10.0


@dataclass(frozen=True)
class Ceiling:
    """The widest a value may be: min/max, or a discrete set of allowed values."""

    min: float | None = None
    max: float | None = None
    allowed: tuple[float, ...] | None = None
    unit: str = ""

    def text(self) -> str:
        if self.allowed is not None:
            return "one of " + ", ".join(f"{a:g}" for a in self.allowed) + _u(self.unit)
        lo = "" if self.min is None else f"{self.min:g}"
        hi = "" if self.max is None else f"{self.max:g}"
        return f"[{lo}..{hi}]{_u(self.unit)}"


@dataclass(frozen=True)
class CeilingRegime:
    """Ceilings that apply while `parameter` is below `below` (cold therapy)."""

    name: str
    parameter: str
    below: float
    limits: Mapping[str, Ceiling]

    def holds(self, values: Mapping[str, object]) -> bool:
        v = values.get(self.parameter)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v < self.below


@dataclass(frozen=True)
class ModalityCeilings:
    modality: str
    limits: Mapping[str, Ceiling]
    """Prescription parameters and `duration_s`."""
    derived: Mapping[str, Ceiling] = field(default_factory=dict)
    """Quantities the modality computes (dose, charge, density): a max each."""
    interlocks: Mapping[str, Ceiling] = field(default_factory=dict)
    """Thresholds of measured values: the profile's threshold must lie inside."""
    rules: Mapping[str, Ceiling] = field(default_factory=dict)
    regimes: tuple[CeilingRegime, ...] = ()


_SESSION = {DURATION: Ceiling(max=SESSION_MAX_S, unit="s")}

CEILINGS: dict[str, ModalityCeilings] = {
    "thermal": ModalityCeilings(
        "thermal",
        limits={**_SESSION, "temperature_c": Ceiling(max=HEAT_SETPOINT_MAX_C, unit="degC")},
        derived={"cem43_min": Ceiling(max=CEM43_BUDGET_MAX_MIN, unit="min")},
        interlocks={"pad_temp_max_c": Ceiling(max=PAD_STOP_MAX_C, unit="degC")},
        rules={"skin_temp_c": Ceiling(min=COLD_BELOW_C, unit="degC")},
        regimes=(CeilingRegime("cold", "temperature_c", COLD_BELOW_C, {
            "temperature_c": Ceiling(min=COLD_SETPOINT_MIN_C, unit="degC"),
            DURATION: Ceiling(max=COLD_SESSION_MAX_S, unit="s")}),),
    ),
    "ultrasound": ModalityCeilings(
        "ultrasound",
        limits={**_SESSION,
                "frequency_mhz": Ceiling(allowed=US_FREQUENCIES_MHZ, unit="MHz"),
                "intensity_w_cm2": Ceiling(max=US_INTENSITY_MAX_W_CM2, unit="W/cm2")},
        interlocks={"applicator_temp_max_c": Ceiling(max=US_APPLICATOR_STOP_MAX_C,
                                                     unit="degC")},
    ),
    "tens": ModalityCeilings(
        "tens",
        limits={**_SESSION,
                "frequency_hz": Ceiling(*TENS_FREQUENCY_HZ, unit="Hz"),
                "pulse_width_us": Ceiling(*TENS_PULSE_WIDTH_US, unit="us"),
                "amplitude_ma": Ceiling(max=TENS_AMPLITUDE_MAX_MA, unit="mA")},
        derived={"charge_per_phase_uc": Ceiling(max=TENS_CHARGE_MAX_UC, unit="uC"),
                 "current_density_rms_ma_cm2": Ceiling(max=TENS_DENSITY_MAX_MA_CM2,
                                                       unit="mA/cm2")},
        rules={"ramp_rate_ma_s": Ceiling(max=TENS_RAMP_RATE_MAX_MA_S, unit="mA/s")},
    ),
}


def ceilings_for(modality: str) -> ModalityCeilings:
    """The ceiling table of one modality (KeyError for an unknown modality)."""
    return CEILINGS[modality]


def ceiling_regimes(modality: str, values: Mapping[str, object]) -> list[str]:
    """Names of the code regimes whose condition holds for these values ("cold")."""
    return [r.name for r in CEILINGS[modality].regimes if r.holds(values)]


def limit_ceilings(modality: str, name: str,
                   regimes: tuple[str, ...] | list[str] = ()) -> list[tuple[str, Ceiling]]:
    """Every ceiling on a parameter or `duration_s`, as (tier name, ceiling).

    Tier names are "ceiling" and "ceiling (cold)"; a record shows them as the
    source of a limit.
    """
    table = CEILINGS[modality]
    out = []
    if name in table.limits:
        out.append((CEILING, table.limits[name]))
    for regime in table.regimes:
        if regime.name in regimes and name in regime.limits:
            out.append((f"{CEILING} ({regime.name})", regime.limits[name]))
    return out


def tightest_max(profile_value: float | None, ceiling: Ceiling | None) -> float | None:
    """The lower of a profile's maximum and a ceiling's (either may be absent)."""
    caps = [v for v in (profile_value, ceiling.max if ceiling else None) if v is not None]
    return min(caps) if caps else None


def tightest_min(profile_value: float | None, ceiling: Ceiling | None) -> float | None:
    """The higher of a profile's minimum and a ceiling's (either may be absent)."""
    floors = [v for v in (profile_value, ceiling.min if ceiling else None) if v is not None]
    return max(floors) if floors else None


def effective_rule(modality: str, name: str, profile_value: float | None) -> float | None:
    """A rule's value with its ceiling applied (the ramp rate never above 10 mA/s)."""
    c = CEILINGS[modality].rules.get(name)
    if c is not None and c.max is not None:
        return tightest_max(profile_value, c)
    if c is not None and c.min is not None:
        return tightest_min(profile_value, c)
    return profile_value


def _u(unit: str) -> str:
    return f" {unit}" if unit else ""
