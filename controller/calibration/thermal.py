"""Thermal pad calibration: two-point gain and offset of the pad temperature sensor.

Method (the textbook one for a contact temperature sensor): the pad and a reference
thermometer's probe sit together on a stable temperature source (a stirred water bath or a
thermal block) at each point; the technician reads the reference, the device reports its own
reading (`cal_measured`). The device stays in calibration mode throughout, where it refuses to
enable its output: nothing heats or cools during the procedure, and the calibration does not
depend on the very sensor it corrects to reach its points.

The device reports `raw × gain + offset`; the fit of reference against reported, composed with
the gain and offset in force, gives the new pair (controller.calibration.fits). Then the same
points are read again (as left): each within ±TOLERANCE_C passes.

Unattended (readings file): nobody tells the procedure when the pad has reached a point, so it
waits until the device reading has settled within ARRIVAL_WINDOW_C of the point's reference.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.calibration.context import ChannelResult, Context, NotAdjustable, PointResult
from controller.calibration.device import CalibrationFault
from controller.calibration.fits import FitError, GainOffset, sensor_correction
from controller.calibration.plan import ChannelPlan, Phase

# Pass band of a verified point: three steps of the 0.1 degC reading, room for the display
# step and a source drifting slightly, while keeping the 45 degC heat limit meaningful (a pad
# that reads 1 degC low at 45 degC is a burn risk).
TOLERANCE_C = 0.3
# Device readings averaged per point: several reads 0.1 s apart smooth a reading caught
# between two display steps while the source still drifts slightly.
DEVICE_SAMPLES = 3
SAMPLE_GAP_S = 0.1
# Unattended: the device must settle this close to the point's reference to count as there;
# a device further off than this is not one calibration can be trusted to fix.
ARRIVAL_WINDOW_C = 5.0
# Settled: successive readings within one display step.
STABLE_SPAN_C = 0.1


def calibrate(ctx: Context) -> None:
    plan = ctx.plan.channels[0]
    dev = ctx.device
    variables = ctx.variables(None)
    result = ChannelResult(None)
    ctx.results.append(result)
    ctx.say("Entering calibration mode (the device refuses to heat or cool while in it).")
    dev.enter_service(variables)
    result.before = dev.read_calibration(variables)
    ctx.say(f"In force: gain {result.before['gain']}, offset "
            f"{result.before.get('offset', 0)} degC.")
    result.as_found = _points(ctx, plan, "as_found")
    current = GainOffset(float(result.before["gain"]), float(result.before.get("offset", 0.0)))
    try:
        new = sensor_correction(current, [_dev(p) for p in result.as_found],
                                [p.reference for p in result.as_found])
        values = ctx.fit_to_device({"cal_gain": new.gain, "cal_offset": new.offset})
    except FitError as exc:
        result.problem = (f"{exc} (device read {_list(_dev(p) for p in result.as_found)} degC "
                          f"at references {_list(p.reference for p in result.as_found)} degC: "
                          "was the pad on the source at each point?)")
        result.concluded = True
        return
    except NotAdjustable as exc:
        result.problem = str(exc)
        result.concluded = True
        return
    ctx.say(f"Writing gain {values['cal_gain']}, offset {values['cal_offset']} degC.")
    dev.write_calibration({**variables, **values})
    result.written = values
    result.after = dev.read_calibration(variables)
    ctx.check_read_back(result)
    if result.problem is None:
        result.as_left = _points(ctx, plan, "as_left")
    result.concluded = True
    dev.leave_service(variables)


def _points(ctx: Context, plan: ChannelPlan, phase: Phase) -> list[PointResult]:
    out = []
    for i, spec in enumerate(plan.points(phase)):
        if ctx.technician.unattended:
            instruction = (f"the pad should be on the reference source at {spec.level:g} degC; "
                           "waiting for the device reading to settle")
        else:
            instruction = (f"put the pad and the reference probe together on a stable source at "
                           f"about {spec.level:g} degC (water bath or thermal block); when both "
                           "readings are steady, read the reference")
        reference = ctx.technician.reference(ctx.request(phase, plan, i, instruction))
        if ctx.technician.unattended:
            _wait_until_settled(ctx, reference.value)
        device = _device_reading(ctx)
        point = PointResult(level=spec.level, reference=reference.value, source=reference.source,
                            device=device, expected=reference.value, observed=device,
                            tolerance=TOLERANCE_C)
        ctx.say("  " + point.text("degC", "reference", "device reads"))
        out.append(point)
    return out


def _device_reading(ctx: Context) -> float:
    samples = []
    for i in range(DEVICE_SAMPLES):
        if i:
            ctx.device.sleep(SAMPLE_GAP_S)
        samples.append(ctx.device.measure(ctx.variables(None)))
    return sum(samples) / len(samples)


def _wait_until_settled(ctx: Context, reference_c: float) -> None:
    timing, dev = ctx.timing, ctx.device
    deadline = dev.clock() + timing.arrival_timeout_s
    recent: list[float] = []
    while True:
        recent = [*recent, dev.measure(ctx.variables(None))][-timing.stable_samples:]
        settled = len(recent) == timing.stable_samples and \
            max(recent) - min(recent) <= STABLE_SPAN_C + 1e-9
        if settled and abs(recent[-1] - reference_c) <= ARRIVAL_WINDOW_C:
            return
        if dev.clock() >= deadline:
            raise CalibrationFault(
                f"the pad did not settle near {reference_c:g} degC within "
                f"{timing.arrival_timeout_s:g} s (the device reads {recent[-1]:g} degC): is it "
                "on the reference source?")
        dev.sleep(timing.stable_poll_s)


def _list(values: Iterable[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _dev(point: PointResult) -> float:
    assert point.device is not None
    return point.device
