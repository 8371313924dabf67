"""Shared fixtures: simulated devices on real pseudo-terminals, a PostgreSQL schema (`pg_url`);
how xdist shares the tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controller.profiles.loader import resolve_profile
from controller.profiles.model import Profile
from simulator.faults import FaultPlan
from simulator.server import SimulatedDevice
from tests.support.pg import pg_url  # noqa: F401 - a fresh PostgreSQL schema per test

SimFactory = Callable[..., SimulatedDevice]


@pytest.fixture
def sim_device() -> Iterator[SimFactory]:
    """Start simulated devices: `sim_device("hc-200", silent_at=1.0)`; all stopped at teardown.

    The returned device's `.port` is a real /dev/pts path for pyserial; `.model`
    is its state (take `.model.lock` to read several fields consistently).
    """
    started: list[SimulatedDevice] = []

    def start(profile: str | Profile, **faults: object) -> SimulatedDevice:
        prof = resolve_profile(profile).profile if isinstance(profile, str) else profile
        device = SimulatedDevice(prof, FaultPlan(**faults)).start()  # type: ignore[arg-type]
        started.append(device)
        return device

    yield start
    for device in started:
        device.stop()


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` with the groups of tests/support/scheduling.py (a file each)."""
    if config.getvalue("dist") != "loadgroup":
        return None                    # another --dist given on the command line: xdist's own
    from tests.support.scheduling import FileGroupScheduling
    return FileGroupScheduling(config, log)
