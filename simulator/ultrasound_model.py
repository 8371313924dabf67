"""The US-300 therapeutic ultrasound unit in semantic terms: settings, states, physics.

States: idle, running, holding (output on but paused for lack of contact),
done (the session timer ran out) and fault (a latched fault). The model never
sees bytes; the family endpoint calls `apply`, `value`, `telemetry` and
`reading`. Time comes only from the `now` arguments (the injected clock), and
`tick` integrates in short sub-steps cut at every scheduled event (timer,
watchdog, fault windows), so a fake clock that jumps minutes still sees each
event at its exact time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

from protocols.map_common import Scalar
from simulator.model_base import ModelBase, Refused, SimEvent

State = Literal["idle", "running", "holding", "done", "fault"]

# Settings after power-up and after *RST (US-300 spec, "Defaults").
DEFAULTS: dict[str, Scalar] = {
    "frequency_mhz": 1, "intensity_w_cm2": 0.0, "duty_pct": 100, "timer_s": 300,
    "watchdog_s": 0,
}
# Settings the spec refuses while the output is on (intensity may change).
LOCKED_WHILE_ON = frozenset({"frequency_mhz", "duty_pct", "timer_s"})
DEFAULT_CAL_GAIN = 1.0
# A fresh simulated unit counts as calibrated this many days ago: well inside
# any calibration interval, so the controller's "not overdue" check passes.
CAL_AGE_DAYS = 30
# The fitted applicator: effective radiating area and beam non-uniformity ratio.
ERA_CM2 = 5.0
BNR = 5.0
# Coupling the head senses on gel-covered skin, and while contact_lost is injected.
CONTACT_COUPLED_PCT = 90.0
CONTACT_LOST_PCT = 20.0
# Below this coupling the output holds (the spec's 50 %; a profile rule may move it).
DEFAULT_CONTACT_MIN_PCT = 50.0
# Applicator face trip (spec: passing 41.0 degC is fault 1); *RST clears the
# latched trip only once the face has cooled below the reset level.
TRIP_C = 41.0
RESET_BELOW_C = 40.0
# Thermal model: the face relaxes toward ambient + HEAT_C_PER_W x acoustic power
# with one time constant. 18 W (3.0 W/cm2, gain 1.2) plateaus at 35.8 degC, well
# under the trip; a typical 7.5 W session settles near 29.5 degC.
AMBIENT_C = 25.0
HEAT_C_PER_W = 0.6
THERMAL_TAU_S = 40.0
# Injected over-temperature: the face heats this fast on top, passing 41 degC
# within about a second from any normal temperature.
OVERTEMP_RATE_C_S = 15.0
# Longest integration sub-step while the output is on: bounds the trip
# overshoot (0.15 degC at the injected rate). Scheduled events cut steps exactly.
MAX_STEP_S = 0.01
# Float slack for "the timer / watchdog has run out".
EPS = 1e-9
# Fault numbers (STATus? field 5).
NO_FAULT = 0
FAULT_OVERTEMP = 1
FAULT_NO_APPLICATOR = 2
FAULT_WATCHDOG = 3
# The modality's names of these faults: a profile's `faults` table gives each its code.
FAULT_NAMES = {FAULT_OVERTEMP: "over_temperature", FAULT_NO_APPLICATOR: "no_applicator",
               FAULT_WATCHDOG: "watchdog_expired"}


def _recent_cal_date() -> str:
    # A calendar date has no monotonic source: the one wall-clock read in the model.
    return (date.today() - timedelta(days=CAL_AGE_DAYS)).isoformat()


@dataclass
class UltrasoundModel(ModelBase):
    settings: dict[str, Scalar] = field(default_factory=lambda: dict(DEFAULTS))
    cal_gain: float = DEFAULT_CAL_GAIN
    cal_date: str = field(default_factory=_recent_cal_date)
    state: State = "idle"
    fault: int = NO_FAULT
    """Latched fault number, NO_FAULT when none."""
    temperature_c: float = AMBIENT_C
    elapsed_s: float = 0.0
    """Treatment time of the current (or last) session: counts only while coupled."""
    remaining_s: float = 0.0
    session_loaded: bool = False
    """False until a start loads the timer (then `remaining_s` is the countdown)."""
    holds: list[tuple[float, float | None]] = field(default_factory=list)
    """Contact holds as (start, end); end None while the hold lasts."""
    _t: float = field(init=False, default=0.0)
    """How far the physics has been integrated (clock time)."""

    def __post_init__(self) -> None:
        self._t = self.clock()
        self.last_kick = self._t

    # -- ModelBase hooks ---------------------------------------------------------------
    @property
    def output_on(self) -> bool:
        return self.state in ("running", "holding")

    def apply(self, action: str, values: dict[str, Scalar], now: float) -> None:
        self._advance(now)
        if action == "start":
            self._start(now)
        elif action in ("stop", "emergency_stop"):
            self._output_off(now, action, "idle")
        elif action == "clear_fault":
            self._reset(now)
        elif action == "enter_calibration":
            if self.output_on:
                raise Refused("invalid_state", "service mode cannot be entered while on")
            self.service_mode = True
        elif action == "leave_calibration":
            self.service_mode = False
        elif action == "set":
            self._set(values)
        else:
            raise Refused("illegal_value", f"unknown action {action!r}")

    def value(self, name: str, channel: int | None) -> Scalar:
        if name == "cal_gain":
            return self.cal_gain
        if name == "cal_date":
            return self.cal_date
        if name == "watchdog_s":
            return _plain(self.watchdog_s)
        return self.settings[name]  # KeyError: no such variable

    def telemetry(self, name: str, channel: int | None, now: float) -> Scalar:
        self._advance(now)
        quantities: dict[str, Scalar] = {
            "output_on": self.output_on,
            "state": self.state,
            "elapsed_s": math.floor(self.elapsed_s + EPS),
            "remaining_s": math.ceil(self._remaining() - EPS),
            "contact_pct": round(self.contact_pct(now)),
            "fault_code": self.reported_fault_code(self.fault_code, FAULT_NAMES),
            "power_w": self.reported_power_w(),
            "applicator_temp_c": self.temperature_c,
            "intensity_w_cm2": self.intensity,
            "era_cm2": 0.0 if self.faults.no_applicator else ERA_CM2,
            "bnr": 0.0 if self.faults.no_applicator else BNR,
        }
        return quantities[name]  # KeyError: no such quantity

    def reading(self, name: str, channel: int | None) -> Scalar:
        if name == "cal_measured":
            return self.reported_power_w()
        return self.value(name, channel)

    def tick(self, now: float) -> list[SimEvent]:
        self._advance(now)
        return []

    # -- what tests and calibration look at ----------------------------------------------
    @property
    def intensity(self) -> float:
        return float(self.settings["intensity_w_cm2"])

    @property
    def fault_code(self) -> int:
        if self.fault != NO_FAULT:
            return self.fault
        return FAULT_NO_APPLICATOR if self.faults.no_applicator else NO_FAULT

    @property
    def contact_min_pct(self) -> float:
        return self.profile.rules.get("contact_min_pct", DEFAULT_CONTACT_MIN_PCT)

    def contact_pct(self, now: float) -> float:
        """Coupling quality: sensed only while the output is on."""
        if not self.output_on:
            return 0.0
        window = self.faults.contact_lost
        t = self.output_time(now)
        if window is not None and t is not None and window[0] <= t < window[1]:
            return CONTACT_LOST_PCT
        return CONTACT_COUPLED_PCT

    def nominal_power_w(self) -> float:
        """intensity x ERA x duty/100 while running (coupled), else 0."""
        if self.state != "running":
            return 0.0
        duty = float(self.settings["duty_pct"])
        return self.intensity * ERA_CM2 * duty / 100.0

    def reported_power_w(self) -> float:
        """The device's own estimate (MEASure:POWer?): nominal x calibration gain."""
        return self.nominal_power_w() * self.cal_gain

    def true_power_w(self) -> float:
        """What a radiation force balance measures: the estimate x the injected miscalibration."""
        return self.reported_power_w() * self.faults.miscal_gain

    # -- actions -------------------------------------------------------------------------
    def _start(self, now: float) -> None:
        if self.output_on:
            return  # already on: nothing changes
        if self.fault != NO_FAULT:
            raise Refused("fault_latched", f"fault {self.fault} is latched")
        if self.faults.no_applicator:
            raise Refused("hardware_missing", "no applicator fitted")
        if self.intensity <= 0.0:
            raise Refused("invalid_state", "intensity is 0.0")
        if self.service_mode:
            raise Refused("invalid_state", "in service mode")
        self.elapsed_s = 0.0
        self.remaining_s = float(self.settings["timer_s"])
        self.session_loaded = True
        self.state = "running"
        self.record(now, True, "start")
        self._follow_contact(now)

    def _output_off(self, now: float, cause: str, state: State) -> None:
        if self.output_on:
            if self.holds and self.holds[-1][1] is None:
                self.holds[-1] = (self.holds[-1][0], now)
            self.record(now, False, cause)
            self.state = state
        elif self.state == "done" and state == "idle":
            self.state = "idle"

    def _reset(self, now: float) -> None:
        self._output_off(now, "stop", "idle")
        self.settings = dict(DEFAULTS)
        self.watchdog_s = 0.0
        # The spec's defaults include "gain 1.000": *RST restores it (the date stays).
        self.cal_gain = DEFAULT_CAL_GAIN
        self.service_mode = False
        self.elapsed_s = 0.0
        self.session_loaded = False
        if self.fault == FAULT_OVERTEMP and self.temperature_c >= RESET_BELOW_C:
            return  # the cause is still there: the fault stays latched
        self.fault = NO_FAULT
        self.state = "idle"

    def _set(self, values: dict[str, Scalar]) -> None:
        locked = sorted(LOCKED_WHILE_ON & set(values))
        if locked and self.output_on:
            raise Refused("invalid_state", f"{', '.join(locked)} cannot change while on")
        if ("cal_gain" in values or "cal_date" in values) and not self.service_mode:
            raise Refused("service_required", "calibration needs service mode")
        if "cal_gain" in values:
            gain = float(values["cal_gain"])
            if not gain > 0:
                raise Refused("out_of_range", f"gain {gain:g} must be positive")
            self.cal_gain = gain
        if "cal_date" in values:
            self.cal_date = str(values["cal_date"])
        for name, val in values.items():
            if name == "watchdog_s":
                self.watchdog_s = float(val)
            if name not in ("cal_gain", "cal_date"):
                self.settings[name] = val

    # -- time ----------------------------------------------------------------------------
    def _remaining(self) -> float:
        return self.remaining_s if self.session_loaded else float(self.settings["timer_s"])

    def _advance(self, now: float) -> None:
        t = self._t
        while t < now:
            cap = t + MAX_STEP_S if self._may_trip(t) else now
            end = min([now, cap, *self._events_after(t)])
            self._integrate(end - t, t)
            t = end
            self._t = t
            self._check(t)

    def _may_trip(self, t: float) -> bool:
        """Whether the face can pass the trip before the next event: only then are
        short steps needed (otherwise the relaxation step is exact at any length)."""
        if not self.output_on:
            return False
        plateau = AMBIENT_C + HEAT_C_PER_W * self.true_power_w()
        return plateau > TRIP_C or self.fault_due(self.faults.overtemp_at, t)

    def _events_after(self, t: float) -> list[float]:
        """Times after t at which something scheduled happens: steps end there exactly."""
        times: list[float] = []
        if self.output_on and self.watchdog_s > 0:
            times.append(self.last_kick + self.watchdog_s)
        if self.state == "running":
            times.append(t + self.remaining_s)
        if self.first_output_at is not None:
            origin = self.first_output_at
            if self.faults.contact_lost is not None:
                times += [origin + x for x in self.faults.contact_lost]
            if self.faults.overtemp_at is not None:
                times.append(origin + self.faults.overtemp_at)
        return [x for x in times if x > t]

    def _integrate(self, dt: float, t: float) -> None:
        if self.state == "running":
            self.elapsed_s += dt
            self.remaining_s = max(0.0, self.remaining_s - dt)
        target = AMBIENT_C + HEAT_C_PER_W * self.true_power_w()
        self.temperature_c = target + (self.temperature_c - target) * math.exp(
            -dt / THERMAL_TAU_S)
        if self.output_on and self.fault_due(self.faults.overtemp_at, t):
            self.temperature_c += OVERTEMP_RATE_C_S * dt

    def _check(self, t: float) -> None:
        """Backstops and contact at time t, in order of precedence."""
        if not self.output_on:
            return
        if self.watchdog_s > 0 and t >= self.last_kick + self.watchdog_s - EPS:
            self.fault = FAULT_WATCHDOG
            self._output_off(t, "watchdog", "fault")
        elif self.temperature_c > TRIP_C:
            self.fault = FAULT_OVERTEMP
            self._output_off(t, "interlock", "fault")
        elif self.state == "running" and self.remaining_s <= EPS:
            self.remaining_s = 0.0
            self._output_off(t, "timer", "done")
        else:
            self._follow_contact(t)

    def _follow_contact(self, t: float) -> None:
        coupled = self.contact_pct(t) >= self.contact_min_pct
        if self.state == "running" and not coupled:
            self.state = "holding"
            self.holds.append((t, None))
        elif self.state == "holding" and coupled:
            self.state = "running"
            self.holds[-1] = (self.holds[-1][0], t)


def _plain(x: float) -> Scalar:
    """Whole numbers as int (the watchdog is set in whole seconds)."""
    return int(x) if float(x).is_integer() else x
