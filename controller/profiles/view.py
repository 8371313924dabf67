"""What the profile checks read of a profile, as a structural type.

The checks (cross_checks, ranges, backstops) and `device_identity` take a
`ProfileView` rather than `controller.profiles.model.Profile`: the model calls the
checks from its validator, so naming the model here would make the two import
each other. `Profile` satisfies this protocol; mypy proves it where the model
passes itself to the checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from controller.modality.contract import Modality
from controller.profiles.sections import (
    Calibration,
    FaultCode,
    Identity,
    Limits,
    Operations,
    Parameter,
    Safety,
    TelemetrySource,
)
from protocols.map_framed import FramedMap
from protocols.map_modbus import ModbusMap
from protocols.map_scpi import ScpiMap


class ProfileView(Protocol):
    """The read-only surface of a validated (or validating) profile."""

    @property
    def id(self) -> str: ...
    @property
    def modality(self) -> Modality: ...
    @property
    def protocol(self) -> ModbusMap | ScpiMap | FramedMap: ...
    @property
    def operations(self) -> Operations: ...
    @property
    def telemetry(self) -> Mapping[str, str | TelemetrySource]: ...
    @property
    def faults(self) -> Mapping[str, Mapping[int, FaultCode]]: ...
    @property
    def parameters(self) -> Mapping[str, Parameter]: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def rules(self) -> Mapping[str, float]: ...
    @property
    def safety(self) -> Safety: ...
    @property
    def calibration(self) -> Calibration | None: ...
    @property
    def identity(self) -> Identity | None: ...

    def telemetry_source(self, name: str) -> TelemetrySource: ...
    def variable_names(self) -> set[str]: ...
    def operation_results(self, op_name: str) -> set[str]: ...
    def expand_template(self, text: str) -> list[str]: ...
