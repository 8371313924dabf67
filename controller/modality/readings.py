"""Reading a number out of telemetry or prescription values: one rule for every check.

Only a finite int or float is a number. A bool, text, NaN or infinity reads as None, so
a check that needs the value treats it as missing (a mismatch or a fault), never as a
value that passes: NaN compares false with every limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def finite(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value):
        return float(value)
    return None


def number(values: Mapping[str, object], key: str) -> float | None:
    return finite(values.get(key))
