"""Build and run a simulated device from a profile: model + family endpoint + pty."""

from __future__ import annotations

import importlib
import time
from types import TracebackType

from controller.profiles.model import Profile
from simulator.binding import Binding
from simulator.endpoint import Endpoint
from simulator.faults import FaultPlan
from simulator.model_base import Clock, ModelBase
from simulator.pty_server import PtyServer

# Implementations by modality and by protocol family ("module:Class").
MODELS = {
    "thermal": "simulator.thermal_model:ThermalModel",
    "ultrasound": "simulator.ultrasound_model:UltrasoundModel",
    "tens": "simulator.tens_model:TensModel",
}
ENDPOINTS = {
    "modbus_rtu": "simulator.modbus_device:ModbusEndpoint",
    "scpi_line": "simulator.scpi_device:ScpiEndpoint",
    "framed_binary": "simulator.framed_device:FramedEndpoint",
}


def _load(spec: str) -> type:
    module, _, name = spec.partition(":")
    cls: type = getattr(importlib.import_module(module), name)
    return cls


def build_model(profile: Profile, faults: FaultPlan, clock: Clock = time.monotonic) -> ModelBase:
    model: ModelBase = _load(MODELS[profile.modality])(profile=profile, faults=faults,
                                                       clock=clock)
    return model


def build_endpoint(profile: Profile, model: ModelBase) -> Endpoint:
    endpoint: Endpoint = _load(ENDPOINTS[profile.protocol.family])(
        profile, model, Binding.of(profile))
    return endpoint


class SimulatedDevice:
    """A device in software on a pseudo-terminal. Use as a context manager."""

    def __init__(self, profile: Profile, faults: FaultPlan | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.profile = profile
        self.faults = faults or FaultPlan()
        self.faults.check_applies(profile.modality)
        self.model = build_model(profile, self.faults, clock)
        self.endpoint = build_endpoint(profile, self.model)
        self.server = PtyServer(self.endpoint, self.faults, clock)
        self.port = self.server.port

    def start(self) -> SimulatedDevice:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> SimulatedDevice:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
