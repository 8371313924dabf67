"""How a modality counts output time: the planned-end and delivered-time hook of a dose meter.

The session asks its dose meter when the output should end and how much of the time it
ran counts as treatment, without knowing which modality it drives. Most modalities count
every second the output ran; ultrasound counts only coupled time and moves the end by the
time spent without contact (`controller.modality.ultrasound.UltrasoundDoseMeter`).
"""

from __future__ import annotations


class ContinuousTiming:
    """Every second the output runs is treatment time; the end is start + planned."""

    def output_started(self, t_monotonic: float) -> None:
        """The output was switched on at this monotonic time."""

    def planned_end(self, t_start: float, planned_s: float, now: float) -> float:
        return t_start + planned_s

    def delivered_s(self, t_start: float, end: float) -> float:
        return max(0.0, end - t_start)
