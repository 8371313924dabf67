"""Fault injection options: `--fault NAME=VALUE` on the command line, or keyword arguments.

Times are seconds of output: measured from the moment the device first started
an output, so a test can say "go silent 1.5 s into the session" whatever the
connection set-up took.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

# Which faults make sense for which modality; link faults apply to all.
LINK_FAULTS = frozenset({"silent_at", "disconnect_at", "garble", "delay_ms", "seed"})
MODALITY_FAULTS: dict[str, frozenset[str]] = {
    "thermal": frozenset({"overtemp_at", "undertemp_at", "pad_off_at", "miscal_gain",
                          "miscal_offset"}),
    "ultrasound": frozenset({"overtemp_at", "contact_lost", "no_applicator", "miscal_gain"}),
    "tens": frozenset({"lead_off_at", "patient_stop_at", "overcurrent_at", "miscal_gain",
                       "miscal_offset"}),
}


class FaultError(ValueError):
    """A fault option is malformed or does not apply; the message says which."""


@dataclass(frozen=True)
class FaultPlan:
    silent_at: float | None = None
    """Stop answering after T s of output (the device keeps running: its watchdog acts)."""
    disconnect_at: float | None = None
    """Close the port after T s of output (USB unplugged)."""
    garble: float = 0.0
    """Fraction of replies corrupted (one byte flipped)."""
    delay_ms: float = 0.0
    """Extra delay before every reply."""
    seed: int = 0
    """Random seed for garbling, so a failing run can be repeated."""
    overtemp_at: float | None = None
    """Heat the pad / applicator face past its trip after T s of output."""
    undertemp_at: float | None = None
    pad_off_at: float | None = None
    contact_lost: tuple[float, float] | None = None
    """Ultrasound coupling lost from T0 to T1 s of output."""
    no_applicator: bool = False
    lead_off_at: float | None = None
    patient_stop_at: float | None = None
    overcurrent_at: float | None = None
    miscal_gain: float = 1.0
    """The device's sensor/output reads this factor off the truth (for calibration tests)."""
    miscal_offset: float = 0.0

    def names_set(self) -> set[str]:
        default = FaultPlan()
        return {f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}

    def check_applies(self, modality: str) -> None:
        allowed = LINK_FAULTS | MODALITY_FAULTS.get(modality, frozenset())
        bad = sorted(self.names_set() - allowed)
        if bad:
            raise FaultError(f"fault {', '.join(bad)} does not apply to a {modality} device "
                             f"(allowed: {', '.join(sorted(allowed))})")


FAULT_NAMES = tuple(f.name for f in fields(FaultPlan))


def parse_faults(options: list[str]) -> FaultPlan:
    """Build a plan from `NAME=VALUE` strings, with a clear message for each mistake."""
    values: dict[str, object] = {}
    for option in options:
        name, sep, text = option.partition("=")
        name = name.strip()
        if not sep or not name:
            raise FaultError(f"fault '{option}' is not NAME=VALUE")
        if name not in FAULT_NAMES:
            raise FaultError(f"unknown fault '{name}' (known: {', '.join(FAULT_NAMES)})")
        if name in values:
            raise FaultError(f"fault '{name}' given twice")
        values[name] = _parse_value(name, text.strip())
    return FaultPlan(**values)  # type: ignore[arg-type]


def _parse_value(name: str, text: str) -> object:
    if name == "contact_lost":
        parts = text.split(",")
        if len(parts) != 2:
            raise FaultError("contact_lost takes T0,T1 (seconds of output)")
        t0, t1 = (_number(name, p) for p in parts)
        if not 0 <= t0 < t1:
            raise FaultError(f"contact_lost needs 0 <= T0 < T1, got {text}")
        return (t0, t1)
    if name == "no_applicator":
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise FaultError("no_applicator takes 1 or 0")
        return text.lower() in ("1", "true", "yes")
    if name == "seed":
        try:
            return int(text)
        except ValueError:
            raise FaultError(f"seed must be an integer, got '{text}'") from None
    value = _number(name, text)
    if name == "garble" and not 0.0 <= value <= 1.0:
        raise FaultError(f"garble is a fraction 0..1, got {text}")
    if name == "miscal_gain" and not 0.5 <= value <= 2.0:
        raise FaultError(f"miscal_gain must be within 0.5..2, got {text}")
    if name not in ("miscal_offset",) and value < 0:
        raise FaultError(f"{name} must not be negative, got {text}")
    return value


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FaultError(f"{name} takes a number, got '{text}'") from None
    if not math.isfinite(value):
        raise FaultError(f"{name} must be finite, got '{text}'")
    return value
