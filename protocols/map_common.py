"""Building blocks shared by the three protocol map formats."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=48)]
"""Names of map entries and fields: lower-case, digits and underscores."""

Scalar = int | float | str | bool

ResultKind = Literal["number", "flag", "text"]
"""How a read result arrives: a number, a yes/no flag (a named bit), or text."""

FaultClass = Literal["none", "interlock", "device_fault", "link", "patient", "timer"]
"""What a device fault code or event means for a session, whatever the device calls it:
`none` (no fault), `interlock` (a protective trip: over-temperature, lead off),
`device_fault` (the device failed: sensor, internal), `link` (its communication
watchdog ran out), `patient` (the patient stopped it), `timer` (its session timer
ended the output)."""


def scalar_text(value: Scalar) -> str:
    """A value as the maps write it in text: booleans lower-case, whole floats without
    ".0" (telemetry map keys, `{var}` templates, identity fields)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class StrictModel(BaseModel):
    """Unknown keys are errors; instances are immutable once validated.

    Strict types: YAML `yes` is not the number 1 and `"19200"` is not a baud rate.
    NaN and infinity are refused: a NaN limit would never trip.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ValueSpec(StrictModel):
    """How one raw value on the wire relates to an engineering value.

    engineering = raw * scale. `min`/`max`/`allowed` are the device's accepted
    raw values as its manual states them: a value is accepted when it is one of
    `allowed` or inside `min..max` (given both, either will do: "0, or
    100..10000"). An engine refuses (never clips) any other value.
    """

    scale: float = Field(1.0, gt=0)
    unit: str = ""
    description: str = ""
    min: float | None = None
    max: float | None = None
    allowed: list[Scalar] | None = None
    labels: dict[int, str] | None = None
    """Meaning of particular raw values (fault codes, states)."""

    @model_validator(mode="after")
    def _range_ordered(self) -> ValueSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        if self.allowed is not None and len(self.allowed) == 0:
            raise ValueError("allowed must list at least one value")
        return self

    def raw_in_range(self, raw: Any) -> bool:
        """True when a raw value is one the device accepts."""
        if self.allowed is not None and raw in self.allowed:
            return True
        has_range = self.min is not None or self.max is not None
        if not has_range:
            return self.allowed is None
        if not isinstance(raw, (int, float)) or isinstance(raw, bool):
            return False
        return (self.min is None or raw >= self.min) and (self.max is None or raw <= self.max)

    def describe_range(self) -> str:
        """Human text for the accepted raw values, for error messages."""
        parts = []
        if self.allowed is not None:
            parts.append("one of " + ", ".join(str(a) for a in self.allowed))
        if self.min is not None and self.max is not None:
            parts.append(f"{self.min:g}..{self.max:g}")
        elif self.min is not None:
            parts.append(f">= {self.min:g}")
        elif self.max is not None:
            parts.append(f"<= {self.max:g}")
        return " or ".join(parts) or "any"


def check_bits(bits: dict[str, int] | None, width: int, where: str) -> None:
    """Bit names must point at distinct bits inside the value's width."""
    if bits is None:
        return
    seen: dict[int, str] = {}
    for name, bit in bits.items():
        if not 0 <= bit < width:
            raise ValueError(f"{where}: bit '{name}' is {bit}, outside 0..{width - 1}")
        if bit in seen:
            raise ValueError(f"{where}: bits '{seen[bit]}' and '{name}' both use bit {bit}")
        seen[bit] = name
