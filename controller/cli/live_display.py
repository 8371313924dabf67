"""A one-line live view of a running session, for terminals only."""

from __future__ import annotations

import sys
from typing import TextIO

from controller.session.report import Snapshot

# The measured quantity shown per modality: (telemetry name, label, unit).
MAIN_QUANTITY = {
    "thermal": ("temperature_c", "pad", "degC"),
    "ultrasound": ("power_w", "power", "W"),
    "tens": ("amplitude_ma", "amplitude", "mA"),
}
DOSE_FIGURE = {"thermal": ("cem43_min", "CEM43 min"), "ultrasound": ("energy_j", "J"),
               "tens": ("stimulation_s", "s stimulated")}


class LiveDisplay:
    def __init__(self, modality: str, label: str, stream: TextIO = sys.stdout) -> None:
        self.modality = modality
        self.label = label
        self.stream = stream
        self._width = 0

    def show(self, snap: Snapshot) -> None:
        name, what, unit = MAIN_QUANTITY[self.modality]
        value = snap["telemetry"].get(name)
        dose_key, dose_unit = DOSE_FIGURE[self.modality]
        dose = snap["dose"].get(dose_key)
        remaining = snap["remaining_s"]
        parts = [f"{self.label} {snap['state']:<10}"]
        parts.append(f"remaining {remaining:6.1f} s" if remaining is not None else
                     "remaining    -  ")
        parts.append(f"{what} {value:.2f} {unit}" if isinstance(value, (int, float))
                     else f"{what} -")
        if isinstance(dose, (int, float)):
            parts.append(f"dose {dose:.3g} {dose_unit}")
        line = " | ".join(parts)
        pad = max(0, self._width - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width = len(line)

    def close(self) -> None:
        if self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
