"""Meta-tests over every shipped device profile.

Loading proves a profile is well formed; these tests check that it is *right*:
limits sane and at the clinical ceilings (docs/design.md §3.3), every operation
driveable on the device as its map describes it, the device backstops able to
hold what the controller arms them with, and the map faithful to the vendor's
interface document (expected values are copied here as literals).

The checks are written against the maps directly, not through the loader's
own cross-checks, so a gap in the loader does not hide a gap in a profile.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from controller.modality.contract import CONTRACTS, SESSION_VARIABLES
from controller.modality.limits import active_regimes, effective_bound
from controller.profiles.loader import load_profile_file, shipped_profile_paths
from controller.profiles.model import DURATION, Profile
from controller.profiles.sections import MAX_WATCHDOG_S, MIN_POLLS_PER_WATCHDOG, Bound, Step
from protocols.map_common import Scalar, ValueSpec
from protocols.map_framed import FramedMap
from protocols.map_modbus import ModbusMap
from protocols.map_scpi import ScpiMap

PIDS = sorted(shipped_profile_paths())
# Wire types that carry whole numbers only.
INTEGER_WIRE_TYPES = {"int16", "uint16", "bits", "int", "u8", "u16", "i16", "u32"}


@functools.cache
def profile(pid: str) -> Profile:
    return load_profile_file(shipped_profile_paths()[pid]).profile


@functools.cache
def raw_yaml(pid: str) -> Any:
    return yaml.safe_load(shipped_profile_paths()[pid].read_text(encoding="utf-8"))


def test_the_three_models_are_discovered() -> None:
    assert {"hc-200", "us-300", "es-4"} <= set(PIDS)
    assert {pid: profile(pid).id for pid in PIDS} == {pid: pid for pid in PIDS}


# -- helpers that read the map the way an engine would -------------------------------

def write_spec(prof: Profile, entry: str, arg: str) -> tuple[ValueSpec, str]:
    """The value spec and wire type an argument of a write lands in."""
    pmap = prof.protocol
    if isinstance(pmap, ModbusMap):
        assert arg == "value", f"a register write takes 'value', not {arg!r}"
        reg = pmap.holding_registers[entry]
        return reg, reg.type
    if isinstance(pmap, ScpiMap):
        scpi = {f.name: f for f in pmap.commands[entry].set or []}[arg]
        return scpi, scpi.type
    frame = {f.name: f for f in pmap.commands[entry].request}[arg]
    return frame, frame.type


def request_fields(prof: Profile, entry: str, reading: bool) -> tuple[set[str], set[str]]:
    """(all, required) argument names of a write or a read of `entry`."""
    pmap = prof.protocol
    if isinstance(pmap, ModbusMap):
        return (set(), set()) if reading else ({"value"}, {"value"})
    if isinstance(pmap, ScpiMap):
        if reading:
            return set(), set()
        fields = pmap.commands[entry].set or []
        return {f.name for f in fields}, {f.name for f in fields if not f.optional}
    names = {f.name for f in pmap.commands[entry].request}
    return names, names


def writable(prof: Profile, entry: str) -> bool:
    pmap = prof.protocol
    if isinstance(pmap, ModbusMap):
        return entry in pmap.holding_registers
    if isinstance(pmap, ScpiMap):
        cmd = pmap.commands.get(entry)
        return cmd is not None and (cmd.action or cmd.set is not None)
    return entry in pmap.commands


def result_spec(prof: Profile, key: str) -> ValueSpec | None:
    """The spec of a read result key; None for a named bit (a boolean)."""
    pmap = prof.protocol
    parts = key.split(".")
    if isinstance(pmap, ModbusMap):
        found = pmap.register(parts[0])
        assert found is not None, key
        return found[1] if len(parts) == 1 else None
    if isinstance(pmap, ScpiMap):
        return {f.name: f for f in pmap.commands[parts[0]].query or []}[parts[1]]
    field = {f.name: f for f in pmap.commands[parts[0]].reply}[parts[1]]
    return field if len(parts) == 2 else None


def step_results(prof: Profile, steps: list[Step]) -> set[str]:
    out: set[str] = set()
    for step in steps:
        for name in step.read or []:
            out |= prof.protocol.result_keys(name)
        if step.write:
            out |= prof.protocol.result_keys(step.write)
    return out


def to_raw(value: float, scale: float) -> float:
    # Round away float noise (45.0 / 0.1 = 449.99999999999994).
    return round(value / scale, 6)


def assert_lands(spec: ValueSpec, wire: str, value: float, what: str) -> None:
    raw = to_raw(value, spec.scale)
    assert spec.raw_in_range(raw), \
        f"{what}: {value:g} is raw {raw:g}, outside the device's {spec.describe_range()}"
    if wire in INTEGER_WIRE_TYPES:
        assert raw == int(raw), f"{what}: {value:g} is raw {raw:g}, not a whole number"


def admissible_values(prof: Profile, name: str) -> list[float]:
    """Values of a parameter the profile lets an operator ask for (the extremes)."""
    p = prof.parameters[name]
    if p.choices:
        return [float(code) for code in p.choices.values()]
    if p.allowed:
        return list(p.allowed)
    bound = prof.limits.absolute[name]
    assert bound.min is not None and bound.max is not None
    return [bound.min, bound.max]


def all_bounds(prof: Profile) -> list[tuple[str, str, Bound]]:
    lim = prof.limits
    out = [(f"limits.absolute.{n}", n, b) for n, b in lim.absolute.items()]
    out += [(f"limits.clinical.{n}", n, b) for n, b in lim.clinical.items()]
    for rname, regime in lim.regimes.items():
        out += [(f"limits.regimes.{rname}.clinical.{n}", n, b)
                for n, b in regime.clinical.items()]
    return out


# -- limits --------------------------------------------------------------------------

@pytest.mark.parametrize("pid", PIDS)
def test_limits_are_sane(pid: str) -> None:
    prof = profile(pid)
    lim = prof.limits
    for where, name, bound in all_bounds(prof):
        for side in (bound.min, bound.max):
            assert side is None or math.isfinite(side), where
        if bound.min is not None and bound.max is not None:
            assert bound.min < bound.max, where
        if where.startswith("limits.absolute"):
            continue
        outer = lim.absolute[name]
        assert bound.min is None or outer.min is None or bound.min >= outer.min, where
        assert bound.max is None or outer.max is None or bound.max <= outer.max, where
    for name in [DURATION, *prof.parameters]:
        p = prof.parameters.get(name)
        if p is not None and (p.choices or p.allowed):
            continue
        # Every numeric value an operator gives is bounded on both sides by the device.
        absolute = lim.absolute[name]
        assert absolute.min is not None and absolute.max is not None, name
    shortest = lim.absolute[DURATION].min
    assert shortest is not None and shortest >= 1
    for bound in lim.derived.values():
        assert bound.max is not None and math.isfinite(bound.max) and bound.max > 0
    for value in [*lim.interlocks.values(), *prof.rules.values(),
                  *(v for r in lim.regimes.values() for v in r.interlocks.values())]:
        assert math.isfinite(value)


@pytest.mark.parametrize("pid", PIDS)
def test_defaults_are_inside_the_effective_limits(pid: str) -> None:
    prof = profile(pid)
    defaults = {n: p.default for n, p in prof.parameters.items() if p.default is not None}
    regimes = active_regimes(prof, defaults)
    for name, p in prof.parameters.items():
        if p.default is None:
            continue
        if p.choices:
            assert p.default in p.choices, name
            continue
        assert isinstance(p.default, (int, float)), name
        if p.allowed:
            assert p.default in p.allowed, name
        bound = effective_bound(prof, name, regimes)
        if bound is not None:
            assert bound.admits(float(p.default)), \
                f"{name}: default {p.default:g} outside effective {bound.text()}"


@pytest.mark.parametrize("pid", PIDS)
def test_every_regime_leaves_a_usable_range(pid: str) -> None:
    # A regime that tightens a limit past its other side would refuse every value.
    prof = profile(pid)
    for rname in prof.limits.regimes:
        for name in [DURATION, *prof.parameters]:
            bound = effective_bound(prof, name, [rname])
            if bound and bound.low and bound.high:
                assert bound.low.value < bound.high.value, f"{rname}: {name} {bound.text()}"


# -- operations against the map ------------------------------------------------------

@pytest.mark.parametrize("pid", PIDS)
def test_every_operation_resolves_against_the_map(pid: str) -> None:
    prof = profile(pid)
    pmap = prof.protocol
    contract = CONTRACTS[prof.modality]
    defined = prof.operations.defined()
    assert contract.required_operations <= set(defined)
    variables = set(prof.parameters) | SESSION_VARIABLES
    for op_name, steps in defined.items():
        results: set[str] = set()
        for i, step in enumerate(steps):
            where = f"{pid} operations.{op_name}[{i}]"
            entries = [step.write] if step.write else list(step.read or [])
            for entry in entries:
                assert entry in pmap.entry_names(), f"{where}: {entry} not in the map"
            if step.write:
                assert writable(prof, step.write), f"{where}: {step.write} is read-only"
                results |= pmap.result_keys(step.write)
            for name in step.read or []:
                keys = pmap.result_keys(name)
                assert keys, f"{where}: {name} has nothing to read"
                results |= keys
            assert len(entries) == 1 or not step.args, f"{where}: args for several reads"
            takes, needs = request_fields(prof, entries[0], reading=step.write is None)
            assert needs <= set(step.args) <= takes, f"{where}: args {sorted(step.args)}"
            for arg, value in step.args.items():
                if isinstance(value, str) and value.startswith("$"):
                    assert value[1:] in variables, f"{where}.{arg}: {value}"
                elif step.write:
                    spec, wire = write_spec(prof, step.write, arg)
                    check_literal(spec, wire, value, f"{where}.args.{arg}")
            for key in step.expect:
                assert key in results, f"{where}: expects {key}, not read"


def check_literal(spec: ValueSpec, wire: str, value: Scalar, what: str) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert_lands(spec, wire, value, what)
    else:
        assert spec.raw_in_range(value), f"{what}: {value!r} not in {spec.describe_range()}"


@pytest.mark.parametrize("pid", PIDS)
def test_every_admissible_parameter_value_is_one_the_device_accepts(pid: str) -> None:
    # Limits must never let the controller send what the device would refuse.
    prof = profile(pid)
    for op_name, steps in prof.operations.defined().items():
        for step in steps:
            if not step.write:
                continue
            for arg, value in step.args.items():
                if not (isinstance(value, str) and value.startswith("$")
                        and value[1:] in prof.parameters):
                    continue
                name = value[1:]
                spec, wire = write_spec(prof, step.write, arg)
                for v in admissible_values(prof, name):
                    assert_lands(spec, wire, v, f"{pid} {op_name} {name}")
                step_size = prof.parameters[name].step
                if step_size and wire in INTEGER_WIRE_TYPES:
                    ratio = to_raw(step_size, spec.scale)
                    assert ratio == int(ratio), f"{name}: step {step_size:g} is not whole raw units"


def steps_using(prof: Profile, variable: str, ops: tuple[str, ...]) -> list[tuple[str, str]]:
    """(entry, argument) of every write in `ops` whose argument is `$variable`."""
    out = []
    for op_name in ops:
        for step in prof.operations.defined().get(op_name, []):
            for arg, value in step.args.items():
                if value == f"${variable}" and step.write:
                    out.append((step.write, arg))
    return out


@pytest.mark.parametrize("pid", PIDS)
def test_session_timer_holds_the_longest_session_plus_margin(pid: str) -> None:
    prof = profile(pid)
    targets = steps_using(prof, "timer_s", ("arm", "start"))
    assert targets, "the device session timer must be armed before output starts"
    duration = prof.limits.absolute[DURATION]
    assert duration.min is not None and duration.max is not None
    margin = prof.safety.timer_margin_s
    for entry, arg in targets:
        spec, wire = write_spec(prof, entry, arg)
        for planned in (duration.min, duration.max):
            assert_lands(spec, wire, planned + margin, f"{pid} {entry}.{arg} = $timer_s")


@pytest.mark.parametrize("pid", PIDS)
def test_device_watchdog_takes_the_profile_watchdog(pid: str) -> None:
    prof = profile(pid)
    targets = steps_using(prof, "watchdog_s", ("arm", "start"))
    assert targets, "the device watchdog must be armed before output starts"
    for entry, arg in targets:
        spec, wire = write_spec(prof, entry, arg)
        assert_lands(spec, wire, prof.safety.watchdog_s, f"{pid} {entry}.{arg}")
        # 0 disables a device watchdog: the armed value must never be that.
        assert to_raw(prof.safety.watchdog_s, spec.scale) > 0


@pytest.mark.parametrize("pid", PIDS)
def test_channel_mask_covers_every_channel(pid: str) -> None:
    prof = profile(pid)
    targets = steps_using(prof, "channel_mask", tuple(prof.operations.defined()))
    if not targets:
        pytest.skip("single-output device")
    channels = prof.parameters["channel"].allowed
    assert channels
    for entry, arg in targets:
        spec, wire = write_spec(prof, entry, arg)
        for channel in channels:
            assert_lands(spec, wire, float(1 << int(channel)), f"{entry}.{arg}")


# -- safety timing -------------------------------------------------------------------

@pytest.mark.parametrize("pid", PIDS)
def test_safety_timing(pid: str) -> None:
    s = profile(pid).safety
    assert 0 < s.watchdog_s <= MAX_WATCHDOG_S == 2.0
    assert s.poll_period_s * MIN_POLLS_PER_WATCHDOG <= s.watchdog_s + 1e-9
    assert MIN_POLLS_PER_WATCHDOG >= 3
    # Stale telemetry is noticed before the watchdog fires, and not between two polls.
    assert s.poll_period_s < s.stale_after_s < s.watchdog_s
    # The controller, not the device timer, ends a healthy session: the margin
    # outlasts one poll plus the wait for the stop to be confirmed.
    assert s.timer_margin_s >= s.poll_period_s + s.stop_confirm_timeout_s
    assert 0 < profile(pid).link.reply_timeout_s <= s.poll_period_s


# -- telemetry -----------------------------------------------------------------------

@pytest.mark.parametrize("pid", PIDS)
def test_contract_telemetry_is_mapped_and_read(pid: str) -> None:
    prof = profile(pid)
    assert CONTRACTS[prof.modality].telemetry <= set(prof.telemetry)
    read = step_results(prof, prof.operations.read_telemetry or [])
    for name in prof.telemetry:
        src = prof.telemetry_source(name)
        forms = prof.expand_template(src.source)
        # An empty expansion would silently skip the check below.
        assert forms, f"{name}: '{src.source}' expands to nothing"
        for form in forms:
            assert form in read, f"telemetry.{name}: {form} not read by read_telemetry"
            spec = result_spec(prof, form)
            if src.map is None or spec is None:
                continue
            raw_values = [*(spec.allowed or []), *(spec.labels or {})]
            assert raw_values, f"telemetry.{name}: map over a field with no known values"
            missing = {str(v) for v in raw_values} - set(src.map)
            assert not missing, f"telemetry.{name}: no mapping for raw {sorted(missing)}"


@pytest.mark.parametrize("pid", PIDS)
def test_contract_parameters_and_names(pid: str) -> None:
    prof = profile(pid)
    c = CONTRACTS[prof.modality]
    assert c.parameters <= set(prof.parameters)
    assert set(prof.limits.derived) <= c.derived_limits
    assert set(prof.limits.interlocks) <= c.interlocks
    assert set(prof.rules) <= c.rules
    assert set(prof.safety.tolerances) <= c.tolerances


# -- JSON Schema ---------------------------------------------------------------------

def _as_editor_sees_it(data: Any) -> Any:
    # An editor's YAML language server hands JSON to the schema: keys become strings.
    return json.loads(json.dumps(data))


@functools.cache
def schema_validator() -> jsonschema.Draft202012Validator:
    schema = Profile.model_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("pid", PIDS)
def test_json_schema_validates_the_shipped_profile(pid: str) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}"
              for e in schema_validator().iter_errors(_as_editor_sees_it(raw_yaml(pid)))]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("change", ["unknown-key", "wrong-type", "bad-family"])
def test_json_schema_rejects_what_the_loader_rejects(change: str) -> None:
    data = _as_editor_sees_it(raw_yaml("hc-200"))
    if change == "unknown-key":
        data["safety"]["retries"] = 4
    elif change == "wrong-type":
        data["link"]["baudrate"] = "fast"
    else:
        data["protocol"]["family"] = "canbus"
    assert not schema_validator().is_valid(data)


# -- clinical limits at the ceilings (docs/design.md §3.3) ---------------------------

def by_modality(modality: str) -> list[str]:
    return [pid for pid in PIDS if profile(pid).modality == modality]


def clinical(prof: Profile, name: str, regime: str | None = None) -> Bound:
    table = prof.limits.regimes[regime].clinical if regime else prof.limits.clinical
    assert name in table, f"clinical limit on {name} missing ({regime or 'base'})"
    return table[name]


@pytest.mark.parametrize("pid", PIDS)
def test_every_session_at_most_30_minutes(pid: str) -> None:
    prof = profile(pid)
    assert (clinical(prof, DURATION).max or math.inf) <= 1800
    for regimes in [[], *[[r] for r in prof.limits.regimes]]:
        bound = effective_bound(prof, DURATION, regimes)
        assert bound is not None and bound.high is not None and bound.high.value <= 1800


def test_heat_and_cold_defaults() -> None:
    thermal = by_modality("thermal")
    assert thermal
    for pid in thermal:
        prof = profile(pid)
        assert (clinical(prof, "temperature_c").max or math.inf) <= 45.0
        assert prof.limits.interlocks["pad_temp_max_c"] <= 45.0
        assert "cem43_min" in prof.limits.derived
        # Cold applies below skin temperature and brings its own limits.
        skin = prof.rules["skin_temp_c"]
        cold = prof.limits.regimes["cold"]
        assert cold.when.parameter == "temperature_c" and cold.when.below == skin
        assert active_regimes(prof, {"temperature_c": skin - 0.1}) == ["cold"]
        assert active_regimes(prof, {"temperature_c": skin}) == []
        assert (clinical(prof, "temperature_c", "cold").min or -math.inf) >= 10.0
        assert (clinical(prof, DURATION, "cold").max or math.inf) <= 1200


def test_ultrasound_defaults() -> None:
    for pid in by_modality("ultrasound") or pytest.fail("no ultrasound profile"):
        prof = profile(pid)
        assert prof.parameters["frequency_mhz"].allowed == [1, 3]
        assert (clinical(prof, "intensity_w_cm2").max or math.inf) <= 2.0
        assert (prof.limits.absolute["intensity_w_cm2"].max or math.inf) <= 3.0
        assert prof.limits.interlocks["applicator_temp_max_c"] <= 41.0
        assert "energy_j" in prof.limits.derived


def test_tens_defaults() -> None:
    for pid in by_modality("tens") or pytest.fail("no TENS profile"):
        prof = profile(pid)
        freq, width = clinical(prof, "frequency_hz"), clinical(prof, "pulse_width_us")
        assert freq.min is not None and freq.min >= 1 and freq.max is not None and freq.max <= 150
        assert width.min is not None and width.min >= 50
        assert width.max is not None and width.max <= 400
        assert (clinical(prof, "amplitude_ma").max or math.inf) <= 80.0
        assert (prof.limits.derived["current_density_rms_ma_cm2"].max or math.inf) <= 2.0
        assert 0 < prof.rules["ramp_rate_ma_s"] <= 10.0
        assert prof.parameters["channel"].allowed == [0, 1]
        assert prof.parameters["channel"].default == 0
        assert prof.parameters["electrode_area_cm2"].default is not None


# The shipped values exactly, as `modctl profiles show` reports them.
EFFECTIVE: dict[str, dict[tuple[str, str | None], tuple[str, str, str]]] = {
    "hc-200": {
        (DURATION, None): ("1..1800", "absolute", "clinical"),
        (DURATION, "cold"): ("1..1200", "absolute", "clinical (cold)"),
        ("temperature_c", None): ("5..45", "absolute", "clinical"),
        ("temperature_c", "cold"): ("10..45", "clinical (cold)", "clinical"),
    },
    "us-300": {
        (DURATION, None): ("1..1795", "absolute", "clinical"),
        ("intensity_w_cm2", None): ("0.1..2", "absolute", "clinical"),
    },
    "es-4": {
        (DURATION, None): ("1..1800", "absolute", "clinical"),
        ("frequency_hz", None): ("1..150", "clinical", "clinical"),
        ("pulse_width_us", None): ("50..400", "clinical", "clinical"),
        ("amplitude_ma", None): ("0.1..80", "absolute", "clinical"),
    },
}


@pytest.mark.parametrize("pid", sorted(EFFECTIVE))
def test_shipped_effective_limits(pid: str) -> None:
    prof = profile(pid)
    for (name, regime), (text, low_from, high_from) in EFFECTIVE[pid].items():
        bound = effective_bound(prof, name, [regime] if regime else [])
        assert bound is not None and bound.low is not None and bound.high is not None
        assert (bound.text(), bound.low.source, bound.high.source) == \
            (text, low_from, high_from), f"{name} ({regime})"


# -- the maps against the vendors' interface documents --------------------------------

HC200_INPUT = {  # name: (address, type, scale)
    "pad_temp": (0, "int16", 0.1), "drive": (1, "int16", 1.0), "status": (2, "bits", 1.0),
    "elapsed": (3, "uint16", 1.0), "remaining": (4, "uint16", 1.0),
    "fault_code": (5, "uint16", 1.0), "firmware": (6, "uint16", 1.0),
    "serial_hi": (7, "uint16", 1.0), "serial_lo": (8, "uint16", 1.0),
    "model": (9, "uint16", 1.0),
}
HC200_HOLDING = {  # name: (address, type, scale, min, max, allowed, calibration_only)
    "setpoint": (0, "int16", 0.1, 50, 450, None, False),
    "run_time": (1, "uint16", 1.0, 1, 3600, None, False),
    "output_enable": (2, "uint16", 1.0, None, None, [0, 1], False),
    "watchdog": (3, "uint16", 1.0, 0, 60, None, False),
    "trip_high": (4, "int16", 0.1, 300, 480, None, True),
    "trip_low": (5, "int16", 0.1, 20, 200, None, True),
    "cal_offset": (6, "int16", 0.01, -500, 500, None, True),
    "cal_gain": (7, "uint16", 0.0001, 9000, 11000, None, True),
    "cal_mode": (8, "uint16", 1.0, None, None, [0, 0xCA1B], False),
    "fault_reset": (9, "uint16", 1.0, None, None, [1], False),
}
HC200_STATUS_BITS = {
    "output_enabled": 0, "pad_connected": 1, "over_temp_trip": 2, "under_temp_trip": 3,
    "sensor_fault": 4, "watchdog_expired": 5, "timer_expired": 6, "calibration_mode": 7,
}


def test_hc200_map_matches_its_spec() -> None:
    prof = profile("hc-200")
    pmap = prof.protocol
    assert isinstance(pmap, ModbusMap)
    assert (prof.link.baudrate, prof.link.bytesize, prof.link.parity, prof.link.stopbits) \
        == (19200, 8, "E", 1)
    assert (pmap.unit_address, pmap.max_registers_per_request) == (1, 16)
    assert sorted(pmap.exception_codes) == [1, 2, 3, 4]
    assert {n: (r.address, r.type, r.scale) for n, r in pmap.input_registers.items()} \
        == HC200_INPUT
    assert {n: (r.address, r.type, r.scale, r.min, r.max, r.allowed, r.calibration_only)
            for n, r in pmap.holding_registers.items()} == HC200_HOLDING
    assert pmap.input_registers["status"].bits == HC200_STATUS_BITS
    assert pmap.input_registers["fault_code"].labels is not None
    assert sorted(pmap.input_registers["fault_code"].labels) == list(range(7))
    assert prof.operations.identify is not None
    assert prof.operations.identify[0].expect == {"model": 0x4843}


US300_COMMANDS = {  # name: (header, short form, refused_while_on, needs_service)
    "idn": ("*IDN", "*IDN", False, False),
    "reset": ("*RST", "*RST", False, False),
    "error": ("SYSTem:ERRor", "SYST:ERR", False, False),
    "frequency": ("SOURce:FREQuency", "SOUR:FREQ", True, False),
    "intensity": ("SOURce:INTensity", "SOUR:INT", False, False),
    "duty": ("SOURce:DUTY", "SOUR:DUTY", True, False),
    "time": ("SOURce:TIME", "SOUR:TIME", True, False),
    "output": ("OUTPut", "OUTP", False, False),
    "abort": ("ABORt", "ABOR", False, False),
    "watchdog": ("SYSTem:WDOG", "SYST:WDOG", False, False),
    "power": ("MEASure:POWer", "MEAS:POW", False, False),
    "temperature": ("MEASure:TEMPerature", "MEAS:TEMP", False, False),
    "contact": ("MEASure:CONTact", "MEAS:CONT", False, False),
    "status": ("STATus", "STAT", False, False),
    "era": ("APPLicator:ERA", "APPL:ERA", False, False),
    "bnr": ("APPLicator:BNR", "APPL:BNR", False, False),
    "service": ("SYSTem:SERVice", "SYST:SERV", False, False),
    "cal_gain": ("CALibration:POWer:GAIN", "CAL:POW:GAIN", False, True),
    "cal_date": ("CALibration:DATE", "CAL:DATE", False, True),
}
US300_SET_RANGES = {  # name: (min, max, allowed)
    "frequency": (None, None, [1, 3]),
    "intensity": (0.0, 3.0, None),
    "duty": (None, None, [10, 20, 50, 100]),
    "time": (1, 1800, None),
    "output": (None, None, ["ON", "OFF"]),
    "watchdog": (0, 60, None),
    "cal_gain": (0.8, 1.2, None),
}
US300_ERRORS = {-100, -102, -113, -200, -221, -222, -224, -241, -350, -400}


def test_us300_map_matches_its_spec() -> None:
    prof = profile("us-300")
    pmap = prof.protocol
    assert isinstance(pmap, ScpiMap)
    assert (prof.link.baudrate, prof.link.bytesize, prof.link.parity, prof.link.stopbits) \
        == (115200, 8, "N", 1)
    assert (pmap.request_terminator, pmap.reply_terminator, pmap.max_line_length) \
        == ("\n", "\r\n", 128)
    assert pmap.use_checksum and pmap.checksum_error_code == -350
    assert (pmap.ok_reply, pmap.error_prefix, pmap.no_error_code) == ("OK", "ERR", 0)
    assert set(pmap.error_codes) == US300_ERRORS
    assert {n: (c.header, c.short_header, c.refused_while_on, c.needs_service)
            for n, c in pmap.commands.items()} == US300_COMMANDS
    for name, (low, high, allowed) in US300_SET_RANGES.items():
        (field,) = pmap.commands[name].set or []
        assert (field.min, field.max, field.allowed) == (low, high, allowed), name
    assert pmap.commands["intensity"].set is not None
    assert pmap.commands["intensity"].set[0].step == 0.1
    assert [f.name for f in pmap.commands["idn"].query or []] \
        == ["vendor", "model", "serial", "firmware"]
    status = pmap.commands["status"].query or []
    assert [f.name for f in status] == ["state", "elapsed", "remaining", "contact", "fault"]
    assert status[0].allowed == ["IDLE", "RUN", "HOLD", "DONE", "FAULT"]
    assert status[4].labels is not None and sorted(status[4].labels) == [0, 1, 2, 3, 4]
    assert pmap.commands["reset"].action and pmap.commands["abort"].action
    assert [(f.name, f.optional) for f in pmap.commands["service"].set or []] \
        == [("state", False), ("pin", True)]
    ops = prof.operations
    assert ops.identify is not None and ops.identify[0].expect == {"idn.model": "US-300"}
    assert ops.enter_calibration is not None
    assert ops.enter_calibration[0].args == {"state": "ON", "pin": "4321"}
    assert ops.emergency_stop is not None and ops.emergency_stop[0].write == "abort"


ES4_COMMANDS: dict[str, tuple[int, list[tuple[str, str]], list[tuple[str, str]]]] = {
    # name: (code, request layout, reply layout after the status byte)
    "ping": (0x01, [], []),
    "get_info": (0x02, [], [("model", "ascii"), ("serial", "u32"), ("fw_major", "u8"),
                            ("fw_minor", "u8"), ("channels", "u8")]),
    "configure": (0x10, [("channel", "u8"), ("waveform", "u8"), ("mode", "u8"),
                         ("frequency_hz", "u16"), ("pulse_width_us", "u16")], []),
    "set_amplitude": (0x11, [("channel", "u8"), ("amplitude", "u16"), ("ramp_ms", "u16")], []),
    "start": (0x12, [("channel_mask", "u8"), ("duration_s", "u16"), ("ramp_up_s", "u8")], []),
    "stop": (0x13, [("channel_mask", "u8"), ("ramp_down_ms", "u16")], []),
    "reset_estop": (0x1E, [], []),
    "estop": (0x1F, [], []),
    "get_status": (0x20, [], [("flags", "u8")] + [
        (f"ch{c}_{n}", t) for c in (0, 1) for n, t in (
            ("state", "u8"), ("amplitude", "u16"), ("impedance", "u16"),
            ("elapsed", "u16"), ("remaining", "u16"))]),
    "set_watchdog": (0x30, [("timeout_ms", "u16")], []),
    "service": (0x40, [("key", "u32")], []),
    "measure_output": (0x41, [("channel", "u8"), ("amplitude", "u16")], [("measured", "u16")]),
    "set_cal": (0x42, [("channel", "u8"), ("gain", "u16"), ("offset", "i16")], []),
    "get_cal": (0x43, [("channel", "u8")], [("gain", "u16"), ("offset", "i16")]),
}
ES4_RANGES = {  # (command, field): (scale, min, max, allowed)
    ("configure", "frequency_hz"): (1.0, 1, 250, None),
    ("configure", "pulse_width_us"): (1.0, 20, 500, None),
    ("set_amplitude", "amplitude"): (0.1, 0, 800, None),
    ("set_amplitude", "ramp_ms"): (0.001, 0, 10000, None),
    ("start", "duration_s"): (1.0, 1, 3600, None),
    ("start", "ramp_up_s"): (1.0, 0, 30, None),
    ("set_watchdog", "timeout_ms"): (0.001, 100, 10000, [0]),
    ("service", "key"): (1.0, None, None, [0x05E471CE, 0]),
    ("set_cal", "gain"): (0.0001, 9000, 11000, None),
    ("set_cal", "offset"): (0.01, -200, 200, None),
}


def test_es4_map_matches_its_spec() -> None:
    prof = profile("es-4")
    pmap = prof.protocol
    assert isinstance(pmap, FramedMap)
    assert (prof.link.baudrate, prof.link.bytesize, prof.link.parity, prof.link.stopbits) \
        == (115200, 8, "N", 1)
    assert (pmap.sync, pmap.crc, pmap.payload_byte_order, pmap.reply_code_offset) \
        == (0xA5, "crc16_ccitt_false", "little", 0x80)
    assert (pmap.min_len, pmap.max_len, pmap.seq_min, pmap.seq_max) == (2, 252, 1, 255)
    assert pmap.ok_status == 0 and sorted(pmap.status_codes) == list(range(8))
    assert {n: (c.code, [(f.name, f.type) for f in c.request], [(f.name, f.type) for f in c.reply])
            for n, c in pmap.commands.items()} == ES4_COMMANDS
    for (cmd, name), (scale, low, high, allowed) in ES4_RANGES.items():
        field = {f.name: f for f in pmap.commands[cmd].request}[name]
        assert (field.scale, field.min, field.max, field.allowed) == (scale, low, high, allowed)
    assert pmap.commands["get_info"].reply[0].length == 8
    # Payload sizes after the status byte, from the spec's field lists.
    assert sum(f.size for f in pmap.commands["get_info"].reply) == 15
    assert sum(f.size for f in pmap.commands["get_status"].reply) == 19
    flags = pmap.commands["get_status"].reply[0]
    assert flags.bits == {"estop_latched": 0, "watchdog_expired": 1, "service_mode": 2,
                          "patient_stop": 3}
    for c in (0, 1):
        state = {f.name: f for f in pmap.commands["get_status"].reply}[f"ch{c}_state"]
        assert state.labels is not None and sorted(state.labels) == [0, 1, 2, 3, 4]
    assert {n: pmap.commands[n].needs_service for n in ("measure_output", "set_cal")} \
        == {"measure_output": True, "set_cal": True}
    events = pmap.events
    assert events is not None and (events.code, events.seq) == (0x70, 0)
    assert [(f.name, f.type) for f in events.payload] \
        == [("event", "u8"), ("channel", "u8"), ("value", "u16")]
    assert {k: v.name for k, v in events.kinds.items()} == {
        1: "lead_off", 2: "session_complete", 3: "watchdog_expired", 4: "over_current",
        5: "patient_stop"}
    ops = prof.operations
    assert ops.identify is not None and ops.identify[0].expect == {"get_info.model": "ES-4"}
    assert ops.enter_calibration is not None
    assert ops.enter_calibration[0].args == {"key": 0x05E471CE}
