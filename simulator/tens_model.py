"""A multi-channel TENS stimulator: ramps, session timers, interlocks and calibration.

Each channel has its own electrode pair, settings, ramp and timer. The model
knows modality quantities only (mA, seconds, ohms); the family endpoint turns
frames into `apply` calls. Output levels are "set-domain" milliamps; the
delivered amplitude applies the channel's calibration (set × gain + offset,
quantised to the device's amplitude step), and the true current into the
load applies the injected miscalibration on top of that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from protocols.map_common import Scalar
from protocols.map_framed import FramedMap
from simulator.model_base import ModelBase, Refused, SimEvent

IDLE, RAMPING_UP, RUNNING, RAMPING_DOWN, LEAD_OFF = (
    "idle", "ramping_up", "running", "ramping_down", "lead_off")
OUTPUT_STATES = frozenset({RAMPING_UP, RUNNING, RAMPING_DOWN})
CONFIG_KEYS = ("waveform", "mode", "frequency_hz", "pulse_width_us")

# Electrode-skin impedance with the pads on: high at first, settling as the
# skin under the gel conducts better (keeps telemetry inside ~800-1500 ohm).
IMPEDANCE_INITIAL_OHM = 1400.0
IMPEDANCE_SETTLED_OHM = 850.0
IMPEDANCE_TAU_S = 120.0
# Channels differ a little so a test can tell their reports apart.
IMPEDANCE_CHANNEL_STEP_OHM = 60.0
# An electrode off the skin, as the device's probe pulse sees it (open circuit).
IMPEDANCE_OPEN_OHM = 250_000.0
# The device's own lead-off threshold (spec: above 10 kohm the channel stops).
LEAD_OFF_OHM = 10_000.0
# Impedance goes out as u16: the spec caps reports at this value.
IMPEDANCE_REPORT_MAX = 65535
# Amplitude resolution when the profile does not reveal it (the ES-4's 0.1 mA).
DEFAULT_AMPLITUDE_STEP_MA = 0.1
# Float noise allowance when turning elapsed seconds into whole seconds.
TIME_EPS = 1e-9


@dataclass
class Ramp:
    """Linear change of the set-domain level from `start_ma` at t0 to `end_ma` at t1."""

    start_ma: float = 0.0
    end_ma: float = 0.0
    t0: float = 0.0
    t1: float = 0.0

    def at(self, now: float) -> float:
        if now >= self.t1 or self.t1 <= self.t0:
            return self.end_ma
        if now <= self.t0:
            return self.start_ma
        return self.start_ma + (self.end_ma - self.start_ma) * (now - self.t0) / (self.t1 - self.t0)


@dataclass
class Channel:
    index: int
    configured: bool = False
    waveform: int = 0
    mode: int = 0
    frequency_hz: float = 0.0
    pulse_width_us: float = 0.0
    amplitude_ma: float = 0.0
    """The set amplitude (before calibration)."""
    state: str = IDLE
    ramp: Ramp = field(default_factory=Ramp)
    started_at: float | None = None
    stopped_at: float | None = None
    duration_s: float = math.inf
    attached: bool = True
    gain: float = 1.0
    offset_ma: float = 0.0
    measure_level_ma: float = 0.0
    """Level last applied to the test load by MEASURE_OUTPUT."""

    @property
    def on(self) -> bool:
        return self.state in OUTPUT_STATES

    def level(self, now: float) -> float:
        return self.ramp.at(now) if self.on else 0.0

    def stimulated_s(self, now: float) -> float:
        if self.started_at is None:
            return 0.0
        end = now if self.on or self.stopped_at is None else self.stopped_at
        return max(0.0, end - self.started_at)


@dataclass(frozen=True)
class StopCommand:
    """When a STOP reached a channel with output on (the output record follows at zero)."""

    t: float
    channel: int
    ramp_s: float


@dataclass
class TensModel(ModelBase):
    channels: dict[int, Channel] = field(default_factory=dict, init=False)
    estop_latched: bool = False
    watchdog_tripped: bool = False
    patient_stop_flag: bool = False
    """Patient stop switch pressed since the last status report."""
    stop_commands: list[StopCommand] = field(default_factory=list)
    amplitude_step_ma: float = field(default=DEFAULT_AMPLITUDE_STEP_MA, init=False)
    timer_s: float | None = None
    """Session timer written on its own (profiles that do not send it with START)."""
    _fired: set[str] = field(default_factory=set, init=False, repr=False)
    """Scheduled faults that have happened (each happens once)."""

    def __post_init__(self) -> None:
        param = self.profile.parameters.get("channel")
        indices = [int(v) for v in param.allowed] if param and param.allowed else [0]
        self.channels = {i: Channel(i) for i in indices}
        self.amplitude_step_ma = _amplitude_step(self)

    # -- writes -------------------------------------------------------------------
    def apply(self, action: str, values: dict[str, Scalar], now: float) -> None:
        if action == "start":
            self._start(values, now)
        elif action == "stop":
            self._stop(values, now)
        elif action == "emergency_stop":
            self._stop_all(now, "emergency_stop")
            self.estop_latched = True
        elif action == "clear_fault":
            self.estop_latched = False
            self.watchdog_tripped = False
        elif action in ("enter_calibration", "leave_calibration"):
            if self.output_on:
                raise Refused("invalid_state", "service mode changes only with all outputs off")
            self.service_mode = action == "enter_calibration"
        else:
            self._set(values, now)

    def _set(self, values: dict[str, Scalar], now: float) -> None:
        ch = self._channel_of(values)
        calibrates = "cal_gain" in values or "cal_offset" in values
        configures = any(k in values for k in CONFIG_KEYS)
        # Every refusal before any change: a refused write changes nothing.
        if calibrates and not self.service_mode:
            raise Refused("service_required", "calibration needs service mode")
        if configures and ch.on:
            raise Refused("invalid_state", f"channel {ch.index} is delivering output")
        if "watchdog_s" in values:
            self.watchdog_s = float(values["watchdog_s"])
        if "timer_s" in values:
            self.timer_s = float(values["timer_s"])
        if calibrates:
            ch.gain = float(values.get("cal_gain", ch.gain))
            ch.offset_ma = float(values.get("cal_offset", ch.offset_ma))
        if configures:
            ch.waveform = int(values.get("waveform", ch.waveform))
            ch.mode = int(values.get("mode", ch.mode))
            ch.frequency_hz = float(values.get("frequency_hz", ch.frequency_hz))
            ch.pulse_width_us = float(values.get("pulse_width_us", ch.pulse_width_us))
            ch.configured = True
        if "amplitude_ma" in values:
            self._set_amplitude(ch, float(values["amplitude_ma"]),
                                float(values.get("ramp_up_s", 0.0)), now)

    def _set_amplitude(self, ch: Channel, amplitude: float, ramp_s: float, now: float) -> None:
        ch.amplitude_ma = amplitude
        if ch.state == RUNNING:
            ch.ramp = Ramp(ch.level(now), amplitude, now, now + max(0.0, ramp_s))
        elif ch.state == RAMPING_UP:
            # Retarget the start ramp; never faster than what was left of it.
            end = max(ch.ramp.t1, now + max(0.0, ramp_s))
            ch.ramp = Ramp(ch.level(now), amplitude, now, end)
        # Ramping down or off: stored, used by the next START.

    def _start(self, values: dict[str, Scalar], now: float) -> None:
        chosen = self._masked(values, strict=True)
        if not chosen:
            raise Refused("out_of_range", "no channel in the mask")
        for ch in chosen:
            if ch.on:
                raise Refused("invalid_state", f"channel {ch.index} is already on")
            if not ch.configured or ch.amplitude_ma <= 0:
                raise Refused("invalid_state", f"channel {ch.index} is not configured "
                              "with a non-zero amplitude")
        for ch in chosen:
            if self._impedance(ch, now) > LEAD_OFF_OHM:
                raise Refused("lead_off", f"channel {ch.index}: electrodes not attached")
        if self.estop_latched:
            raise Refused("fault_latched", "e-stop latched")
        timer = values.get("timer_s", self.timer_s)
        duration = float(timer) if timer is not None and float(timer) > 0 else math.inf
        ramp_s = max(0.0, float(values.get("ramp_up_s", 0.0)))
        self.watchdog_tripped = False
        for ch in chosen:
            ch.state = RAMPING_UP if ramp_s > 0 else RUNNING
            ch.ramp = Ramp(0.0, ch.amplitude_ma, now, now + ramp_s)
            ch.started_at, ch.stopped_at, ch.duration_s = now, None, duration
            self.record(now, True, "start", ch.index)

    def _stop(self, values: dict[str, Scalar], now: float) -> None:
        ramp_s = max(0.0, float(values.get("ramp_down_s", 0.0)))
        for ch in self._masked(values, strict=False):
            if not ch.on:
                continue        # spec: OK, and nothing changes
            self.stop_commands.append(StopCommand(now, ch.index, ramp_s))
            level = ch.level(now)
            if ramp_s <= 0 or level <= 0:
                self._off(ch, now, "stop")
            elif ch.state != RAMPING_DOWN or now + ramp_s < ch.ramp.t1:
                ch.state = RAMPING_DOWN
                ch.ramp = Ramp(level, 0.0, now, now + ramp_s)

    def _masked(self, values: dict[str, Scalar], strict: bool) -> list[Channel]:
        if "channel_mask" not in values:
            return list(self.channels.values())
        mask = int(values["channel_mask"])
        unknown = mask & ~sum(1 << i for i in self.channels)
        if strict and unknown:
            raise Refused("out_of_range", f"channel mask 0x{mask:X} names no channel")
        return [ch for i, ch in self.channels.items() if mask >> i & 1]

    # -- reads ----------------------------------------------------------------------
    def value(self, name: str, channel: int | None) -> Scalar:
        ch = self._channel(channel)
        if name in ("amplitude_ma", *CONFIG_KEYS):
            got: Scalar = getattr(ch, name)
            return got
        model_values: dict[str, Scalar] = {
            "watchdog_s": self.watchdog_s, "timer_s": self.timer_s or 0.0,
            "cal_gain": ch.gain, "cal_offset": ch.offset_ma}
        return model_values.get(name, 0)

    def telemetry(self, name: str, channel: int | None, now: float) -> Scalar:
        ch = self._channel(channel)
        device: dict[str, Scalar] = {
            "estop_latched": self.estop_latched, "watchdog_expired": self.watchdog_tripped,
            "patient_stop": self.patient_stop_flag, "service_mode": self.service_mode}
        if name in device:
            return device[name]
        if name == "output_on":
            return ch.on
        if name == "channel_state":
            return ch.state
        if name == "amplitude_ma":
            return self.delivered_ma(ch.index, now)
        if name == "impedance_ohm":
            return min(round(self._impedance(ch, now)), IMPEDANCE_REPORT_MAX)
        if name == "elapsed_s":
            return min(math.floor(ch.stimulated_s(now) + TIME_EPS), _whole(ch.duration_s))
        if name == "remaining_s":
            if not ch.on or ch.started_at is None or math.isinf(ch.duration_s):
                return 0
            return max(0, math.ceil(ch.started_at + ch.duration_s - now - TIME_EPS))
        return 0

    def telemetry_reported(self, names: set[str]) -> None:
        """The host has been shown these telemetry values: clear report-once flags."""
        if "patient_stop" in names:
            self.patient_stop_flag = False

    def prepare_read(self, ops: frozenset[str], values: dict[str, Scalar], now: float) -> None:
        """A read with arguments: MEASURE_OUTPUT drives the test load at the asked level."""
        if "measure_output" not in ops:
            return
        if not self.service_mode:
            raise Refused("service_required", "measuring the output needs service mode")
        ch = self._channel_of(values)
        if ch.on:
            raise Refused("invalid_state", f"channel {ch.index} is delivering output")
        ch.measure_level_ma = float(values.get("cal_level", 0.0))

    def reading(self, name: str, channel: int | None) -> Scalar:
        ch = self._channel(channel)
        if name == "cal_gain":
            return ch.gain
        if name == "cal_offset":
            return ch.offset_ma
        if name == "cal_measured":
            return self._true_ma(self._calibrated(ch, ch.measure_level_ma))
        return 0

    # -- physics ----------------------------------------------------------------------
    def delivered_ma(self, channel: int, now: float) -> float:
        """What the device believes it delivers now: calibrated and quantised."""
        ch = self._channel(channel)
        return self._calibrated(ch, ch.level(now))

    def true_output_ma(self, channel: int) -> float:
        """The current that really flows now (miscalibration applied): for tests."""
        return self._true_ma(self.delivered_ma(channel, self.clock()))

    def _calibrated(self, ch: Channel, level: float) -> float:
        if level <= 0:
            return 0.0
        step = self.amplitude_step_ma
        steps = round((level * ch.gain + ch.offset_ma) / step)
        return max(0.0, round(steps * step, 6))

    def _true_ma(self, delivered: float) -> float:
        if delivered <= 0:
            return 0.0
        return max(0.0, delivered * self.faults.miscal_gain + self.faults.miscal_offset)

    def _impedance(self, ch: Channel, now: float) -> float:
        if not ch.attached:
            return IMPEDANCE_OPEN_OHM
        settle = math.exp(-ch.stimulated_s(now) / IMPEDANCE_TAU_S)
        return (IMPEDANCE_SETTLED_OHM + ch.index * IMPEDANCE_CHANNEL_STEP_OHM
                + (IMPEDANCE_INITIAL_OHM - IMPEDANCE_SETTLED_OHM) * settle)

    @property
    def output_on(self) -> bool:
        return any(ch.on for ch in self.channels.values())

    # -- time -------------------------------------------------------------------------
    def tick(self, now: float) -> list[SimEvent]:
        events: list[SimEvent] = []
        for ch in self.channels.values():
            if ch.state == RAMPING_DOWN and now >= ch.ramp.t1:
                self._off(ch, ch.ramp.t1, "stop")     # the output reached zero then
        if self.output_on and self.watchdog_expired(now):
            self._stop_all(now, "watchdog")
            self.watchdog_tripped = True
            events.append(SimEvent("watchdog_expired", None))
        events += self._injected_faults(now)
        for ch in self.channels.values():
            if not ch.on:
                continue
            impedance = self._impedance(ch, now)
            if impedance > LEAD_OFF_OHM:
                self._off(ch, now, "lead_off", LEAD_OFF)
                events.append(SimEvent("lead_off", ch.index,
                                       min(round(impedance), IMPEDANCE_REPORT_MAX)))
            elif ch.started_at is not None and now >= ch.started_at + ch.duration_s:
                self._off(ch, now, "timer")
                events.append(SimEvent("session_complete", ch.index))
            elif ch.state == RAMPING_UP and now >= ch.ramp.t1:
                ch.state = RUNNING
        return events

    def _injected_faults(self, now: float) -> list[SimEvent]:
        events: list[SimEvent] = []
        plan = self.faults
        if self._due("patient_stop", plan.patient_stop_at, now, need_output=False):
            self._stop_all(now, "patient_stop")
            self.estop_latched = self.patient_stop_flag = True
            events.append(SimEvent("patient_stop", None))
        if self._due("over_current", plan.overcurrent_at, now, need_output=True):
            ch = self._first_on()
            amplitude = self.delivered_ma(ch.index, now)
            self._stop_all(now, "over_current")
            self.estop_latched = True
            events.append(SimEvent("over_current", ch.index,
                                   round(amplitude / self.amplitude_step_ma)))
        if self._due("lead_off", plan.lead_off_at, now, need_output=True):
            self._first_on().attached = False   # the tick's impedance check stops it
        return events

    def _due(self, name: str, at: float | None, now: float, need_output: bool) -> bool:
        """A scheduled fault that has not yet happened and happens now (once).

        Output faults (lead off, over-current) wait for a channel delivering output.
        """
        if name in self._fired or not self.fault_due(at, now):
            return False
        if need_output and not self.output_on:
            return False
        self._fired.add(name)
        return True

    # -- helpers ----------------------------------------------------------------------
    def _off(self, ch: Channel, t: float, cause: str, state: str = IDLE) -> None:
        ch.state = state
        ch.stopped_at = t
        ch.ramp = Ramp(0.0, 0.0, t, t)
        self.record(t, False, cause, ch.index)

    def _stop_all(self, now: float, cause: str) -> None:
        for ch in self.channels.values():
            if ch.on:
                self._off(ch, now, cause)

    def _first_on(self) -> Channel:
        return next(ch for ch in self.channels.values() if ch.on)

    def _channel(self, channel: int | None) -> Channel:
        if channel is None:
            return next(iter(self.channels.values()))
        ch = self.channels.get(int(channel))
        if ch is None:
            raise Refused("out_of_range", f"no channel {channel}")
        return ch

    def _channel_of(self, values: dict[str, Scalar]) -> Channel:
        raw = values.get("channel")
        return self._channel(None if raw is None else int(raw))


def _whole(seconds: float) -> int:
    return 2**31 if math.isinf(seconds) else math.floor(seconds + TIME_EPS)


def _amplitude_step(model: TensModel) -> float:
    """The resolution of the field that carries `$amplitude_ma` in the profile's map."""
    pmap = model.profile.protocol
    if not isinstance(pmap, FramedMap):
        return DEFAULT_AMPLITUDE_STEP_MA
    for steps in model.profile.operations.defined().values():
        for step in steps:
            cmd = pmap.commands.get(step.write or "")
            for arg, ref in step.args.items():
                if cmd is not None and ref == "$amplitude_ma":
                    spec = next((f for f in cmd.request if f.name == arg), None)
                    if spec is not None:
                        return spec.scale
    return DEFAULT_AMPLITUDE_STEP_MA
