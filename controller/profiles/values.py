"""Values shared by the profile checks and the prescription: the duration's limit name, and
the tests inside a bound and on a step."""

from __future__ import annotations

from controller.profiles.sections import Bound

# The limits' name for the session duration (the device timer range), beside the parameters.
DURATION = "duration_s"
# Relative slack when checking that a value sits on a parameter's step grid.
STEP_SLACK = 1e-6


def within(value: float, bound: Bound) -> bool:
    return (bound.min is None or value >= bound.min) and \
        (bound.max is None or value <= bound.max)


def on_step(value: float, origin: float, step: float) -> bool:
    n = (value - origin) / step
    return abs(n - round(n)) <= STEP_SLACK * max(1.0, abs(n))
