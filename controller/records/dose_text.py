"""The delivered dose in clinical terms: each figure named with its unit (and UCUM code for
FHIR), and one sentence on what the figures mean for the therapy.

- Heat: the thermal dose in CEM43 minutes (cumulative equivalent minutes at 43 °C: the minutes
  at 43 °C that would heat the tissue as much as the session did), with the highest pad
  temperature. Cooling has no CEM43: cold therapy is told by its pad temperature and time.
- Ultrasound: the acoustic energy in J and per area of the treatment head in J/cm² (energy
  divided by the effective radiating area, ERA), over the coupled treatment time.
- TENS: the peak charge per phase in µC and the peak r.m.s. current density under an electrode
  in mA/cm², over the stimulation time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from controller.records.clinical import UCUM, duration_text, therapy_kind, unit_for, with_unit
from controller.records.history import format_number, number

# The energy density is not recorded: it is computed from these two figures.
ENERGY_DENSITY_KEY = "energy_density_j_cm2"
# Below this a figure reads "< 0.001": a few seconds near body temperature give a CEM43 of
# 1e-9 min, which is zero for any clinical purpose and unreadable in scientific notation.
SMALLEST_SHOWN = 0.001
# How a clinician reads each figure (issue 15): the thermal dose to 2 significant figures
# (4.2 CEM43 min; its uncertainty is larger than that), energies to 0.1 J. Other figures keep
# format_number's 4 significant digits.
SIGNIFICANT = {"cem43_min": 2}
DECIMALS = {"energy_j": 1, "nominal_energy_j": 1, ENERGY_DENSITY_KEY: 1}


def clinical_number(key: str, value: float) -> str:
    """`value` of the record figure `key` rounded as a clinician reads it, half up, without
    trailing zeros or scientific notation: cem43_min 4.2, 0.012, 120; energy_j 2250, 12.3."""
    if key in SIGNIFICANT and value != 0:
        exact = Decimal(repr(value))
        step = Decimal(1).scaleb(exact.adjusted() - SIGNIFICANT[key] + 1)
        return _plain(exact.quantize(step, rounding=ROUND_HALF_UP) if step < 1
                      else (exact / step).quantize(Decimal(1), rounding=ROUND_HALF_UP) * step)
    if key in DECIMALS:
        step = Decimal(1).scaleb(-DECIMALS[key])
        return _plain(Decimal(repr(value)).quantize(step, rounding=ROUND_HALF_UP))
    return format_number(value)


def _plain(number_: Decimal) -> str:
    text = f"{number_:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class DoseLine:
    key: str
    """The record name (`cem43_min`), or ENERGY_DENSITY_KEY for the computed J/cm²."""
    label: str
    value: float
    unit: str

    @property
    def ucum(self) -> str:
        return UCUM.get(self.unit, "1")

    def text(self) -> str:
        if self.unit == "s":
            return duration_text(self.value)
        if 0 < abs(self.value) < SMALLEST_SHOWN:
            return f"< {SMALLEST_SHOWN:g} {self.unit}".rstrip()
        if self.key in SIGNIFICANT or self.key in DECIMALS:
            return f"{clinical_number(self.key, self.value)} {self.unit}".rstrip()
        return with_unit(self.value, self.unit)


# Per therapy, the figures worth a clinician's eye, in order, with their clinical names.
DOSE_LABELS: dict[str, tuple[tuple[str, str], ...]] = {
    "heat": (("cem43_min", "Thermal dose (CEM43)"), ("max_pad_temp_c", "Highest pad temperature"),
             ("output_s", "Output time")),
    "cold": (("min_pad_temp_c", "Lowest pad temperature"),
             ("max_pad_temp_c", "Highest pad temperature"), ("output_s", "Output time")),
    "ultrasound": (("energy_j", "Acoustic energy"), (ENERGY_DENSITY_KEY, "Energy per area"),
                   ("treatment_s", "Treatment time (coupled)"),
                   ("hold_s", "Time held without contact"),
                   ("era_cm2", "Effective radiating area (ERA)"),
                   ("max_applicator_temp_c", "Highest applicator temperature")),
    "tens": (("max_charge_per_phase_uc", "Peak charge per phase"),
             ("max_current_density_rms_ma_cm2", "Peak r.m.s. current density"),
             ("max_amplitude_ma", "Peak amplitude"), ("stimulation_s", "Stimulation time")),
}
# Names for the figures of a therapy's record outside its list (older records, other keys).
OTHER_LABELS = {
    "nominal_energy_j": "Nominal energy (intensity × ERA × duty × time)",
    "min_pad_temp_c": "Lowest pad temperature", "cem43_min": "Thermal dose (CEM43)",
}


def energy_density(dose: Mapping[str, Any]) -> float | None:
    """Delivered acoustic energy per cm² of the treatment head (J/cm²), when both are known."""
    energy, era = number(dose.get("energy_j")), number(dose.get("era_cm2"))
    if energy is None or era is None or era <= 0:
        return None
    return energy / era


def dose_lines(prescription: Mapping[str, Any] | None, dose: Mapping[str, Any] | None,
               *, others: bool = True) -> list[DoseLine]:
    """The dose figures in clinical order and words; with `others`, every other numeric
    figure of the record after them."""
    dose = dose or {}
    kind = therapy_kind(prescription, dose)
    values = dict(dose)
    density = energy_density(dose)
    if density is not None:
        values[ENERGY_DENSITY_KEY] = density
    lines: list[DoseLine] = []
    listed = DOSE_LABELS.get(kind, ())
    for key, label in listed:
        value = number(values.get(key))
        if value is not None:
            lines.append(DoseLine(key, label, value, _unit(key)))
    seen = {key for key, _ in listed}
    for key, raw in dose.items() if others or not listed else ():
        value = number(raw)
        if key not in seen and value is not None:
            lines.append(DoseLine(key, OTHER_LABELS.get(key, key.replace("_", " ")), value,
                                  _unit(key)))
    return lines


def _unit(key: str) -> str:
    return "J/cm²" if key == ENERGY_DENSITY_KEY else unit_for(key)


def dose_meaning(prescription: Mapping[str, Any] | None, dose: Mapping[str, Any] | None) -> str:
    """One or two sentences on what the delivered figures mean; '' without a dose."""
    if not dose:
        return ""
    rx = prescription or {}
    kind = therapy_kind(rx, dose)
    sentence = _MEANINGS.get(kind)
    return sentence(rx, dose) if sentence else ""


def _limit(rx: Mapping[str, Any], name: str) -> float | None:
    limits = (rx.get("derived_limits") or {}).get(name) or {}
    return number(limits.get("max"))


def _heat(rx: Mapping[str, Any], dose: Mapping[str, Any]) -> str:
    cem = number(dose.get("cem43_min"))
    if cem is None:
        return ""
    shown = (f"< {SMALLEST_SHOWN:g}" if 0 < cem < SMALLEST_SHOWN
             else clinical_number("cem43_min", cem))
    text = (f"Thermal dose {shown} CEM43 min: the tissue under the pad was heated as much as "
            f"{shown} minutes held at 43 °C would heat it")
    peak = number(dose.get("max_pad_temp_c"))
    if peak is not None:
        text += f" (highest pad temperature {format_number(peak)} °C)"
    limit = _limit(rx, "cem43_min")
    if limit is not None:
        text += f"; the session's limit was {format_number(limit)} CEM43 min"
    return text + "."


def _cold(rx: Mapping[str, Any], dose: Mapping[str, Any]) -> str:
    low = number(dose.get("min_pad_temp_c"))
    output = number(dose.get("output_s"))
    setpoint = number((rx.get("values") or {}).get("temperature_c"))
    parts = []
    if setpoint is not None:
        parts.append(f"pad set to {format_number(setpoint)} °C")
    if low is not None:
        parts.append(f"lowest measured {format_number(low)} °C")
    if not parts and output is None:
        return ""
    text = "Cold therapy: " + ", ".join(parts) if parts else "Cold therapy"
    if output is not None:
        text += f", for {duration_text(output)} of output"
    return text + ". CEM43 measures heating and does not apply to cooling."


def _ultrasound(rx: Mapping[str, Any], dose: Mapping[str, Any]) -> str:
    energy = number(dose.get("energy_j"))
    if energy is None:
        return ""
    text = f"{clinical_number('energy_j', energy)} J of acoustic energy was delivered"
    era = number(dose.get("era_cm2"))
    density = energy_density(dose)
    if era is not None and density is not None:
        text += (f" through an effective radiating area of {format_number(era)} cm², that is "
                 f"{clinical_number(ENERGY_DENSITY_KEY, density)} J/cm² at the treatment "
                 "head")
    treatment = number(dose.get("treatment_s"))
    if treatment is not None:
        text += f", during {duration_text(treatment)} of coupled treatment"
    hold = number(dose.get("hold_s"))
    if hold:
        text += f" (output held for {duration_text(hold)} while contact was poor)"
    return text + "."


def _tens(rx: Mapping[str, Any], dose: Mapping[str, Any]) -> str:
    charge = number(dose.get("max_charge_per_phase_uc"))
    density = number(dose.get("max_current_density_rms_ma_cm2"))
    if charge is None and density is None:
        return ""
    parts = []
    if charge is not None:
        amplitude = number(dose.get("max_amplitude_ma"))
        at = f" (at {format_number(amplitude)} mA peak)" if amplitude is not None else ""
        part = f"peak charge per phase {format_number(charge)} µC{at}"
        limit = _limit(rx, "charge_per_phase_uc")
        if limit is not None:
            part += f", limit {format_number(limit)} µC"
        parts.append(part)
    if density is not None:
        part = (f"r.m.s. current density under an electrode at most {format_number(density)} "
                "mA/cm²")
        limit = _limit(rx, "current_density_rms_ma_cm2")
        if limit is not None:
            part += f", limit {format_number(limit)} mA/cm²"
        parts.append(part)
    text = "; ".join(parts)
    stimulation = number(dose.get("stimulation_s"))
    if stimulation is not None:
        text += f"; over {duration_text(stimulation)} of stimulation"
    return text[0].upper() + text[1:] + "."


_MEANINGS = {"heat": _heat, "cold": _cold, "ultrasound": _ultrasound, "tens": _tens}
