"""Bad device profiles: one clear line per problem, never a traceback.

Data-driven in the style of Klipper's strict-config tests: each case takes the
text of a shipped profile, breaks it in one way, and lists the fragments the
loader's message must contain. Every message must start with the file name
and, where the case says where the fault is, the line YAML knows for it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli.main import main
from controller.profiles.loader import (
    ProfileError,
    load_profile_file,
    resolve_profile,
    shipped_profile_paths,
)

Mutation = Callable[[str], str | bytes]


def shipped_text(pid: str) -> str:
    return shipped_profile_paths()[pid].read_text(encoding="utf-8")


def line_of(text: str, fragment: str) -> int:
    """1-based line of the first occurrence of `fragment` in `text`."""
    index = text.index(fragment)
    return text.count("\n", 0, index) + 1


# -- mutations ------------------------------------------------------------------
# Each asserts that what it edits is there, so a change to a shipped profile
# breaks the case loudly instead of turning it into a no-op.

def replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, f"mutation target not in the shipped profile: {old!r}"
        return text.replace(old, new, 1)
    return edit


def chain(*edits: Callable[[str], str]) -> Mutation:
    def edit(text: str) -> str:
        for one in edits:
            text = one(text)
        return text
    return edit


def append(extra: str) -> Mutation:
    return lambda text: text + extra


def constant(content: str | bytes) -> Mutation:
    return lambda _text: content


def _section_span(text: str, name: str) -> re.Match[str]:
    match = re.search(rf"^{name}:.*?(?=^\S|\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, f"no top-level section {name!r}"
    return match


def drop_section(name: str) -> Mutation:
    def edit(text: str) -> str:
        span = _section_span(text, name)
        return text[:span.start()] + text[span.end():]
    return edit


def replace_section(name: str, body: str) -> Mutation:
    def edit(text: str) -> str:
        span = _section_span(text, name)
        return text[:span.start()] + f"{name}:\n{body}" + text[span.end():]
    return edit


def yaml_edit(change: Callable[[Any], Any]) -> Mutation:
    """Round-trip through YAML: `change` gets the data and returns the new document."""
    return lambda text: yaml.safe_dump(change(yaml.safe_load(text)), sort_keys=False)


def cut_chars(fraction: float) -> Mutation:
    return lambda text: text[: int(len(text) * fraction)]


def cut_lines(fraction: float) -> Mutation:
    def edit(text: str) -> str:
        lines = text.splitlines(keepends=True)
        return "".join(lines[: int(len(lines) * fraction)])
    return edit


@dataclass(frozen=True)
class Case:
    id: str
    base: str
    mutate: Mutation
    expect: tuple[str, ...]
    """Fragments that must all appear in one problem line."""
    at: str | None = None
    """Text of the mutated file whose line that problem line must cite."""



CASES: list[Case | Any] = [
    # -- files that are not a profile at all
    Case("empty-file", "hc-200", constant(""), ("the file is empty",)),
    Case("whitespace-only", "hc-200", constant("   \n\n      \n"), ("the file is empty",)),
    Case("comments-only", "hc-200", constant("# HC-200\n# to be written\n"),
         ("the file is empty",)),
    pytest.param(
        Case("whitespace-with-tab", "hc-200", constant("  \n\t\n  \n"), ("the file is empty",))),
    Case("scalar-file", "hc-200", constant("HC-200\n"), ("the top level is a str",), "HC-200"),
    Case("too-large", "hc-200", constant("a: " + "x" * 1_000_001 + "\n"),
         ("bytes; a device profile is at most 1000000",)),
    Case("not-utf8", "hc-200",
         lambda t: t.encode().replace(b"Generic Therapy", b"Generic \xff\xfeTherapy", 1),
         ("not UTF-8 text (byte",)),
    # -- YAML that does not parse
    Case("yaml-syntax-unclosed-flow", "hc-200",
         replace("baudrate: 19200", "baudrate: [19200"), ("YAML syntax error",)),
    Case("yaml-syntax-tab-indent", "hc-200",
         replace("  baudrate: 19200", "\tbaudrate: 19200"),
         ("YAML syntax error", "'\\t'"), "\tbaudrate"),
    Case("duplicate-key", "hc-200",
         replace("  retry_budget: 4", "  retry_budget: 3\n  retry_budget: 4"),
         ("YAML syntax error: duplicate key 'retry_budget' (first on line",), "retry_budget: 4"),
    Case("duplicate-key-in-flow-mapping", "hc-200",
         replace("pad_temp:   {address: 0,", "pad_temp:   {address: 0, address: 1,"),
         ("duplicate key 'address'",), "{address: 0, address: 1"),
    Case("python-tag-refused", "hc-200",
         replace("interval_days: 365", "interval_days: !!python/object/apply:os.getpid []"),
         ("YAML syntax error", "could not determine a constructor"), "!!python"),
    Case("recursive-alias", "hc-200", replace("rules:\n  skin_temp_c: 33.0", "rules: &r {a: *r}"),
         ("YAML syntax error", "recursive"), "rules: &r"),
    # -- truncated files
    *[Case(f"cut-to-first-third-chars-{pid}", pid, cut_chars(1 / 3), ()) for pid in
      ("hc-200", "us-300", "es-4")],
    *[Case(f"cut-to-first-third-lines-{pid}", pid, cut_lines(1 / 3),
           ("safety: required field is missing",)) for pid in ("hc-200", "us-300", "es-4")],
    # -- a list (or scalar) where a mapping belongs
    Case("list-at-top-level", "hc-200", yaml_edit(lambda d: [d]),
         ("the top level is a list", "a device profile is a mapping of sections"), "- "),
    Case("list-for-section", "hc-200",
         replace_section("link", "  - baudrate: 19200\n  - parity: E\n"),
         ("link: Input should be a valid dictionary",), "- baudrate: 19200"),
    Case("list-for-bound", "hc-200",
         replace("temperature_c: {min: 5.0, max: 45.0}", "temperature_c: [5.0, 45.0]"),
         ("limits.absolute.temperature_c: Input should be a valid dictionary",),
         "temperature_c: [5.0, 45.0]"),
    Case("list-for-register", "hc-200",
         replace("serial_lo:  {address: 8, type: uint16}", "serial_lo:  [8, uint16]"),
         ("protocol.input_registers.serial_lo: Input should be a valid dictionary",),
         "[8, uint16]"),
    Case("scalar-for-section", "hc-200", replace("rules:\n  skin_temp_c: 33.0", "rules: 33.0"),
         ("rules: Input should be a valid dictionary", "(got 33.0)"), "rules: 33.0"),
    # -- unknown keys: the message lists what is allowed there
    Case("unknown-top-level-key", "hc-200", append("\ncolour: blue\n"),
         ("unknown key 'colour'", "allowed here:", "spec_version", "safety", "calibration"),
         "colour: blue"),
    Case("unknown-nested-key", "hc-200",
         replace("  retry_budget: 4", "  retry_budget: 3\n  retries: 4"),
         ("safety: unknown key 'retries'", "allowed here:", "watchdog_s", "poll_period_s",
          "timer_margin_s"), "retries: 4"),
    Case("unknown-key-in-modbus-register", "hc-200",
         replace("pad_temp:   {address: 0,", "pad_temp:   {adress: 0,"),
         ("protocol.input_registers.pad_temp: unknown key 'adress'", "allowed here:",
          "address", "scale"), "adress"),
    Case("unknown-key-in-step", "hc-200",
         replace("    - write: run_time\n      args:", "    - write: run_time\n      arg:"),
         ("operations.arm[1]: unknown key 'arg' (allowed here: write, read, args, expect)",),
         "arg: {value: $timer_s}"),
    Case("unknown-key-in-scpi-field", "us-300",
         replace("{name: value, type: int, unit: MHz, allowed: [1, 3]}",
                 "{name: value, type: int, units: MHz, allowed: [1, 3]}"),
         ("protocol.commands.frequency.set[0]: unknown key 'units'", "unit"), "units: MHz"),
    Case("unknown-key-in-frame-field", "es-4",
         replace("{name: channel_mask, type: u8, min: 1, max: 3}",
                 "{name: channel_mask, typ: u8, min: 1, max: 3}"),
         ("protocol.commands.start.request[0]: unknown key 'typ'", "type", "length"),
         "typ: u8"),
    Case("unknown-key-in-telemetry-source", "us-300",
         replace("    map: {IDLE: false", "    mapping: {IDLE: false"),
         ("telemetry.output_on: unknown key 'mapping' (allowed here: source, map)",),
         "mapping:"),
    Case("non-string-key", "hc-200", append("\n1: one\n"), ("Keys should be strings",), "1: one"),
    # -- missing things
    Case("missing-section", "hc-200", drop_section("safety"),
         ("safety: required field is missing",)),
    Case("missing-field", "hc-200", replace("  baudrate: 19200\n", ""),
         ("link.baudrate: required field is missing",)),
    Case("missing-required-operation", "hc-200",
         replace("  emergency_stop:\n    - write: output_enable\n      args: {value: 0}\n", ""),
         ("operations: 'emergency_stop' is required",)),
    Case("missing-contract-telemetry", "hc-200", replace("  elapsed_s: elapsed\n", ""),
         ("telemetry: 'elapsed_s' is required for modality thermal",)),
    Case("missing-contract-parameter", "es-4",
         replace("  electrode_area_cm2:\n", "  electrode_area:\n"),
         ("parameters: 'electrode_area_cm2' is required for modality tens",)),
    Case("missing-protocol-family", "hc-200", replace("  family: modbus_rtu\n", ""),
         ("protocol:", "discriminator 'family'")),
    # -- wrong types and values
    Case("wrong-type", "hc-200", replace("baudrate: 19200", "baudrate: fast"),
         ("link.baudrate: Input should be a valid integer", "(got 'fast')"), "baudrate: fast"),
    Case("fraction-for-integer", "hc-200", replace("baudrate: 19200", "baudrate: 19200.5"),
         ("link.baudrate: Input should be a valid integer", "(got 19200.5)"),
         "baudrate: 19200.5"),
    Case("date-for-integer", "hc-200", replace("interval_days: 365", "interval_days: 2026-03-01"),
         ("calibration.interval_days: Input should be a valid integer",), "interval_days:"),
    Case("unknown-modality", "hc-200", replace("modality: thermal", "modality: laser"),
         ("modality: Input should be 'thermal', 'ultrasound' or 'tens'", "(got 'laser')"),
         "modality: laser"),
    Case("modality-without-its-contract", "hc-200", replace("modality: thermal", "modality: tens"),
         ("parameters: 'amplitude_ma' is required for modality tens",)),
    Case("unknown-protocol-family", "hc-200", replace("family: modbus_rtu", "family: canbus"),
         ("protocol:", "'modbus_rtu', 'scpi_line', 'framed_binary'", "'canbus'")),
    Case("profile-format-from-the-future", "hc-200",
         replace("profile_format: 1", "profile_format: 2"),
         ("profile_format: Input should be 1", "(got 2)"), "profile_format: 2"),
    Case("bad-id", "hc-200", replace("id: hc-200", "id: HC 200"),
         ("id: String should match pattern",), "id: HC 200"),
    Case("bit-outside-register", "hc-200", replace("calibration_mode: 7", "calibration_mode: 16"),
         ("protocol.input_registers.status", "bit 'calibration_mode' is 16, outside 0..15"),
         "address: 2\n      type: bits"),  # a register-level check: the register's line
    Case("register-address-shared", "hc-200",
         replace("drive:      {address: 1,", "drive:      {address: 0,"),
         ("protocol: input_registers: 'pad_temp' and 'drive' share address 0",)),
    Case("frame-code-shared", "es-4", replace("estop: {code: 0x1F", "estop: {code: 0x1E"),
         ("commands 'reset_estop' and 'estop' share code 0x1E",)),
    Case("scpi-error-query-unknown", "us-300", replace("error_query: error", "error_query: errors"),
         ("error_query 'errors' must name a command with a query form",)),
    Case("choice-default-not-a-choice", "es-4", replace("default: symmetric", "default: triangle"),
         ("parameters.waveform", "default 'triangle' is not one of the choices "
          "(symmetric, asymmetric)"), "type: choice\n    choices: {symmetric"),
    # -- limits
    Case("min-above-max", "hc-200",
         replace("temperature_c: {min: 5.0, max: 45.0}", "temperature_c: {min: 50.0, max: 45.0}"),
         ("limits.absolute.temperature_c", "min (50) is above max (45)"), "min: 50.0"),
    Case("map-range-min-above-max", "hc-200",
         replace("unit: degC, min: 50, max: 450}", "unit: degC, min: 450, max: 50}"),
         ("protocol.holding_registers.setpoint", "min (450) is above max (50)"), "min: 450"),
    Case("clinical-outside-absolute", "hc-200",
         replace("temperature_c: {max: 45.0}", "temperature_c: {max: 46.0}"),
         ("limits.clinical.temperature_c: clinical limit [..46] is outside the absolute "
          "limit [5..45]",), "temperature_c: {max: 46.0}"),
    Case("regime-clinical-outside-absolute", "hc-200",
         replace("temperature_c: {min: 10.0}", "temperature_c: {min: 4.0}"),
         ("limits.regimes.cold.clinical.temperature_c", "outside the absolute limit [5..45]"),
         "temperature_c: {min: 4.0}"),
    Case("tens-clinical-outside-absolute", "es-4",
         replace("pulse_width_us: {min: 50, max: 400}", "pulse_width_us: {min: 50, max: 600}"),
         ("limits.clinical.pulse_width_us", "outside the absolute limit [20..500]"),
         "max: 600"),
    Case("default-outside-absolute", "hc-200", replace("default: 40.0", "default: 47.0"),
         ("parameters.temperature_c.default: 47 is outside the absolute limit [5..45]",),
         "default: 47.0"),
    Case("default-outside-clinical", "es-4", replace("    default: 100\n", "    default: 200\n"),
         ("parameters.frequency_hz.default: 200 is outside the clinical limit [1..150]",),
         "default: 200"),
    Case("default-off-step", "hc-200", replace("default: 40.0", "default: 40.05"),
         ("parameters.temperature_c.default: 40.05 is not on the 0.1 step",), "default: 40.05"),
    Case("limit-on-unknown-parameter", "hc-200",
         replace("    temperature_c: {min: 5.0, max: 45.0}",
                 "    temperature_c: {min: 5.0, max: 45.0}\n    humidity_pct: {max: 80}"),
         ("limits.absolute: 'humidity_pct' is not a parameter",)),
    Case("regime-on-unknown-parameter", "hc-200",
         replace("when: {parameter: temperature_c", "when: {parameter: temp_c"),
         ("limits.regimes.cold.when: 'temp_c' is not a parameter",), "parameter: temp_c"),
    Case("unknown-interlock", "hc-200",
         replace("pad_temp_max_c: 45.0", "pad_temp_max_c: 45.0\n    skin_max_c: 40.0"),
         ("limits.interlocks: unknown name 'skin_max_c' for modality thermal",
          "(allowed: pad_temp_max_c, pad_temp_min_c)")),
    Case("unknown-tolerance", "us-300", replace("power_rel: 0.25", "power_ratio: 0.25"),
         ("safety.tolerances: unknown name 'power_ratio' for modality ultrasound",
          "intensity_w_cm2, power_rel")),
    # -- operations against the map
    Case("operation-missing-register", "hc-200",
         replace("- write: run_time", "- write: run_timer"),
         ("operations.arm[1].write: 'run_timer' is not in the protocol map",), "run_timer"),
    Case("operation-missing-scpi-command", "us-300",
         replace("  emergency_stop:\n    - write: abort", "  emergency_stop:\n    - write: abrot"),
         ("operations.emergency_stop[0].write: 'abrot' is not in the protocol map",), "abrot"),
    Case("operation-missing-frame-command", "es-4",
         replace("- read: [get_info]", "- read: [get_inf]"),
         ("operations.identify[0].read: 'get_inf' is not a readable entry",),
         "read: [get_inf]"),
    Case("read-of-one-entry-not-a-list", "es-4",
         replace("- read: [get_info]", "- read: get_info"),
         ("operations.identify[0].read: Input should be a valid list", "(got 'get_info')"),
         "read: get_info"),
    Case("operation-writes-input-register", "hc-200",
         replace("  start:\n    - write: output_enable", "  start:\n    - write: status"),
         ("operations.start[0].write: 'status' cannot be written",), "write: status"),
    Case("operation-unknown-variable", "hc-200", replace("$timer_s", "$timer_sec"),
         ("operations.arm[1].args.value: unknown variable '$timer_sec'",), "$timer_sec"),
    Case("operation-wrong-argument-name", "es-4",
         replace("ramp_up_s: $ramp_up_s}", "ramp_s: $ramp_up_s}"),
         ("operations.start[0].args: 'start' takes no argument 'ramp_s'", "channel_mask",
          "duration_s", "ramp_up_s")),
    Case("operation-missing-argument", "es-4",
         replace(", ramp_up_s: $ramp_up_s}", "}"),
         ("operations.start[0].args: 'ramp_up_s' is missing for 'start'",)),
    Case("operation-expects-unread-result", "hc-200",
         replace("expect: {model: 0x4843}", "expect: {modell: 0x4843}"),
         ("operations.identify[0].expect: 'modell' is not a result of this operation",),
         "modell"),
    Case("step-both-read-and-write", "hc-200",
         replace("  start:\n    - write: output_enable",
                 "  start:\n    - read: [status]\n      write: output_enable"),
         ("operations.start[0]: a step is either 'write: ENTRY' or 'read: [ENTRY, ...]'",)),
    Case("empty-operation", "hc-200",
         replace("  clear_fault:\n    - write: fault_reset\n      args: {value: 1}",
                 "  clear_fault: []"),
         ("operations.clear_fault: List should have at least 1 item",), "clear_fault: []"),
    # -- telemetry
    Case("telemetry-source-not-read", "hc-200", replace("drive_pct: drive", "drive_pct: cal_gain"),
         ("telemetry.drive_pct: source 'cal_gain' is not read by operations.read_telemetry",),
         "drive_pct: cal_gain"),
    Case("telemetry-field-not-read", "us-300",
         replace("- read: [status, power, temperature, intensity, era]",
                 "- read: [status, power, temperature, intensity]"),
         ("telemetry.era_cm2: source 'era.value' is not read by operations.read_telemetry",)),
    Case("telemetry-template-per-channel", "es-4",
         replace('"get_status.ch{channel}_amplitude"', '"get_status.ch{channel}_amplitud"'),
         ("telemetry.amplitude_ma: source 'get_status.ch1_amplitud' is not read",),
         "_amplitud\""),
    pytest.param(
        Case("telemetry-template-unknown-variable", "es-4",
             replace('"get_status.ch{channel}_amplitude"', '"get_status.ch{chan}_amplitude"'),
             ("telemetry.amplitude_ma", "chan"))),
    # -- safety timing
    Case("poll-too-slow-for-watchdog", "hc-200",
         replace("poll_period_s: 0.2", "poll_period_s: 0.9"),
         ("safety: poll_period_s 0.9 is too long for watchdog_s 2", "at most 0.667 s",
          "3 exchanges per watchdog period")),
    Case("poll-too-slow-for-tens-watchdog", "es-4",
         replace("poll_period_s: 0.2", "poll_period_s: 0.4"),
         ("poll_period_s 0.4 is too long for watchdog_s 1",)),
    Case("watchdog-above-2s", "hc-200", replace("watchdog_s: 2.0", "watchdog_s: 3.0"),
         ("safety.watchdog_s: Input should be less than or equal to 2", "(got 3.0)"),
         "watchdog_s: 3.0"),
    Case("watchdog-zero", "us-300", replace("watchdog_s: 2.0", "watchdog_s: 0"),
         ("safety.watchdog_s: Input should be greater than 0",), "watchdog_s: 0"),
    Case("stale-not-below-watchdog", "hc-200", replace("stale_after_s: 1.0", "stale_after_s: 2.0"),
         ("safety: stale_after_s 2 must be below watchdog_s 2",)),
    Case("margin-too-long", "hc-200", replace("timer_margin_s: 5.0", "timer_margin_s: 600"),
         ("safety.timer_margin_s: Input should be less than or equal to 120",),
         "timer_margin_s: 600"),
    # -- calibration
    Case("calibration-adjusts-unknown-entry", "hc-200",
         replace("adjusts: [cal_gain, cal_offset]", "adjusts: [cal_gain, cal_ofset]"),
         ("calibration.adjusts: 'cal_ofset' is not an entry of the protocol map",)),
    # -- numbers: strict types, finite values
    Case("nan-limit", "hc-200", replace("temperature_c: {min: 5.0,", "temperature_c: {min: .nan,"),
         ("limits.absolute.temperature_c.min: Input should be a finite number", "(got nan)"),
         ".nan"),
    Case("infinite-duration", "hc-200",
         replace("duration_s: {min: 1, max: 3595}", "duration_s: {min: 1, max: .inf}"),
         ("limits.absolute.duration_s.max: Input should be a finite number",), ".inf"),
    # A NaN interlock would never trip.
    Case("nan-interlock", "hc-200", replace("pad_temp_max_c: 45.0", "pad_temp_max_c: .nan"),
         ("limits.interlocks.pad_temp_max_c: Input should be a finite number",), ".nan"),
    # YAML 1.1 reads `yes` as true; lax coercion would make that baud rate 1.
    Case("boolean-for-number", "hc-200", replace("baudrate: 19200", "baudrate: yes"),
         ("link.baudrate: Input should be a valid integer", "(got True)"), "baudrate: yes"),
    Case("quoted-number", "hc-200", replace("baudrate: 19200", 'baudrate: "19200"'),
         ("link.baudrate: Input should be a valid integer", "(got '19200')"), "baudrate: \""),
    # -- every value the controller may send must fit the device field it lands in
    Case("timer-cannot-hold-longest-session", "hc-200",
         replace("duration_s: {min: 1, max: 3595}", "duration_s: {min: 1, max: 3600}"),
         ("operations.arm[1].args.value: $timer_s may be 3605",
          "duration_s max 3600 + margin 5", "run_time.value accepts 1..3600"),
         "args: {value: $timer_s}"),
    Case("absolute-limit-beyond-device-range", "hc-200",
         replace("temperature_c: {min: 5.0, max: 45.0}", "temperature_c: {min: 5.0, max: 50.0}"),
         ("operations.configure[0].args.value: $temperature_c may be 50",
          "setpoint.value accepts 5..45 degC (raw 50..450)")),
    Case("watchdog-the-device-cannot-take", "es-4",
         chain(replace("watchdog_s: 1.0", "watchdog_s: 0.09"),
               replace("poll_period_s: 0.2", "poll_period_s: 0.03"),
               replace("stale_after_s: 0.8", "stale_after_s: 0.06")),
         ("operations.arm[0].args.timeout_ms: $watchdog_s may be 0.09",
          "set_watchdog.timeout_ms accepts one of 0 or 0.1..10 s")),
    pytest.param(
        Case("watchdog-off-the-register-grid", "hc-200",
             replace("watchdog_s: 2.0", "watchdog_s: 1.5"), ("$watchdog_s",))),
    pytest.param(
        Case("parameter-step-finer-than-the-register", "hc-200",
             replace("step: 0.1", "step: 0.05"), ("temperature_c",))),
    Case("ramp-longer-than-the-device-allows", "es-4",
         replace("max_ramp_s: 10 ", "max_ramp_s: 11 "),
         ("operations.adjust[0].args.ramp_ms: $ramp_up_s may be 11 (rules.max_ramp_s)",
          "set_amplitude.ramp_ms accepts 0..10 s (raw 0..10000)")),
    Case("channel-the-device-lacks", "es-4",
         replace("    type: integer\n    allowed: [0, 1]",
                 "    type: integer\n    allowed: [0, 1, 2]"),
         ("telemetry.amplitude_ma: source 'get_status.ch2_amplitude' is not read",)),
]


def _case_id(case: Case | Any) -> str:
    return case.id if isinstance(case, Case) else case.values[0].id


def _write(case: Case, tmp_path: Path) -> tuple[Path, str | bytes]:
    content = case.mutate(shipped_text(case.base))
    path = tmp_path / f"{case.id}.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path, content


def _problems(path: Path) -> list[str]:
    with pytest.raises(ProfileError) as info:
        load_profile_file(path)
    return info.value.problems


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_profile_gets_a_clear_message(case: Case, tmp_path: Path) -> None:
    path, content = _write(case, tmp_path)
    problems = _problems(path)
    assert problems
    for problem in problems:
        # One line each, starting with the file, free of pydantic's raw formatting.
        assert problem.startswith(f"{path}:") or problem.startswith(f"{path} "), problem
        assert "\n" not in problem
        for noise in ("Traceback", "errors.pydantic.dev", "Value error,", "[type=", "input_value"):
            assert noise not in problem, problem
    matching = [p for p in problems if all(f in p for f in case.expect)]
    assert matching, f"no problem contains all of {case.expect}:\n" + "\n".join(problems)
    if case.at is not None:
        assert isinstance(content, str)
        line = line_of(content, case.at)
        assert any(p.startswith(f"{path}:{line}: ") for p in matching), \
            f"expected line {line} ({case.at!r}):\n" + "\n".join(matching)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_cli_validate_reports_without_traceback(case: Case, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _write(case, tmp_path)
    status = main(["profiles", "validate", str(path)])
    out, err = capsys.readouterr()
    assert status == 1
    assert "Traceback" not in err + out
    assert str(path) in err
    assert all(f in err for f in case.expect)


def test_every_problem_is_listed_not_just_the_first(tmp_path: Path) -> None:
    text = shipped_text("hc-200")
    for edit in (replace("baudrate: 19200", "baudrate: fast"),
                 replace("watchdog_s: 2.0", "watchdog_s: 3.0"),
                 append("\ncolour: blue\n")):
        text = str(edit(text))
    path = tmp_path / "three.yaml"
    path.write_text(text, encoding="utf-8")
    problems = _problems(path)
    assert len(problems) == 3
    assert [line_of(text, f) for f in ("baudrate: fast", "watchdog_s: 3.0", "colour: blue")] \
        == [int(p.split(":")[1]) for p in problems]


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    text = str(replace("  retry_budget: 4", "  retry_budget: 3\n  retry_budget: 4")(
        shipped_text("hc-200")))
    path = tmp_path / "dup.yaml"
    path.write_text(text, encoding="utf-8")
    first, second = line_of(text, "retry_budget: 3"), line_of(text, "retry_budget: 4")
    assert _problems(path) == [
        f"{path}:{second}: YAML syntax error: duplicate key 'retry_budget' "
        f"(first on line {first})"]


def test_non_utf8_names_the_byte_offset(tmp_path: Path) -> None:
    raw = shipped_text("us-300").encode()
    offset = raw.index(b"Generic")
    path = tmp_path / "latin1.yaml"
    path.write_bytes(raw[:offset] + "Gén".encode("latin-1") + raw[offset + 3:])
    assert _problems(path) == [f"{path}: not UTF-8 text (byte {offset + 1})"]


def test_crlf_line_endings_are_fine(tmp_path: Path) -> None:
    # Files edited on Windows must load exactly like the shipped ones.
    path = tmp_path / "crlf.yaml"
    path.write_bytes(shipped_text("es-4").replace("\n", "\r\n").encode())
    assert load_profile_file(path).profile == resolve_profile("es-4").profile


# -- paths that are not profile files -----------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert _problems(path) == [
        f"{path}: cannot read device profile: No such file or directory"]


def test_directory_as_profile(tmp_path: Path) -> None:
    assert _problems(tmp_path) == [f"{tmp_path}: cannot read device profile: Is a directory"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.yaml"
    path.write_text(shipped_text("hc-200"), encoding="utf-8")
    path.chmod(0)
    assert _problems(path) == [f"{path}: cannot read device profile: Permission denied"]


@pytest.mark.parametrize("ref", ["hc-300", "does/not/exist.yaml", "DIR"])
def test_unknown_reference_names_the_shipped_ids(ref: str, tmp_path: Path) -> None:
    ref = str(tmp_path) if ref == "DIR" else ref
    with pytest.raises(ProfileError) as info:
        resolve_profile(ref)
    (problem,) = info.value.problems
    assert problem.startswith(f"{ref}: no such profile")
    assert "shipped: es-4, hc-200, us-300" in problem
