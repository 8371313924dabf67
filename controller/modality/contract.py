"""What each modality's code needs from a device profile.

The modality modules hold the clinical knowledge; profiles hold the device
knowledge. This table is the seam between them: the names a profile must
provide (parameters, telemetry) and the names it may tune (derived limits,
interlocks, rules, tolerances). The profile validator checks against it so a
profile that the modality code could not drive is refused at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Modality = Literal["thermal", "ultrasound", "tens"]

# Variables the controller supplies to operations besides prescription
# parameters. Values are in engineering units; the map's scale converts.
SESSION_VARIABLES: frozenset[str] = frozenset({
    "watchdog_s",    # device communication watchdog to arm
    "timer_s",       # device session timer: planned duration + margin
    "channel_mask",  # 1 << channel, for multi-channel devices
    "ramp_up_s",     # ramp to the prescribed amplitude at start
    "ramp_down_s",   # controlled stop ramp
    "cal_gain",      # calibration values being written
    "cal_offset",
    "cal_date",
    "cal_level",     # output level at which the technician measures
})


# -- backstops every profile must prove (controller/profiles/backstops.py) -------------
# `arm` writes the device watchdog from this variable, into a field in seconds.
WATCHDOG_VARIABLE = "watchdog_s"
# The device session timer is loaded from this variable, in `arm` or, for devices whose
# start command carries the duration (framed START), in `start` itself.
TIMER_VARIABLE = "timer_s"
ARM_OPERATION = "arm"
START_OPERATION = "start"
# Each of these must switch the output off (see docs/profiles.md for the rule).
OFF_OPERATIONS: tuple[str, ...] = ("stop", "emergency_stop")
# The only variables a stop may send: which channel, how fast to ramp down. A stop
# never writes a prescription value (an amplitude, a setpoint).
OFF_VARIABLES: frozenset[str] = frozenset({"channel_mask", "ramp_down_s"})
# Engineering unit of the fields the watchdog and the timer are written into.
SECONDS_UNIT = "s"
# Telemetry the session's runtime check reads back after start: the device timer's
# remaining time (proves the timer runs) and the device's own output time.
RUNTIME_TELEMETRY: frozenset[str] = frozenset({"remaining_s", "elapsed_s"})


# -- telemetry the safety checks read (controller/session/checks.py, the dose meters) ------
# The telemetry that carries the device's fault code; its meanings are the profile's
# `faults` table for it, never code.
FAULT_CODE_TELEMETRY = "fault_code"
# Read as numbers by a check: text here would be no number at all (and once read as 0,
# which switched fault reporting off). Unmapped, the source must be a numeric field; mapped,
# every value of the map must be a number.
NUMERIC_CHECKED_TELEMETRY: frozenset[str] = frozenset({
    "fault_code", "temperature_c", "setpoint_c", "applicator_temp_c", "contact_pct",
    "impedance_ohm", "amplitude_ma", "elapsed_s", "remaining_s", "power_w",
    "intensity_w_cm2", "era_cm2",
})
# Read as yes/no by a check: a flag (bit), a number (non-zero is yes), or mapped to
# true/false.
FLAG_CHECKED_TELEMETRY: frozenset[str] = frozenset({
    "output_on", "pad_connected", "watchdog_expired", "timer_expired", "trip_high",
    "trip_low", "estop_latched", "patient_stop",
})


@dataclass(frozen=True)
class ModalityContract:
    parameters: frozenset[str]
    """Prescription parameters the profile must define."""
    telemetry: frozenset[str]
    """Telemetry names the profile must map from device reads."""
    derived_limits: frozenset[str] = frozenset()
    interlocks: frozenset[str] = frozenset()
    rules: frozenset[str] = frozenset()
    tolerances: frozenset[str] = frozenset()
    required_operations: frozenset[str] = field(default_factory=lambda: frozenset({
        "identify", "configure", "arm", "start", "stop", "emergency_stop",
        "read_telemetry",
    }))
    runtime_telemetry: frozenset[str] = RUNTIME_TELEMETRY
    """Telemetry the runtime backstop check needs (device timer and output time)."""


CONTRACTS: dict[str, ModalityContract] = {
    "thermal": ModalityContract(
        parameters=frozenset({"temperature_c"}),
        telemetry=frozenset({
            "output_on", "temperature_c", "setpoint_c", "fault_code", "elapsed_s",
            "remaining_s", "pad_connected", "watchdog_expired", "timer_expired",
            "trip_high", "trip_low",
        }),
        derived_limits=frozenset({"cem43_min"}),
        interlocks=frozenset({"pad_temp_max_c", "pad_temp_min_c"}),
        rules=frozenset({"skin_temp_c"}),
        tolerances=frozenset({"setpoint_c"}),
    ),
    "ultrasound": ModalityContract(
        parameters=frozenset({"frequency_mhz", "intensity_w_cm2", "duty_pct"}),
        telemetry=frozenset({
            "output_on", "state", "elapsed_s", "remaining_s", "contact_pct",
            "fault_code", "power_w", "applicator_temp_c", "intensity_w_cm2", "era_cm2",
        }),
        derived_limits=frozenset({"energy_j"}),
        interlocks=frozenset({"applicator_temp_max_c"}),
        rules=frozenset({"max_contact_hold_s", "contact_min_pct"}),
        tolerances=frozenset({"intensity_w_cm2", "power_rel"}),
    ),
    "tens": ModalityContract(
        parameters=frozenset({
            "frequency_hz", "pulse_width_us", "amplitude_ma", "channel", "waveform",
            "mode", "electrode_area_cm2",
        }),
        telemetry=frozenset({
            "output_on", "channel_state", "amplitude_ma", "impedance_ohm", "elapsed_s",
            "remaining_s", "estop_latched", "watchdog_expired", "patient_stop",
        }),
        derived_limits=frozenset({"current_density_rms_ma_cm2", "charge_per_phase_uc"}),
        interlocks=frozenset({"impedance_max_ohm"}),
        rules=frozenset({"ramp_rate_ma_s", "max_ramp_s"}),
        tolerances=frozenset({"amplitude_ma"}),
    ),
}
