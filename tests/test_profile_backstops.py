"""Validation proves the device backstops (issue 10 §2a) and gives a profile's provenance.

`arm` must arm the watchdog from $watchdog_s and load the session timer from
$timer_s; `stop` and `emergency_stop` must switch the output off. Each tampering
the issue names is refused with a line-numbered message naming the operation and
what is missing. A loaded profile carries its real path and the SHA-256 of the
exact bytes validated (§2c), and its `identity` section says where the model,
serial number and firmware are in the identification reply.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.profiles.loader import (
    ProfileError,
    load_profile_file,
    resolve_profile,
    shipped_profile_paths,
)
from controller.profiles.model import IdentityError, device_identity
from device_profiles import __file__ as _profiles_init

PROFILE_DIR = Path(_profiles_init).parent
Doc = dict[str, Any]


def tampered(tmp_path: Path, pid: str, change: Callable[[Doc], None]) -> tuple[Path, str]:
    doc = yaml.safe_load((PROFILE_DIR / f"{pid}.yaml").read_text(encoding="utf-8"))
    change(doc)
    path = tmp_path / f"{pid}-tampered.yaml"
    text = yaml.safe_dump(doc, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path, text


def problems(path: Path) -> list[str]:
    with pytest.raises(ProfileError) as exc:
        load_profile_file(path)
    return exc.value.problems


def line_text(problem: str, path: Path, text: str) -> str:
    m = re.match(rf"{re.escape(str(path))}:(\d+): ", problem)
    assert m is not None, problem
    return text.splitlines()[int(m.group(1)) - 1]


def ops(doc: Doc) -> dict[str, Any]:
    operations: dict[str, Any] = doc["operations"]
    return operations


def set_op(name: str, steps: list[dict[str, Any]] | None) -> Callable[[Doc], None]:
    def change(d: Doc) -> None:
        if steps is None:
            ops(d).pop(name)
        else:
            ops(d)[name] = steps
    return change


ARM_NO_TIMER = "does not load the device session timer: no write step takes $timer_s"
NOT_OFF = "does not switch the output off"

CASES: list[tuple[str, str, Callable[[Doc], None], str, str]] = [
    # (id, profile, tampering, expected text, key on the line the problem points at)
    ("hc-arm-without-timer", "hc-200",
     set_op("arm", [{"write": "watchdog", "args": {"value": "$watchdog_s"}}]),
     f"operations.arm: {ARM_NO_TIMER}", "arm"),
    ("hc-arm-without-watchdog", "hc-200",
     set_op("arm", [{"write": "run_time", "args": {"value": "$timer_s"}}]),
     "operations.arm: does not arm the device watchdog: no write step takes $watchdog_s",
     "arm"),
    ("hc-watchdog-into-setpoint", "hc-200",
     set_op("arm", [{"write": "setpoint", "args": {"value": "$watchdog_s"}},
                    {"write": "run_time", "args": {"value": "$timer_s"}}]),
     "operations.arm[0].args.value: $watchdog_s is written into setpoint.value, which is "
     "not a time in seconds (unit 'degC')", "value"),
    ("hc-watchdog-disabled-after-arming", "hc-200",
     lambda d: ops(d)["start"].insert(0, {"write": "watchdog", "args": {"value": 0}}),
     "operations.start[0].args.value: writes 0 into watchdog.value, the field armed from "
     "$watchdog_s", "value"),
    ("hc-stop-writes-nothing", "hc-200", set_op("stop", [{"read": ["status"]}]),
     f"operations.stop: {NOT_OFF}", "stop"),
    ("hc-stop-only-a-setpoint", "hc-200",
     set_op("stop", [{"write": "setpoint", "args": {"value": 20.0}}]),
     f"operations.stop: {NOT_OFF}", "stop"),
    ("hc-stop-writes-the-prescription", "hc-200",
     set_op("stop", [{"write": "output_enable", "args": {"value": 0}},
                     {"write": "setpoint", "args": {"value": "$temperature_c"}}]),
     "operations.stop[1].args.value: a stop may not write $temperature_c", "value"),
    ("hc-estop-switches-on", "hc-200",
     set_op("emergency_stop", [{"write": "output_enable", "args": {"value": 1}}]),
     "operations.emergency_stop[0].write: writes output_enable exactly as start does",
     "write"),
    ("hc-estop-removed", "hc-200", set_op("emergency_stop", None),
     "operations: 'emergency_stop' is required: it must switch the output off", "operations"),
    ("us-arm-without-timer", "us-300",
     set_op("arm", [{"write": "watchdog", "args": {"value": "$watchdog_s"}}]),
     f"operations.arm: {ARM_NO_TIMER}", "arm"),
    ("us-stop-only-intensity", "us-300",
     set_op("stop", [{"write": "intensity", "args": {"value": 0.0}}]),
     f"operations.stop: {NOT_OFF}", "stop"),
    ("us-estop-is-a-query-command", "us-300",
     set_op("emergency_stop", [{"write": "reset"}, {"read": ["status"]}]),
     f"operations.emergency_stop: {NOT_OFF}", "emergency_stop"),
    ("es-start-without-timer", "es-4",
     lambda d: ops(d)["start"][0]["args"].update(duration_s=1800),
     f"operations.arm: {ARM_NO_TIMER}", "arm"),
    ("es-stop-sets-amplitude", "es-4",
     set_op("stop", [{"write": "set_amplitude",
                      "args": {"channel": 0, "amplitude": "$amplitude_ma", "ramp_ms": 0}}]),
     "operations.stop[0].args.amplitude: a stop may not write $amplitude_ma", "amplitude"),
    ("es-stop-reuses-configure", "es-4",
     set_op("stop", [{"write": "set_amplitude",
                      "args": {"channel": 0, "amplitude": 0, "ramp_ms": 0}}]),
     f"operations.stop: {NOT_OFF}", "stop"),
    ("es-estop-removed", "es-4", set_op("emergency_stop", None),
     "operations: 'emergency_stop' is required", "operations"),
    ("es-no-remaining-telemetry", "es-4", lambda d: d["telemetry"].pop("remaining_s"),
     "telemetry: 'remaining_s' is required for modality tens: the session reads it back",
     "telemetry"),
    ("us-no-elapsed-telemetry", "us-300", lambda d: d["telemetry"].pop("elapsed_s"),
     "telemetry: 'elapsed_s' is required for modality ultrasound", "telemetry"),
]


@pytest.mark.parametrize(("pid", "change", "expect", "key"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tampered_backstops_are_refused_with_the_line(tmp_path: Path, pid: str,
                                                      change: Callable[[Doc], None],
                                                      expect: str, key: str) -> None:
    path, text = tampered(tmp_path, pid, change)
    found = problems(path)
    hits = [p for p in found if expect in p]
    assert hits, "\n".join(found)
    # The line named is the key's (or its value's, just below it).
    m = re.match(rf"{re.escape(str(path))}:(\d+): ", hits[0])
    assert m is not None, hits[0]
    n = int(m.group(1))
    near = text.splitlines()[max(0, n - 2):n]
    assert any(f"{key}:" in ln for ln in near), (hits, near)


@pytest.mark.parametrize("pid", ["hc-200", "us-300", "es-4"])
def test_shipped_profiles_prove_their_backstops(pid: str) -> None:
    assert load_profile_file(PROFILE_DIR / f"{pid}.yaml").profile.id == pid


# -- provenance: path and hash of the bytes validated ------------------------------------
@pytest.mark.parametrize("pid", ["hc-200", "us-300", "es-4"])
def test_a_shipped_profile_carries_its_real_path_and_hash(pid: str) -> None:
    loaded = resolve_profile(pid)
    path = shipped_profile_paths()[pid]
    assert loaded.source_path == os.path.realpath(path)
    assert os.path.isabs(loaded.source_path)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.profile.id == pid


def test_a_profile_by_path_is_hashed_as_read_and_resolved_through_symlinks(
        tmp_path: Path) -> None:
    raw = (PROFILE_DIR / "es-4.yaml").read_bytes() + b"\n# a site comment\n"
    real = tmp_path / "real.yaml"
    real.write_bytes(raw)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    loaded = resolve_profile(str(link))
    assert loaded.source == str(link)
    assert loaded.source_path == str(real.resolve())
    assert loaded.sha256 == hashlib.sha256(raw).hexdigest()
    assert loaded.sha256 != resolve_profile("es-4").sha256   # a comment changes the hash


# -- identity -----------------------------------------------------------------------------
def test_device_identity_of_each_family() -> None:
    hc = resolve_profile("hc-200").profile
    assert device_identity(hc, {"model": 0x4843, "serial_hi": 1, "serial_lo": 2,
                                "firmware": 105}) == {
        "model": "18499", "serial": str((1 << 16) | 2), "firmware": "105"}
    us = resolve_profile("us-300").profile
    assert device_identity(us, {"idn.vendor": "GTD", "idn.model": "US-300",
                                "idn.serial": "US3-00042", "idn.firmware": "2.1"}) == {
        "model": "US-300", "serial": "US3-00042", "firmware": "2.1"}
    es = resolve_profile("es-4").profile
    assert device_identity(es, {"get_info.model": "ES-4", "get_info.serial": 40017,
                                "get_info.fw_major": 1, "get_info.fw_minor": 4}) == {
        "model": "ES-4", "serial": "40017", "firmware": "1.4"}


def test_device_identity_refuses_missing_or_bad_results() -> None:
    hc = resolve_profile("hc-200").profile
    with pytest.raises(IdentityError, match="no 'serial_lo'"):
        device_identity(hc, {"model": 0x4843, "serial_hi": 1, "firmware": 105})
    with pytest.raises(IdentityError, match="not an unsigned 16-bit"):
        device_identity(hc, {"model": 1, "serial_hi": 70000, "serial_lo": 0, "firmware": 1})
    bare = hc.model_copy(update={"identity": None})
    with pytest.raises(IdentityError, match="no identity section"):
        device_identity(bare, {})


def test_identity_keys_must_be_read_by_identify(tmp_path: Path) -> None:
    path, text = tampered(tmp_path, "hc-200",
                          lambda d: d["identity"].update(serial=["serial_hi", "drive"]))
    found = problems(path)
    hits = [p for p in found if "identity.serial: 'drive' is not a result of "
            "operations.identify" in p]
    assert hits, found
    assert "serial:" in line_text(hits[0], path, text) or "identity" in text


def test_identity_section_is_optional(tmp_path: Path) -> None:
    path, _ = tampered(tmp_path, "us-300", lambda d: d.pop("identity"))
    assert load_profile_file(path).profile.identity is None
