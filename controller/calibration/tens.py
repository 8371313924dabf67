"""TENS calibration: output amplitude per channel into the device's fitted test load.

In service mode, for each channel and amplitude the device drives its test load
(`measure_output`, the amplitude passed as `cal_level`) and reports what it measured; the
technician's meter across the load gives the reference, or, with `reference: device`, the
device's own measurement is taken as it. A linear fit of measured against set amplitude,
composed with the gain and offset in force, gives the channel's new gain and offset
(controller.calibration.fits); after writing them the same levels are measured again (as
left) and each must be within the tolerance below.

No patient output is started: the measurement pulses go to the internal load, and the device
refuses service mode while a channel runs (the procedure refuses first, see calibration.py).
"""

from __future__ import annotations

from controller.calibration.context import ChannelResult, Context, NotAdjustable, PointResult
from controller.calibration.fits import FitError, GainOffset, output_correction
from controller.calibration.plan import ChannelPlan, Phase

# Pass band of a verified level: ±0.5 mA or ±5 % of the set amplitude, whichever is larger.
# Tighter than the 1 mA a running session tolerates between commanded and delivered, so a
# freshly calibrated channel never starts near that fault line; 0.5 mA is five steps of the
# device's 0.1 mA amplitude resolution.
TOLERANCE_MA = 0.5
TOLERANCE_REL = 0.05


def tolerance_ma(level_ma: float) -> float:
    return max(TOLERANCE_MA, TOLERANCE_REL * level_ma)


def calibrate(ctx: Context) -> None:
    dev = ctx.device
    first = ctx.variables(ctx.plan.channels[0].channel)
    ctx.say("Entering service mode (measurements go to the internal 500 ohm test load).")
    dev.enter_service(first)
    for plan in ctx.plan.channels:
        _channel(ctx, plan)


def _channel(ctx: Context, plan: ChannelPlan) -> None:
    dev = ctx.device
    variables = ctx.variables(plan.channel)
    result = ChannelResult(plan.channel)
    ctx.results.append(result)
    result.before = dev.read_calibration(variables)
    ctx.say(f"Channel {plan.channel}: in force gain {result.before['gain']}, offset "
            f"{result.before.get('offset', 0)} mA.")
    result.as_found = _levels(ctx, plan, "as_found")
    current = GainOffset(float(result.before["gain"]), float(result.before.get("offset", 0.0)))
    try:
        new = output_correction(current, [p.level for p in result.as_found],
                                [p.observed for p in result.as_found])
        values = ctx.fit_to_device({"cal_gain": new.gain, "cal_offset": new.offset})
    except (FitError, NotAdjustable) as exc:
        result.problem = f"channel {plan.channel}: {exc}"
        result.concluded = True
        return
    ctx.say(f"Channel {plan.channel}: writing gain {values['cal_gain']}, offset "
            f"{values['cal_offset']} mA.")
    dev.write_calibration({**variables, **values})
    result.written = values
    result.after = dev.read_calibration(variables)
    ctx.check_read_back(result)
    if result.problem is None:
        result.as_left = _levels(ctx, plan, "as_left")
    result.concluded = True


def _levels(ctx: Context, plan: ChannelPlan, phase: Phase) -> list[PointResult]:
    out = []
    variables = ctx.variables(plan.channel)
    for i, spec in enumerate(plan.points(phase)):
        device = ctx.device.measure({**variables, "cal_level": spec.level})
        instruction = (f"{spec.level:g} mA set into the test load; the device measured "
                       f"{device:g} mA")
        reference = ctx.technician.reference(
            ctx.request(phase, plan, i, instruction, device_value=device))
        point = PointResult(level=spec.level, reference=reference.value,
                            source=reference.source, device=device, expected=spec.level,
                            observed=reference.value, tolerance=tolerance_ma(spec.level))
        ctx.say(f"  {spec.level:g} mA: " + point.text("mA"))
        out.append(point)
    return out
