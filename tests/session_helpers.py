"""Helpers for session tests: run a session against a simulated device, watch the device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.modality.prescription import build_prescription
from controller.profiles.loader import resolve_profile
from controller.records.store import RecordStore
from controller.session.report import SessionReport
from controller.session.worker import Session
from simulator.model_base import OutputChange
from simulator.server import SimulatedDevice

# Prescriptions that every shipped device accepts, for short sessions.
SETTINGS: dict[str, dict[str, str]] = {
    "hc-200": {"temperature_c": "40"},
    "us-300": {"frequency_mhz": "1", "intensity_w_cm2": "1.5", "duty_pct": "100"},
    "es-4": {"frequency_hz": "100", "pulse_width_us": "200", "amplitude_ma": "10"},
}


@dataclass
class ApplyLog:
    """Every write the device model executed: (t, action, values)."""

    calls: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    def first(self, action: str) -> float | None:
        return next((t for t, a, _ in self.calls if a == action), None)

    def value_before(self, name: str, t: float) -> Any:
        found = None
        for when, _, values in self.calls:
            if when <= t and name in values:
                found = values[name]
        return found


def watch(device: SimulatedDevice) -> ApplyLog:
    log = ApplyLog()
    original = device.model.apply

    def apply(action: str, values: dict[str, Any], now: float) -> None:
        log.calls.append((now, action, dict(values)))
        original(action, values, now)

    device.model.apply = apply  # type: ignore[method-assign]
    return log


def history(device: SimulatedDevice) -> list[OutputChange]:
    with device.model.lock:
        return list(device.model.history)


def on_time(device: SimulatedDevice) -> tuple[float, str]:
    """Seconds the device's output was on in its first run, and what stopped it."""
    changes = history(device)
    on = next(c for c in changes if c.on)
    off = next(c for c in changes if not c.on and c.t >= on.t)
    return off.t - on.t, off.cause


def make_session(pid: str, device: SimulatedDevice, duration: float,
                 settings: dict[str, str] | None = None, store: RecordStore | None = None,
                 **kw: Any) -> Session:
    profile = resolve_profile(pid).profile
    rx = build_prescription(profile, settings or SETTINGS[pid], duration)
    return Session(profile, rx, device.port, store=store, **kw)


def run(pid: str, device: SimulatedDevice, duration: float,
        settings: dict[str, str] | None = None, **kw: Any) -> SessionReport:
    return make_session(pid, device, duration, settings, **kw).run()
