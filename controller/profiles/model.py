"""The device profile: everything about one device model, as validated data.

Field-level rules live on the section models (controller.profiles.sections); the checks
that span sections live in controller.profiles.cross_checks (with ranges and backstops),
which the validator here runs. `device_identity` is in controller.profiles.identity and
the value tests in controller.profiles.values; they are imported here so existing
imports keep working.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from controller.modality.contract import SESSION_VARIABLES, Modality
from controller.profiles.cross_checks import profile_problems
from controller.profiles.grid import INTEGRAL_TYPES
from controller.profiles.identity import WORD_BITS, WORD_MAX, IdentityError, device_identity
from controller.profiles.sections import (
    Calibration,
    FaultCode,
    FaultTable,
    Identity,
    Limits,
    Link,
    Operations,
    Parameter,
    Safety,
    TelemetrySource,
)
from controller.profiles.templates import expand_template
from controller.profiles.values import DURATION, STEP_SLACK, on_step, within
from protocols.map_common import Identifier, StrictModel
from protocols.map_framed import FramedMap
from protocols.map_modbus import ModbusMap
from protocols.map_scpi import ScpiMap

__all__ = [
    "DURATION", "INTEGRAL_TYPES", "PROFILE_FORMAT", "STEP_SLACK", "WORD_BITS", "WORD_MAX",
    "IdentityError", "Profile", "ProtocolMap", "device_identity", "on_step", "within",
]

PROFILE_FORMAT = 1

ProtocolMap = Annotated[ModbusMap | ScpiMap | FramedMap, Field(discriminator="family")]


class Profile(StrictModel):
    profile_format: Literal[1] = 1
    spec_version: str = Field(min_length=1)
    """Revision of the vendor's interface document this profile follows."""
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=40)
    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    modality: Modality
    description: str = ""
    link: Link
    protocol: ProtocolMap
    operations: Operations
    telemetry: dict[Identifier, str | TelemetrySource]
    faults: dict[Identifier, FaultTable] = Field(default_factory=dict)
    """Per fault-code telemetry name: what each code means and its class."""
    parameters: dict[Identifier, Parameter]
    limits: Limits
    rules: dict[Identifier, float] = Field(default_factory=dict)
    safety: Safety
    calibration: Calibration | None = None
    identity: Identity | None = None
    """Which `identify` results hold the model, serial number and firmware."""

    @model_validator(mode="after")
    def _cross_checks(self) -> Profile:
        problems = profile_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- helpers used by the controller ---------------------------------------
    def telemetry_source(self, name: str) -> TelemetrySource:
        src = self.telemetry[name]
        return TelemetrySource(source=src) if isinstance(src, str) else src

    def variable_names(self) -> set[str]:
        return set(self.parameters) | SESSION_VARIABLES

    def fault(self, telemetry: str, code: int) -> FaultCode | None:
        """What a fault code of a telemetry value means (None: the profile lists no such
        code, which the checks treat as an unknown device fault)."""
        return self.faults.get(telemetry, {}).get(code)

    def operation_results(self, op_name: str) -> set[str]:
        """Every result key an operation's steps yield."""
        out: set[str] = set()
        for step in self.operations.defined().get(op_name, []):
            for name in step.read or []:
                out |= self.protocol.result_keys(name)
            if step.write:
                out |= self.protocol.result_keys(step.write)
        return out

    def expand_template(self, text: str) -> list[str]:
        """Every concrete form of `text` over the allowed values of its `{param}`s."""
        return expand_template(self.parameters, text)
