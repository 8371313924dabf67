"""A read-back that is not a finite number never passes verification.

NaN compares false with every tolerance, so `abs(nan - commanded) > tol` is False: before
the shared reader (controller/modality/readings.py) a NaN intensity or setpoint read back
from a device counted as "as commanded". Now it is a mismatch, and the session faults.
"""

from __future__ import annotations

import math

import pytest

from controller.modality.prescription import build_prescription
from controller.profiles.loader import resolve_profile
from controller.session import checks


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(("pid", "settings", "telemetry"), [
    ("us-300", {"intensity_w_cm2": "1.5"}, {"state": "running"}),
    ("hc-200", {"temperature_c": "40"}, {}),
    ("es-4", {"amplitude_ma": "10"}, {"channel_state": "running"}),
])
def test_a_non_finite_read_back_is_a_mismatch(pid: str, settings: dict[str, str],
                                              telemetry: dict[str, object], bad: float) -> None:
    profile = resolve_profile(pid).profile
    rx = build_prescription(profile, settings, 60.0)
    read_back = {"us-300": "intensity_w_cm2", "hc-200": "setpoint_c",
                 "es-4": "amplitude_ma"}[pid]
    verdict = checks.verify(profile, rx, {**telemetry, read_back: bad})
    assert verdict is not None and verdict.outcome == "fault"
    assert "device reports" in verdict.reason
