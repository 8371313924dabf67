"""Ultrasound calibration: acoustic output power against a radiation force balance.

At each intensity the device runs continuously with the applicator face in the balance's
water tank; the technician reads the balance (reference, W), which is compared with the
nominal power intensity × ERA × duty (ERA from the device). A least-squares fit through the
origin of reference against nominal gives the gain correction, written with the calibration
date in service mode; the same measurement after (as left) passes when every level is within
±TOLERANCE_REL of nominal.

The device refuses to start its output in service mode, so service mode is entered only to
write the gain and date, and left before any verification run.

Every run is a short treatment-like output: the levels pass the same prescription limit
check as a session, the device watchdog and a session timer of MAX_OUTPUT_S (plus the
profile's margin) are armed before the start, the watchdog is fed while the technician reads,
and the output is stopped and confirmed off after each reading, on every path (finally).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from controller.calibration.context import ChannelResult, Context, NotAdjustable, PointResult
from controller.calibration.device import CalibrationFault, while_waiting
from controller.calibration.fits import FitError, gain_correction
from controller.calibration.plan import PHASES, CalibrationPlan, ChannelPlan, Phase
from controller.calibration.technician import Reference
from controller.modality.prescription import Prescription, PrescriptionRejected, build_prescription
from controller.modality.ultrasound import expected_power_w
from controller.profiles.model import Profile
from protocols.map_common import Scalar

# IEC 60601-2-5 asks the output power to stay within ±20 % of the indicated value.
TOLERANCE_REL = 0.20
# Continuous output: a balance reads time-averaged power, and pulsing would add the duty
# cycle's own error to the gain.
CAL_DUTY_PCT = 100
INTENSITY = "intensity_w_cm2"
DUTY = "duty_pct"
ERA = "era_cm2"


def check_plan(profile: Profile, plan: CalibrationPlan, run_s: float) -> list[str]:
    """Every level must pass the prescription limits of a session of `run_s` (before anything
    is sent to the device)."""
    problems: list[str] = []
    for ch in plan.channels:
        for phase in PHASES:
            for spec in ch.points(phase):
                try:
                    _prescription(profile, spec.level, run_seconds(run_s), None)
                except PrescriptionRejected as exc:
                    where = f"line {spec.line}: " if spec.line else ""
                    problems += [f"{where}{spec.level:g} W/cm2: {m}" for m in exc.messages()]
    return sorted(set(problems))


def calibrate(ctx: Context) -> None:
    plan, dev = ctx.plan.channels[0], ctx.device
    variables = ctx.variables(None)
    result = ChannelResult(None)
    ctx.results.append(result)
    result.before = dev.read_calibration(variables)
    era = _number(dev.telemetry(variables).get(ERA), "the applicator's ERA")
    if era <= 0:
        raise CalibrationFault("the device reports no applicator (ERA 0): fit one first")
    ctx.say(f"In force: gain {result.before['gain']}, calibrated "
            f"{result.before.get('date', 'unknown')}; applicator ERA {era:g} cm2.")
    result.as_found = _levels(ctx, plan, "as_found", era)
    try:
        gain = gain_correction(float(result.before["gain"]),
                               [p.expected for p in result.as_found],
                               [p.observed for p in result.as_found])
        values = ctx.fit_to_device({"cal_gain": gain})
    except (FitError, NotAdjustable) as exc:
        result.problem = str(exc)
        result.concluded = True
        return
    values["cal_date"] = ctx.today.isoformat()
    ctx.say(f"Service mode: writing gain {values['cal_gain']} and date {values['cal_date']}.")
    dev.enter_service(variables)
    dev.write_calibration({**variables, **values})
    result.written = values
    result.after = dev.read_calibration(variables)
    dev.leave_service(variables)
    ctx.check_read_back(result)
    if result.problem is None:
        result.as_left = _levels(ctx, plan, "as_left", era)
    result.concluded = True


def _levels(ctx: Context, plan: ChannelPlan, phase: Phase, era: float) -> list[PointResult]:
    out = []
    for i, spec in enumerate(plan.points(phase)):
        nominal = expected_power_w(spec.level, era, CAL_DUTY_PCT)
        instruction = (f"{spec.level:g} W/cm2 continuous (nominal {nominal:.3g} W); the output "
                       f"runs for at most {ctx.timing.max_output_s:g} s: read the balance once "
                       "it is steady")
        reference, device = _run_and_read(ctx, plan, phase, i, instruction, era)
        point = PointResult(level=spec.level, reference=reference.value,
                            source=reference.source, device=device, expected=nominal,
                            observed=reference.value, tolerance=TOLERANCE_REL, relative=True)
        ctx.say(f"  {spec.level:g} W/cm2: " + point.text("W"))
        out.append(point)
    return out


def _run_and_read(ctx: Context, plan: ChannelPlan, phase: Phase, index: int,
                  instruction: str, era: float) -> tuple[Reference, float]:
    """Run the output at one level, get the reference while it runs; always stop it."""
    dev, timing = ctx.device, ctx.timing
    level = plan.points(phase)[index].level
    try:
        rx = _prescription(ctx.profile, level, run_seconds(timing.max_output_s), era)
    except PrescriptionRejected as exc:
        raise CalibrationFault("; ".join(exc.messages())) from None
    variables: dict[str, Scalar] = {**rx.device_values, **rx.session_values,
                                    "watchdog_s": ctx.profile.safety.watchdog_s,
                                    "timer_s": run_seconds(
                                        timing.max_output_s + ctx.profile.safety.timer_margin_s)}

    def keep_alive() -> None:
        _check_running(dev.telemetry(variables))

    try:
        dev.start_output(None, variables)
        settle_until = dev.clock() + timing.settle_s
        while dev.clock() < settle_until:
            dev.sleep(min(timing.poll_s, timing.settle_s))
            keep_alive()
        request = ctx.request(phase, plan, index, instruction)
        reference = while_waiting(lambda: ctx.technician.reference(request), keep_alive,
                                  timing.poll_s, timing.max_output_s, "balance reading")
        _check_running(dev.telemetry(variables))
        device = dev.measure(variables)
    finally:
        stopped = dev.stop_output(None)
    if not stopped:
        raise CalibrationFault("stop not confirmed by device")
    return reference, device


def run_seconds(seconds: float) -> float:
    """Device timers and session durations count whole seconds: round up."""
    return float(math.ceil(seconds))


def _check_running(telemetry: Mapping[str, Scalar]) -> None:
    if telemetry.get("output_on") and telemetry.get("state") == "running":
        return
    state = telemetry.get("state")
    if state == "holding":
        raise CalibrationFault("the applicator is not coupled (the device holds its output): "
                               "immerse its face in the balance's degassed water")
    raise CalibrationFault(f"the output stopped during the reading (state {state}, fault "
                           f"{telemetry.get('fault_code')}); the reading is not used")


def _prescription(profile: Profile, level: float, run_s: float,
                  era: float | None) -> Prescription:
    facts = None if era is None else {ERA: era}
    return build_prescription(profile, {INTENSITY: f"{level:g}", DUTY: str(CAL_DUTY_PCT)},
                              run_s, facts=facts)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalibrationFault(f"{what} is {value!r}, not a number")
    return float(value)
