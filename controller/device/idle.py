"""The variables a read-only look at an idle device reads with (no prescription yet).

A profile's telemetry may name a prescription parameter (`get_status.ch{channel}_state`):
an idle look reads it for every allowed value of that parameter (each channel), or its
default when it has no list. Used by `devices add` and the clinic service's device watch.
"""

from __future__ import annotations

import itertools
import re

from controller.profiles.model import Profile
from protocols.map_common import Scalar

TEMPLATE_NAME = re.compile(r"\{(\w+)\}")


def idle_variables(profile: Profile) -> list[dict[str, Scalar]]:
    """Every variable set one idle look reads telemetry with ([{}] when none is named)."""
    names = sorted(set(TEMPLATE_NAME.findall(repr(profile.telemetry))) & set(profile.parameters))
    choices: list[list[tuple[str, Scalar]]] = []
    for name in names:
        param = profile.parameters[name]
        values = param.allowed or ([param.default] if isinstance(param.default, (int, float))
                                   else [])
        choices.append([(name, int(v) if param.type == "integer" else v) for v in values])
    return [dict(combo) for combo in itertools.product(*choices)] or [{}]
