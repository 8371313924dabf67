"""The HC-200 hot/cold pad in semantic terms: setpoint, session timer, trips, physics.

The model never sees registers. The endpoint tells it what a write means
(`set` values, `start`, `clear_fault`...) and asks it for telemetry by the
thermal modality's names. Time comes only from the `now` arguments (the
injected clock), so tests can drive hours of therapy in milliseconds.

Two temperatures exist: the pad's true temperature (the physics) and the
temperature the device reports, seen through its sensor and calibration:
    sensor raw = truth × miscal_gain + miscal_offset      (FaultPlan)
    reported   = raw × cal_gain + cal_offset              (calibration registers)
The device regulates, trips and reports on `reported`, as real firmware only
knows its sensor. `pad_c` is the truth: what a reference thermometer would read.

Output changes are recorded with these causes: start, stop / emergency_stop
(host writes), timer (session timer ran out), watchdog, interlock (trip_high or
trip_low passed; latched) and fault (pad disconnected, sensor fault).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from protocols.map_common import Scalar
from simulator.model_base import ModelBase, Refused, SimEvent

# Power-up defaults (HC-200 manual: setpoint 370, run_time 600, trip_high 460,
# trip_low 50, cal_gain 10000, cal_offset 0 in register units).
DEFAULT_SETPOINT_C = 37.0
DEFAULT_TIMER_S = 600.0
DEFAULT_TRIP_HIGH_C = 46.0
DEFAULT_TRIP_LOW_C = 5.0

# Physics. The manual: "approaches the setpoint with a time constant of about
# a minute; heating and cooling rates are limited by the element".
SKIN_C = 32.0                # an idle pad on the skin settles at skin temperature
ON_TAU_S = 60.0              # regulated approach to the setpoint
OFF_TAU_S = 90.0             # passive drift back to skin temperature is slower
MAX_RATE_C_S = 0.15          # Peltier element limit, heating or cooling
DRIVE_PCT_PER_C = 25.0       # drive saturates (100 %) at a 4 °C error
PHYSICS_STEP_S = 0.05        # integration step; bounds trip/timer timing error on a jumpy clock

# Injected faults (FaultPlan times are seconds since the first output start).
OVERTEMP_RATE_C_S = 3.0      # stuck-on element: from 37 °C past a 46 °C trip in ~3 s
UNDERTEMP_RATE_C_S = 8.0     # coolant runaway: from skin temperature past 5 °C in ~4 s

# The sensor's plausible range; outside it the device latches a sensor fault
# (an open thermistor reads very cold, a shorted one very hot).
SENSOR_OPEN_BELOW_C = -20.0
SENSOR_SHORT_ABOVE_C = 99.0

FAULT_NONE = 0
FAULT_SENSOR_OPEN = 1
FAULT_SENSOR_SHORT = 2
FAULT_OVER_TEMP = 3
FAULT_UNDER_TEMP = 4
FAULT_PAD_DISCONNECTED = 5
# The modality's names of these faults: a profile's `faults` table gives each its code.
FAULT_NAMES = {FAULT_SENSOR_OPEN: "sensor_open", FAULT_SENSOR_SHORT: "sensor_short",
               FAULT_OVER_TEMP: "over_temperature", FAULT_UNDER_TEMP: "under_temperature",
               FAULT_PAD_DISCONNECTED: "pad_disconnected"}

# Map entries no operation uses but whose meaning this model knows (HC-200 trips).
TRIP_ENTRIES = ("trip_high", "trip_low")


@dataclass
class ThermalModel(ModelBase):
    """One thermal pad. All state lives in fields, so an endpoint can snapshot it."""

    setpoint_c: float = DEFAULT_SETPOINT_C
    timer_s: float = DEFAULT_TIMER_S
    trip_high_c: float = DEFAULT_TRIP_HIGH_C
    trip_low_c: float = DEFAULT_TRIP_LOW_C
    cal_gain: float = 1.0
    cal_offset: float = 0.0
    pad_c: float = SKIN_C
    """True pad surface temperature."""
    pad_connected: bool = True
    trip_high_latched: bool = False
    trip_low_latched: bool = False
    sensor_fault_code: int = FAULT_NONE
    watchdog_flag: bool = False
    timer_flag: bool = False
    running: bool = False
    run_started: float = 0.0
    run_ends: float = 0.0
    last_elapsed: float = 0.0
    last_tick: float | None = None
    extra: dict[str, Scalar] = field(default_factory=dict)
    """Variables a profile writes that the HC-200 has no use for (kept, read back)."""

    # -- ModelBase hooks ------------------------------------------------------------
    @property
    def output_on(self) -> bool:
        return self.running

    def tick(self, now: float) -> list[SimEvent]:
        self._advance(now)
        return []

    def apply(self, action: str, values: dict[str, Scalar], now: float) -> None:
        self._advance(now)
        if action == "set":
            self._set(values)
        elif action == "start":
            self._start(now)
        elif action in ("stop", "emergency_stop"):
            if self.running:
                self._stop(now, action)
        elif action == "clear_fault":
            self._clear_fault()
        elif action == "enter_calibration":
            if self.running:
                raise Refused("invalid_state", "stop the output before calibration mode")
            self.service_mode = True
        elif action == "leave_calibration":
            self.service_mode = False
        else:
            raise Refused("illegal_value", f"unknown action '{action}'")

    def value(self, name: str, channel: int | None) -> Scalar:
        known: dict[str, Scalar] = {
            "temperature_c": self.setpoint_c, "timer_s": self.timer_s,
            "watchdog_s": self.watchdog_s, "cal_gain": self.cal_gain,
            "cal_offset": self.cal_offset,
        }
        if name in known:
            return known[name]
        return self.extra[name]

    def telemetry(self, name: str, channel: int | None, now: float) -> Scalar:
        self._advance(now)
        values: dict[str, Scalar] = {
            "output_on": self.running,
            "temperature_c": self.reported_c(),
            "setpoint_c": self.setpoint_c,
            "fault_code": self.reported_fault_code(self.fault_code, FAULT_NAMES),
            "elapsed_s": now - self.run_started if self.running else self.last_elapsed,
            "remaining_s": max(0.0, self.run_ends - now) if self.running else 0.0,
            "pad_connected": self.pad_connected,
            "watchdog_expired": self.watchdog_flag,
            "timer_expired": self.timer_flag,
            "trip_high": self.trip_high_latched,
            "trip_low": self.trip_low_latched,
            "drive_pct": self.drive_pct(),
            "sensor_fault": self.sensor_fault_code != FAULT_NONE,
            "calibration_mode": self.service_mode,
        }
        return values[name]

    def reading(self, name: str, channel: int | None) -> Scalar:
        values: dict[str, Scalar] = {
            "cal_gain": self.cal_gain, "cal_offset": self.cal_offset,
            "cal_measured": self.reported_c(),
        }
        return values[name]

    # -- hooks for map entries no operation uses (see ModbusEndpoint) ----------------
    def set_raw_entry(self, entry: str, value: Scalar) -> bool:
        """A write to `trip_high`/`trip_low` (engineering °C); False for other entries."""
        if entry not in TRIP_ENTRIES:
            return False
        if not self.service_mode:
            raise Refused("service_required", f"{entry} is written only in calibration mode")
        temp = _finite(value, entry)
        high = temp if entry == "trip_high" else self.trip_high_c
        low = temp if entry == "trip_low" else self.trip_low_c
        if low >= high:
            raise Refused("out_of_range", f"trip_low {low:g} must stay below trip_high {high:g}")
        self.trip_high_c, self.trip_low_c = high, low
        return True

    def raw_entry_value(self, entry: str) -> Scalar | None:
        if entry == "trip_high":
            return self.trip_high_c
        if entry == "trip_low":
            return self.trip_low_c
        return None

    # -- derived quantities -------------------------------------------------------------
    @property
    def fault_code(self) -> int:
        if self.sensor_fault_code != FAULT_NONE:
            return self.sensor_fault_code
        if self.trip_high_latched:
            return FAULT_OVER_TEMP
        if self.trip_low_latched:
            return FAULT_UNDER_TEMP
        if not self.pad_connected:
            return FAULT_PAD_DISCONNECTED
        return FAULT_NONE

    def sensor_raw_c(self) -> float:
        return self.pad_c * self.faults.miscal_gain + self.faults.miscal_offset

    def reported_c(self) -> float:
        return self.sensor_raw_c() * self.cal_gain + self.cal_offset

    def drive_pct(self) -> float:
        if not self.running:
            return 0.0
        error = self.setpoint_c - self.reported_c()
        return max(-100.0, min(100.0, error * DRIVE_PCT_PER_C))

    def _target_truth_c(self) -> float:
        """The true temperature at which the device believes it sits at the setpoint."""
        raw = (self.setpoint_c - self.cal_offset) / self.cal_gain
        return (raw - self.faults.miscal_offset) / self.faults.miscal_gain

    # -- writes ------------------------------------------------------------------------
    def _set(self, values: dict[str, Scalar]) -> None:
        for name, value in values.items():
            number = _finite(value, name)
            if name == "temperature_c":
                self.setpoint_c = number          # takes effect at once, even while running
            elif name == "timer_s":
                if number <= 0:
                    raise Refused("out_of_range", "timer_s must be positive")
                self.timer_s = number             # loaded at the next start
            elif name == "watchdog_s":
                if number < 0:
                    raise Refused("out_of_range", "watchdog_s must not be negative")
                self.watchdog_s = number
            elif name in ("cal_gain", "cal_offset"):
                if not self.service_mode:
                    raise Refused("service_required", f"{name} is written only in "
                                  "calibration mode")
                if name == "cal_gain":
                    if number <= 0:
                        raise Refused("out_of_range", "cal_gain must be positive")
                    self.cal_gain = number
                else:
                    self.cal_offset = number
            else:
                self.extra[name] = value

    def _start(self, now: float) -> None:
        if self.trip_high_latched or self.trip_low_latched or self.sensor_fault_code:
            raise Refused("fault_latched", f"fault {self.fault_code} is latched; reset it first")
        if not self.pad_connected:
            raise Refused("hardware_missing", "pad disconnected")
        if self.service_mode:
            raise Refused("invalid_state", "in calibration mode")
        if self.running:
            # The spec: enabling loads the session timer from run_time, also while running.
            self.run_ends = now + self.timer_s
            return
        self.running = True
        self.watchdog_flag = self.timer_flag = False
        self.run_started = now
        self.run_ends = now + self.timer_s
        self.record(now, True, "start")

    def _stop(self, now: float, cause: str) -> None:
        self.running = False
        self.last_elapsed = now - self.run_started
        self.record(now, False, cause)

    def _clear_fault(self) -> None:
        reported = self.reported_c()
        if self.trip_high_latched and reported > self.trip_high_c:
            raise Refused("fault_latched", "pad still above trip_high")
        if self.trip_low_latched and reported < self.trip_low_c:
            raise Refused("fault_latched", "pad still below trip_low")
        if self.sensor_fault_code and self._sensor_fault_now() != FAULT_NONE:
            raise Refused("fault_latched", "sensor still faulty")
        self.trip_high_latched = self.trip_low_latched = False
        self.sensor_fault_code = FAULT_NONE

    # -- time -----------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        if self.last_tick is None:
            self.last_tick = now
            self._check(now)
            return
        t = self.last_tick
        while t < now:
            step = min(PHYSICS_STEP_S, now - t)
            t = now if step < PHYSICS_STEP_S else t + step
            self._integrate(step, t)
            self._check(t)
        self.last_tick = max(self.last_tick, now)

    def _integrate(self, dt: float, t: float) -> None:
        if self.running and self.fault_due(self.faults.overtemp_at, t):
            self.pad_c += OVERTEMP_RATE_C_S * dt
        elif self.running and self.fault_due(self.faults.undertemp_at, t):
            self.pad_c -= UNDERTEMP_RATE_C_S * dt
        elif self.running:
            self.pad_c = _approach(self.pad_c, self._target_truth_c(), ON_TAU_S, dt)
        else:
            self.pad_c = _approach(self.pad_c, SKIN_C, OFF_TAU_S, dt)

    def _check(self, t: float) -> None:
        """Everything that stops the output by itself, in the device's priority order."""
        if self.pad_connected and self.fault_due(self.faults.pad_off_at, t):
            self.pad_connected = False
            self._stop_if_running(t, "fault")
        sensor = self._sensor_fault_now()
        if sensor != FAULT_NONE and self.sensor_fault_code == FAULT_NONE:
            self.sensor_fault_code = sensor
            self._stop_if_running(t, "fault")
        reported = self.reported_c()
        if reported > self.trip_high_c and not self.trip_high_latched:
            self.trip_high_latched = True
            self._stop_if_running(t, "interlock")
        if reported < self.trip_low_c and not self.trip_low_latched:
            self.trip_low_latched = True
            self._stop_if_running(t, "interlock")
        if self.running and t >= self.run_ends:
            self.timer_flag = True
            self._stop(t, "timer")
        if self.running and self.watchdog_expired(t):
            self.watchdog_flag = True
            self._stop(t, "watchdog")

    def _stop_if_running(self, t: float, cause: str) -> None:
        if self.running:
            self._stop(t, cause)

    def _sensor_fault_now(self) -> int:
        raw = self.sensor_raw_c()
        if raw < SENSOR_OPEN_BELOW_C:
            return FAULT_SENSOR_OPEN
        if raw > SENSOR_SHORT_ABOVE_C:
            return FAULT_SENSOR_SHORT
        return FAULT_NONE


def _approach(current: float, target: float, tau: float, dt: float) -> float:
    """First-order approach to `target`, its rate capped by the element."""
    ideal = target + (current - target) * math.exp(-dt / tau)
    limit = MAX_RATE_C_S * dt
    return current + max(-limit, min(limit, ideal - current))


def _finite(value: Scalar, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Refused("illegal_value", f"{name} must be a finite number, got {value!r}")
    return float(value)
