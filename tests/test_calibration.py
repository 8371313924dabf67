"""Technician calibration: the math, readings files, each modality against a deliberately
miscalibrated simulator (before fails, after passes, recorded), and safety on errors."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest

from controller.calibration.context import Timing
from controller.calibration.fits import (
    FitError,
    GainOffset,
    gain_correction,
    linear_fit,
    output_correction,
    quantize,
    sensor_correction,
)
from controller.calibration.gate import check_calibration
from controller.calibration.plan import CalibrationPlan, default_plan
from controller.calibration.procedure import CalibrationJob, CalibrationOutcome, run_calibration
from controller.calibration.readings import ReadingsError, load_readings
from controller.calibration.technician import (
    CalibrationAborted,
    FileTechnician,
    PointRequest,
    PromptTechnician,
    Reference,
)
from controller.cli import calibrate_cmd
from controller.cli.common import UsageError
from controller.device.link import DeviceLink
from controller.profiles.loader import resolve_profile
from controller.profiles.model import Profile
from controller.records.store import RecordStore
from protocols.errors import LinkTimeout
from protocols.map_common import Scalar
from simulator.server import SimulatedDevice
from simulator.tens_model import TensModel
from simulator.thermal_model import ThermalModel
from simulator.ultrasound_model import UltrasoundModel
from tests.conftest import SimFactory

# Short waits: the simulator settles at once, so the suite stays fast.
FAST = Timing(poll_s=0.2, settle_s=0.05, max_output_s=5.0, stable_samples=2,
              stable_poll_s=0.05, arrival_timeout_s=5.0)


def profile(pid: str) -> Profile:
    return resolve_profile(pid).profile


def quiet(_: str) -> None:
    pass


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    with RecordStore(tmp_path / "records.sqlite3") as s:
        yield s


@pytest.fixture(autouse=True)
def roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tom is a technician, carol a clinician (roles enforced in every test here)."""
    path = tmp_path / "roles.yaml"
    path.write_text("operators:\n  tom: [technician]\n  carol: [clinician]\n")
    path.chmod(0o600)
    monkeypatch.setenv("MODCTL_ROLES", str(path))
    return path


# -- technicians that read the simulator's truth -----------------------------------------------

class BathTechnician:
    """Puts the pad on a bath at the point's temperature and reads a perfect thermometer."""

    unattended = False

    def __init__(self, model: ThermalModel, offset_c: float = 0.03) -> None:
        self.model = model
        self.offset_c = offset_c

    def reference(self, request: PointRequest) -> Reference:
        with self.model.lock:
            self.model.pad_c = request.spec.level + self.offset_c
            return Reference(self.model.pad_c, "technician")


class BalanceTechnician:
    """Reads a radiation force balance: the model's true acoustic power."""

    unattended = False

    def __init__(self, model: UltrasoundModel,
                 hook: Callable[[PointRequest], None] | None = None) -> None:
        self.model = model
        self.hook = hook
        self.seen_on: list[bool] = []

    def reference(self, request: PointRequest) -> Reference:
        if self.hook is not None:
            self.hook(request)
        with self.model.lock:
            self.seen_on.append(self.model.output_on)
            return Reference(round(self.model.true_power_w(), 3), "technician")


class MeterTechnician:
    """Reads a meter across the test load: the current that really flows."""

    unattended = False

    def __init__(self, model: TensModel,
                 hook: Callable[[PointRequest], None] | None = None) -> None:
        self.model = model
        self.hook = hook

    def reference(self, request: PointRequest) -> Reference:
        if self.hook is not None:
            self.hook(request)
        with self.model.lock:
            return Reference(float(self.model.reading("cal_measured", request.channel)),
                             "technician")


def job(prof: Profile, port: str, plan: CalibrationPlan | None = None,
        channels: list[int | None] | None = None) -> CalibrationJob:
    plan = plan or default_plan(prof.modality, channels or [None])
    return CalibrationJob(prof, port, "bay-1", "tom", "Fluke 1524", "FL-0031", plan)


def run(j: CalibrationJob, technician: Any, store: Any, **kw: Any) -> CalibrationOutcome:
    return run_calibration(j, technician, store, timing=FAST, say=quiet, **kw)


def outputs_all_stopped(device: SimulatedDevice) -> bool:
    model = device.model
    with model.lock:
        history = list(model.history)
        on = model.output_on
    return not on and sum(1 for c in history if c.on) == sum(1 for c in history if not c.on)


# -- the math, with known numbers --------------------------------------------------------------

def test_linear_fit() -> None:
    line = linear_fit([1.0, 2.0, 3.0], [3.0, 5.0, 7.0])
    assert line.slope == pytest.approx(2.0) and line.intercept == pytest.approx(1.0)
    with pytest.raises(FitError, match="same level"):
        linear_fit([5.0, 5.0], [1.0, 2.0])
    with pytest.raises(FitError, match="at least 2"):
        linear_fit([5.0], [1.0])


@pytest.mark.parametrize("current", [GainOffset(1.0, 0.0), GainOffset(1.02, 0.3)])
def test_sensor_correction_accounts_for_the_calibration_in_force(current: GainOffset) -> None:
    # Sensor raw = truth × 1.04 − 0.5; the device reports raw × gain + offset.
    truth = [20.0, 42.0]
    reported = [(t * 1.04 - 0.5) * current.gain + current.offset for t in truth]
    new = sensor_correction(current, reported, truth)
    assert new.gain == pytest.approx(1 / 1.04)      # 0.961538...
    assert new.offset == pytest.approx(0.5 / 1.04)  # 0.480769 degC
    assert all(((t * 1.04 - 0.5) * new.gain + new.offset) == pytest.approx(t) for t in truth)


@pytest.mark.parametrize("current", [GainOffset(1.0, 0.0), GainOffset(0.98, 0.1)])
def test_output_correction_accounts_for_the_calibration_in_force(current: GainOffset) -> None:
    # Delivered = set × gain + offset; the load sees delivered × 1.06 + 0.3.
    levels = [10.0, 30.0, 60.0]
    measured = [(a * current.gain + current.offset) * 1.06 + 0.3 for a in levels]
    new = output_correction(current, levels, measured)
    assert new.gain == pytest.approx(1 / 1.06)       # 0.943396
    assert new.offset == pytest.approx(-0.3 / 1.06)  # -0.283019 mA
    assert all(((a * new.gain + new.offset) * 1.06 + 0.3) == pytest.approx(a) for a in levels)


def test_gain_correction_least_squares() -> None:
    nominal = [2.5, 5.0, 10.0]
    assert gain_correction(0.95, nominal, [n * 0.95 * 1.22 for n in nominal]) == \
        pytest.approx(1 / 1.22)
    # Noisy readings: k = Σxy / Σx² = (2.5×3 + 5×6 + 10×12.4) / 131.25 = 1.2305
    assert gain_correction(1.0, nominal, [3.0, 6.0, 12.4]) == pytest.approx(131.25 / 161.5)
    with pytest.raises(FitError, match="zero or negative"):
        gain_correction(1.0, nominal, [0.0, 0.0, 0.0])


def test_a_falling_response_is_not_corrected() -> None:
    with pytest.raises(FitError, match="falls"):
        output_correction(GainOffset(1.0, 0.0), [10.0, 30.0], [12.0, 8.0])


def test_quantize_to_the_device_step() -> None:
    assert quantize(0.961538, 0.0001) == 0.9615
    assert quantize(-0.283019, 0.01) == -0.28
    assert quantize(1 / 1.22, 0.001) == 0.82
    assert quantize(1.23456, None) == 1.23456


# -- prompts -----------------------------------------------------------------------------------

def _request(prof: Profile, device_value: float | None = None) -> PointRequest:
    plan = default_plan(prof.modality, [0 if prof.modality == "tens" else None])
    from controller.calibration.plan import SHAPES
    ch = plan.channels[0]
    return PointRequest("as_found", 0, len(ch.as_found), ch.channel, ch.as_found[0],
                        SHAPES[prof.modality], "do this", device_value)


def test_prompt_retries_then_gives_up() -> None:
    answers = iter(["abc", "41,97"])
    said: list[str] = []
    tech = PromptTechnician(lambda _: next(answers), said.append)
    assert tech.reference(_request(profile("hc-200"))) == Reference(41.97, "technician")
    assert any("'abc' is not a number" in s for s in said)
    tech = PromptTechnician(lambda _: "x", quiet)
    with pytest.raises(CalibrationAborted, match="after 3 tries"):
        tech.reference(_request(profile("hc-200")))


def test_prompt_abort_and_end_of_input() -> None:
    with pytest.raises(CalibrationAborted, match="abandoned"):
        PromptTechnician(lambda _: "abort", quiet).reference(_request(profile("hc-200")))

    def eof(_: str) -> str:
        raise EOFError

    with pytest.raises(CalibrationAborted, match="end of input"):
        PromptTechnician(eof, quiet).reference(_request(profile("hc-200")))


def test_prompt_offers_the_device_measurement_for_tens() -> None:
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return ""

    tech = PromptTechnician(ask, quiet, device_may_answer=True)
    assert tech.reference(_request(profile("es-4"), 10.9)) == Reference(10.9, "device")
    assert "Enter: the device's own 10.9" in prompts[0]


# -- readings files ----------------------------------------------------------------------------

def readings(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "readings.yaml"
    path.write_text(text)
    return path


def problems_of(path: Path, pid: str, channels: list[int | None] | None = None) -> list[str]:
    with pytest.raises(ReadingsError) as info:
        load_readings(path, profile(pid), channels or [None])
    return info.value.problems


HEAD = "instrument: Fluke 1524\ninstrument_id: FL-0031\n"


def test_readings_thermal_defaults_verify_to_the_same_points(tmp_path: Path) -> None:
    path = readings(tmp_path, HEAD + "points:\n  - {reference_c: 20.1}\n  - {reference_c: 41.9}\n")
    plan = load_readings(path, profile("hc-200"), [None])
    assert [p.level for p in plan.channels[0].as_found] == [20.1, 41.9]
    assert plan.channels[0].as_left == plan.channels[0].as_found
    assert plan.unattended and plan.instrument_id == "FL-0031"


def test_readings_missing_point(tmp_path: Path) -> None:
    path = readings(tmp_path, HEAD + "points:\n  - {reference_c: 20.1}\n")
    [problem] = problems_of(path, "hc-200")
    assert problem == (f"{path}:4: points: 1 point given; the as found readings need at "
                       "least 2")
    path = readings(tmp_path, HEAD + "points:\n  - {intensity_w_cm2: 1.0, reference_w: 5.1}\n"
                                     "  - {intensity_w_cm2: 2.0, reference_w: 10.3}\n")
    [problem] = problems_of(path, "us-300")
    assert "verify: missing: the as left (after adjustment) readings are needed" in problem


def test_readings_non_number(tmp_path: Path) -> None:
    path = readings(tmp_path, HEAD + "points:\n  - {intensity_w_cm2: 1.0, reference_w: abc}\n"
                                     "  - {intensity_w_cm2: 2.0, reference_w: 10.3}\n"
                                     "verify:\n  - {intensity_w_cm2: 1.0, reference_w: 5.0}\n")
    [problem] = problems_of(path, "us-300")
    assert problem.startswith(f"{path}:4: points[0].reference_w: Input should be a valid number")
    assert "'abc'" in problem


def test_readings_unknown_channel_and_missing_meter_reading(tmp_path: Path) -> None:
    path = readings(tmp_path, HEAD + "channels:\n"
                    "  0:\n    points: [{amplitude_ma: 10}, {amplitude_ma: 30, reference_ma: 31}]\n"
                    "    verify: [{amplitude_ma: 10, reference_ma: 10.1}]\n"
                    "  2:\n    points: [{amplitude_ma: 10, reference_ma: 10.9}]\n")
    problems = problems_of(path, "es-4", [0])
    assert any("channels[2]: es-4 has no channel 2 (channels: 0, 1)" in p for p in problems)
    assert any(":5: channels[0].points[0]: missing reference_ma: the output meter reading"
               in p for p in problems)


def test_readings_levels_wrong_profile_and_unknown_keys(tmp_path: Path) -> None:
    path = readings(tmp_path, HEAD + "profile: us-300\nreference: device\n"
                    "channels:\n  0:\n    points: [{amplitude_ma: 95}, {amplitude_ma: 10.05}]\n")
    problems = problems_of(path, "es-4", [0])
    assert any("profile: the readings are for profile us-300, not es-4" in p for p in problems)
    assert any("95 mA is outside what es-4 allows for amplitude_ma (0.1..80 mA)" in p
               for p in problems)
    assert any("10.05 mA is not on the device's 0.1 mA step" in p for p in problems)
    path = readings(tmp_path, HEAD + "pointz: []\n")
    assert "unknown key 'pointz'" in problems_of(path, "hc-200")[0]


def test_readings_tens_device_reference_needs_no_values(tmp_path: Path) -> None:
    path = readings(tmp_path, HEAD + "reference: device\n")
    plan = load_readings(path, profile("es-4"), [0, 1])
    assert plan.reference_source == "device"
    assert [c.channel for c in plan.channels] == [0, 1]
    assert [p.level for p in plan.channels[1].as_left] == [10.0, 30.0, 60.0]


def test_the_documented_readings_files_load(tmp_path: Path) -> None:
    import re

    import yaml
    doc = (Path(__file__).resolve().parents[1] / "docs" / "calibration.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    assert len(blocks) == 4
    for i, block in enumerate(blocks):
        pid = yaml.safe_load(block).get("profile", "es-4")
        path = tmp_path / f"doc{i}.yaml"
        path.write_text(block)
        prof = profile(pid)
        plan = load_readings(path, prof, [0, 1] if pid == "es-4" else [None])
        assert plan.instrument and plan.channels


# -- each modality against a miscalibrated simulator -------------------------------------------

def test_thermal_two_point(sim_device: SimFactory, store: RecordStore) -> None:
    dev = sim_device("hc-200", miscal_gain=1.04, miscal_offset=-0.5)
    model = cast(ThermalModel, dev.model)
    out = run(job(dev.profile, dev.port), BathTechnician(model), store)
    assert out.verdict == "passed", out.reason
    [r] = out.results
    assert not r.as_found_within                       # before: the check fails
    assert all(p.within for p in r.as_left)            # after: it passes
    assert r.written == {"cal_gain": pytest.approx(0.9615, abs=6e-4),
                         "cal_offset": pytest.approx(0.48, abs=0.03)}
    with model.lock:
        assert not model.service_mode and not model.running
        model.pad_c = 38.0
        assert model.reported_c() == pytest.approx(38.0, abs=0.1)
    [row] = store.calibrations("bay-1")
    assert row.passed and row.technician == "tom" and row.instrument_id == "FL-0031"
    assert (row.next_due - out.performed_at.date()).days == 365
    assert row.before["channels"][0]["calibration"] == {"gain": 1.0, "offset": 0.0}
    assert row.after["channels"][0]["calibration"]["gain"] == pytest.approx(0.9615, abs=6e-4)
    assert row.after["safety"]["service_mode_left"] is True


def test_thermal_unattended_waits_for_the_pad(sim_device: SimFactory, store: RecordStore,
                                              tmp_path: Path) -> None:
    dev = sim_device("hc-200", miscal_gain=1.04, miscal_offset=-0.5)
    model = cast(ThermalModel, dev.model)
    path = readings(tmp_path, HEAD + "points:\n  - {reference_c: 20.0}\n"
                                     "  - {reference_c: 42.0}\n")
    plan = load_readings(path, dev.profile, [None])

    class Rig(FileTechnician):
        """The file's references; a rig moves the pad onto each source a little later."""

        def reference(self, request: PointRequest) -> Reference:
            def move() -> None:
                time.sleep(0.2)
                with model.lock:
                    model.pad_c = request.spec.level
            threading.Thread(target=move).start()
            return super().reference(request)

    out = run(job(dev.profile, dev.port, plan), Rig(plan, quiet), store)
    assert out.verdict == "passed", out.reason
    assert [p.source for p in out.results[0].as_found] == ["file", "file"]


def test_thermal_not_adjustable_is_recorded_failed(sim_device: SimFactory,
                                                   store: RecordStore) -> None:
    dev = sim_device("hc-200", miscal_gain=1.25)        # beyond the 0.9..1.1 gain register
    model = cast(ThermalModel, dev.model)
    out = run(job(dev.profile, dev.port), BathTechnician(model), store)
    assert out.verdict == "failed" and out.exit_status == 5
    assert "outside what the device accepts (0.9..1.1)" in out.reason
    with model.lock:
        assert model.cal_gain == 1.0 and not model.service_mode
    [row] = store.calibrations("bay-1")
    assert not row.passed and row.next_due == out.performed_at.date()
    assert check_calibration(store, dev.profile, "bay-1", datetime.now()) is None  # unregistered
    store.add_device("bay-1", "hc-200", dev.port, "tom")
    reason = check_calibration(store, dev.profile, "bay-1", datetime.now())
    assert reason is not None and "failed" in reason


def test_thermal_pad_left_off_the_source(sim_device: SimFactory, store: RecordStore) -> None:
    dev = sim_device("hc-200")

    class Careless:
        unattended = False

        def reference(self, request: PointRequest) -> Reference:
            return Reference(request.spec.level, "technician")   # the pad stays at 32 degC

    out = run(job(dev.profile, dev.port), Careless(), store)
    assert out.verdict == "failed"
    assert "all at the same level" in out.reason and "was the pad on the source" in out.reason
    with dev.model.lock:
        assert not dev.model.service_mode


def test_ultrasound_gain(sim_device: SimFactory, store: RecordStore) -> None:
    dev = sim_device("us-300", miscal_gain=1.22)
    model = cast(UltrasoundModel, dev.model)
    tech = BalanceTechnician(model)
    out = run(job(dev.profile, dev.port), tech, store)
    assert out.verdict == "passed", out.reason
    [r] = out.results
    assert not r.as_found_within and all(p.within for p in r.as_left)
    assert all(abs(p.error) < 0.01 for p in r.as_left)
    assert r.written == {"cal_gain": 0.82, "cal_date": out.performed_at.date().isoformat()}
    assert all(tech.seen_on)            # the output ran while the balance was read
    assert outputs_all_stopped(dev)
    with model.lock:
        assert not model.service_mode and model.cal_gain == 0.82
        assert all(c.cause == "stop" for c in model.history if not c.on)
    [row] = store.calibrations("bay-1")
    assert row.passed and row.before["channels"][0]["calibration"]["gain"] == 1.0


def test_ultrasound_within_tolerance_as_found_is_still_corrected(sim_device: SimFactory,
                                                                 store: RecordStore) -> None:
    dev = sim_device("us-300", miscal_gain=0.85)
    out = run(job(dev.profile, dev.port), BalanceTechnician(cast(UltrasoundModel, dev.model)),
              store)
    assert out.verdict == "passed"
    [r] = out.results
    assert r.as_found_within and r.written is not None
    assert r.written["cal_gain"] == pytest.approx(1 / 0.85, abs=1e-3)
    assert all(abs(p.error) < 0.01 for p in r.as_left)


def test_tens_both_channels(sim_device: SimFactory, store: RecordStore) -> None:
    dev = sim_device("es-4", miscal_gain=1.06, miscal_offset=0.3)
    model = cast(TensModel, dev.model)
    out = run(job(dev.profile, dev.port, channels=[0, 1]), MeterTechnician(model), store)
    assert out.verdict == "passed", out.reason
    assert [r.channel for r in out.results] == [0, 1]
    for r in out.results:
        assert not r.as_found_within and all(p.within for p in r.as_left)
        assert r.written == {"cal_gain": 0.9434, "cal_offset": -0.28}
    with model.lock:
        assert not model.service_mode and not model.output_on
        assert model.channels[1].gain == 0.9434
    [row] = store.calibrations("bay-1")
    assert [c["channel"] for c in row.after["channels"]] == [0, 1]


def test_tens_device_reference_from_a_file(sim_device: SimFactory, store: RecordStore,
                                           tmp_path: Path) -> None:
    dev = sim_device("es-4", miscal_gain=1.06, miscal_offset=0.3)
    plan = load_readings(readings(tmp_path, HEAD + "reference: device\n"), dev.profile, [1])
    out = run(job(dev.profile, dev.port, plan), FileTechnician(plan, quiet), store)
    assert out.verdict == "passed", out.reason
    assert [r.channel for r in out.results] == [1]
    assert {p.source for p in out.results[0].as_found} == {"device"}
    with dev.model.lock:
        assert cast(TensModel, dev.model).channels[0].gain == 1.0   # channel 0 untouched


# -- errors mid-procedure: service mode left, output off, said in the record -------------------

def test_ultrasound_abort_while_the_output_runs(sim_device: SimFactory,
                                                store: RecordStore) -> None:
    dev = sim_device("us-300", miscal_gain=1.22)

    def abort_on_verification(request: PointRequest) -> None:
        if request.phase == "as_left":
            raise CalibrationAborted("abandoned by the technician")

    out = run(job(dev.profile, dev.port),
              BalanceTechnician(cast(UltrasoundModel, dev.model), abort_on_verification), store)
    assert out.verdict == "aborted" and out.exit_status == 4
    assert outputs_all_stopped(dev)
    with dev.model.lock:
        assert not dev.model.service_mode
    [row] = store.calibrations("bay-1")          # the gain was written: recorded, failed
    assert not row.passed and row.after["reason"] == "abandoned by the technician"
    assert row.after["safety"] == {"output_off_confirmed": True, "service_mode_left": True,
                                   "notes": []}


def test_ultrasound_no_reading_in_time_stops_the_output(sim_device: SimFactory,
                                                        store: RecordStore) -> None:
    dev = sim_device("us-300")
    timing = Timing(poll_s=0.1, settle_s=0.0, max_output_s=0.6)
    polled_while_waiting: list[bool] = []

    def slow(request: PointRequest) -> None:
        time.sleep(1.2)                     # longer than the device watchdog would allow
        polled_while_waiting.append(True)

    out = run_calibration(job(dev.profile, dev.port),
                          BalanceTechnician(cast(UltrasoundModel, dev.model), slow), store,
                          timing=timing, say=quiet)
    assert out.verdict == "fault" and "no balance reading within 0.6 s" in out.reason
    assert outputs_all_stopped(dev)
    with dev.model.lock:
        assert [c.cause for c in dev.model.history] == ["start", "stop"]  # not the watchdog
    assert store.calibrations("bay-1") == []    # nothing written: calibration unchanged


def test_ultrasound_contact_lost_is_a_fault(sim_device: SimFactory, store: RecordStore) -> None:
    dev = sim_device("us-300", contact_lost=(0.0, 100.0))
    out = run(job(dev.profile, dev.port), BalanceTechnician(cast(UltrasoundModel, dev.model)),
              store)
    assert out.verdict == "fault" and "not coupled" in out.reason and out.exit_status == 5
    assert outputs_all_stopped(dev)


class FlakyLink(DeviceLink):
    """Fails one operation once, as a lost reply would."""

    fail_op = "read_calibration"
    after_write = True

    def run(self, op: str, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        if op == self.fail_op and getattr(self, "_armed", False):
            self._armed = False
            raise LinkTimeout(f"{op}: no reply")
        if op == "write_calibration":
            self._armed = True
        return super().run(op, variables)


def test_thermal_link_fault_after_writing(sim_device: SimFactory, store: RecordStore) -> None:
    dev = sim_device("hc-200", miscal_gain=1.04, miscal_offset=-0.5)
    model = cast(ThermalModel, dev.model)
    out = run(job(dev.profile, dev.port), BathTechnician(model), store,
              open_link=FlakyLink.open)
    assert out.verdict == "fault" and "no reply" in out.reason
    with model.lock:
        assert not model.service_mode
    [row] = store.calibrations("bay-1")
    assert not row.passed and row.after["safety"]["service_mode_left"] is True


class StuckInService(DeviceLink):
    """Every attempt at leaving service mode goes unanswered."""

    def run(self, op: str, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        if op == "leave_calibration":
            raise LinkTimeout("leave_calibration: no reply")
        return super().run(op, variables)


def test_service_mode_not_confirmed_left_fails_and_says_so(sim_device: SimFactory,
                                                           store: RecordStore) -> None:
    dev = sim_device("es-4", miscal_gain=1.06, miscal_offset=0.3)
    out = run(job(dev.profile, dev.port, channels=[0]),
              MeterTechnician(cast(TensModel, dev.model)), store, open_link=StuckInService.open)
    assert out.verdict == "failed" and out.exit_status == 5
    assert "leaving service mode not confirmed by device" in out.reason
    assert "the device still reports service mode" in out.reason
    [row] = store.calibrations("bay-1")
    assert not row.passed and row.after["safety"]["service_mode_left"] is False
    assert row.after["channels"][0]["passed"]     # the verification itself was fine


def test_tens_abort_on_the_second_channel(sim_device: SimFactory, store: RecordStore) -> None:
    dev = sim_device("es-4", miscal_gain=1.06, miscal_offset=0.3)
    model = cast(TensModel, dev.model)

    def abort(request: PointRequest) -> None:
        if request.channel == 1:
            raise KeyboardInterrupt

    out = run(job(dev.profile, dev.port, channels=[0, 1]), MeterTechnician(model, abort), store)
    assert out.verdict == "aborted" and "Ctrl-C" in out.reason
    with model.lock:
        assert not model.service_mode and model.channels[0].gain == 0.9434
    [row] = store.calibrations("bay-1")
    assert not row.passed


def test_a_busy_device_is_refused(sim_device: SimFactory, store: RecordStore) -> None:
    dev = sim_device("us-300")
    link = DeviceLink.open(dev.profile, dev.port)
    try:
        link.run("configure", {"frequency_mhz": 1, "duty_pct": 100, "intensity_w_cm2": 1.0})
        link.run("arm", {"watchdog_s": 0, "timer_s": 30})
        link.run("start", {})
        # Another controller's session leaves the port (one controller per port); its
        # output runs on. Calibration must see it and leave it alone.
        link.close()
        out = run(job(dev.profile, dev.port),
                  BalanceTechnician(cast(UltrasoundModel, dev.model)), store)
        assert out.verdict == "refused" and out.exit_status == 3
        assert "delivering output" in out.reason
        with dev.model.lock:
            assert dev.model.output_on                 # somebody's session: left alone
    finally:
        link = DeviceLink.open(dev.profile, dev.port)
        link.run("stop", {})
        link.close()
    assert store.calibrations("bay-1") == []


def test_tens_refused_while_another_channel_runs(sim_device: SimFactory,
                                                 store: RecordStore) -> None:
    dev = sim_device("es-4")
    link = DeviceLink.open(dev.profile, dev.port)
    run1: dict[str, Scalar] = {
        "channel": 1, "waveform": 0, "mode": 0, "frequency_hz": 100, "pulse_width_us": 200,
        "amplitude_ma": 10.0, "channel_mask": 2, "timer_s": 30, "ramp_up_s": 0,
        "ramp_down_s": 0.0}
    try:
        link.run("configure", run1)
        link.run("start", run1)
        link.close()        # one controller per port: the other session's link is gone
        out = run(job(dev.profile, dev.port, channels=[0]),
                  MeterTechnician(cast(TensModel, dev.model)), store)
        assert out.verdict == "refused" and "delivering output on channel 1" in out.reason
    finally:
        link = DeviceLink.open(dev.profile, dev.port)
        link.run("stop", run1)
        link.close()


# -- the command ---------------------------------------------------------------------------------

def cli(argv: list[str], ask: Callable[[str], str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modctl")
    calibrate_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["calibrate", *argv])
    try:
        if args.history_device or args.target == "history":
            return int(args.run(args))
        return calibrate_cmd.calibrate(args, ask or _no_input, FAST)
    except UsageError:
        return 2


def _no_input(prompt: str) -> str:
    raise AssertionError(f"unexpected prompt {prompt!r}")


US_FILE = HEAD.replace("Fluke 1524", "Ohmic UPM-DT-1PA balance") + """technician: tom
points:
  - {intensity_w_cm2: 0.5, reference_w: 3.05}
  - {intensity_w_cm2: 2.0, reference_w: 12.2}
verify:
  - {intensity_w_cm2: 0.5, reference_w: VERIFY_LOW}
  - {intensity_w_cm2: 2.0, reference_w: 10.0}
"""


def test_cli_readings_file_pass_then_fail_and_history(sim_device: SimFactory, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    dev = sim_device("us-300", miscal_gain=1.22)
    db = str(tmp_path / "db.sqlite3")
    good = readings(tmp_path, US_FILE.replace("VERIFY_LOW", "2.5"))
    assert cli(["us-300", "--port", dev.port, "--device", "us-2", "--readings", str(good),
                "--db", db]) == 0
    assert "calibration of us-2: PASSED" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(US_FILE.replace("VERIFY_LOW", "3.5"))   # +40 %: the balance disagrees
    again = sim_device("us-300", miscal_gain=1.22)         # the same unit, back as it came in
    assert cli(["us-300", "--port", again.port, "--device", "us-2", "--readings", str(bad),
                "--db", db]) == 5
    err = capsys.readouterr().err
    assert "FAILED - verification failed: 1 of 2 points out of tolerance" in err
    assert cli(["history", "us-2", "--db", db]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if line.split()[0].isdigit()]
    assert [r[3] for r in rows] == ["FAILED", "passed"]       # newest first
    assert rows[0][:5] == ["2", *rows[0][1:3], "FAILED", "tom"]
    assert any("gain 0.82" in line for line in out)
    assert out[-1].startswith("us-2: OVERDUE: its last calibration, on ")
    assert cli(["history", "nobody", "--db", db]) == 1     # not found: as `records show`
    assert "no device 'nobody' in " in capsys.readouterr().err


def test_cli_thermal_interactive_on_a_registered_device(sim_device: SimFactory, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    dev = sim_device("hc-200", miscal_gain=1.04, miscal_offset=-0.5)
    model = cast(ThermalModel, dev.model)
    db = tmp_path / "db.sqlite3"
    with RecordStore(db) as s:
        s.add_device("hc-bay1", "hc-200", dev.port, "tom")
        assert "never been calibrated" in (
            check_calibration(s, dev.profile, "hc-bay1", datetime.now()) or "")
    answers = iter(["Fluke 1524 reference thermometer", "FL-0031"])
    points = iter([20.0, 42.0, 20.0, 42.0])          # the prompts' order: as found, as left

    def technician(prompt: str) -> str:
        if "reference thermometer reading" not in prompt:
            return next(answers)
        level = next(points)
        with model.lock:
            model.pad_c = level
        return f"{level:g}"

    assert cli(["hc-bay1", "--operator", "tom", "--db", str(db)], technician) == 0
    out = capsys.readouterr().out
    assert "put the pad and the reference probe together" in out
    assert "recorded as calibration 1 by tom with Fluke 1524 reference thermometer (FL-0031)" \
        in out
    with RecordStore(db) as s:
        assert check_calibration(s, dev.profile, "hc-bay1", datetime.now()) is None


def test_cli_refusals(sim_device: SimFactory, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    dev = sim_device("us-300")
    db = str(tmp_path / "db.sqlite3")
    good = readings(tmp_path, US_FILE.replace("VERIFY_LOW", "2.5"))
    base = ["us-300", "--port", dev.port, "--device", "us-2", "--db", db]
    assert cli([*base, "--readings", str(good), "--operator", "carol"]) == 3
    err = capsys.readouterr().err
    assert "file is signed by technician 'tom' but the operator is 'carol'" in err
    unsigned = tmp_path / "unsigned.yaml"
    unsigned.write_text(US_FILE.replace("technician: tom\n", "").replace("VERIFY_LOW", "2.5"))
    assert cli([*base, "--readings", str(unsigned), "--operator", "carol"]) == 3
    assert "the technician role is needed" in capsys.readouterr().err
    over = tmp_path / "over.yaml"
    over.write_text(US_FILE.replace("VERIFY_LOW", "2.5").replace("2.0,", "2.5,"))
    assert cli([*base, "--readings", str(over)]) == 3
    assert "2.5 W/cm2 is outside what us-300 allows" in capsys.readouterr().err
    assert cli([*base, "--readings", str(tmp_path / "missing.yaml")]) == 3
    assert "cannot read readings file" in capsys.readouterr().err
    with dev.model.lock:
        assert dev.model.history == [] and dev.model.cal_gain == 1.0   # nothing was sent
    assert cli([*base, "--channel", "1", "--readings", str(good)]) == 2
    assert cli(["us-300", "--db", db]) == 2                              # no --port
    assert cli(["us-300", "--port", dev.port, "--db", db]) == 2          # no --device
    assert cli(["history"]) == 2
