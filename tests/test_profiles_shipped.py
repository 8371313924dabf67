"""Every shipped profile loads, validates and round-trips."""

from __future__ import annotations

import pytest

from controller.profiles.loader import resolve_profile, shipped_profile_paths
from controller.profiles.model import Profile

SHIPPED = ("hc-200", "us-300", "es-4")


def test_the_three_models_are_shipped() -> None:
    assert set(SHIPPED) <= set(shipped_profile_paths())


@pytest.mark.parametrize("pid", SHIPPED)
def test_profile_round_trips(pid: str) -> None:
    prof = resolve_profile(pid).profile
    again = Profile.model_validate_json(prof.model_dump_json())
    assert again == prof
