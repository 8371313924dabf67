"""The calibration gate keys on the device, not on a spelling of its port (issue 10 item 3).

Outside testing ran an uncalibrated registered device by addressing it as `/dev/pts//N`,
`/dev/pts/./N`, through a symlink (a by-id path against /dev/ttyUSB0), or with a profile of
the same id that has no `calibration:` section. Each is refused now, with exit 3 and nothing
switched on; so is a device that reports the identity of a registered, uncalibrated one on a
port nobody registered, and a registered device whose profile file changed since.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.cli.main import main
from controller.records.store import RecordStore
from tests.conftest import SimFactory
from tests.session_helpers import SETTINGS, history
from tests.test_devices_cli import calibrate, clinic, modctl

Run = Callable[..., tuple[int, dict[str, object]]]


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return clinic(tmp_path, monkeypatch)


def session(profile: str, port: str, capsys: pytest.CaptureFixture[str],
            pid: str = "hc-200") -> tuple[int, dict[str, object]]:
    argv = ["session", "run", profile, "--port", port, "--duration", "1", "--json",
            "--operator", "alice"]
    for name, value in SETTINGS[pid].items():
        argv += ["--set", f"{name}={value}"]
    status = main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    return status, json.loads(out[-1]) if out else {}


def register(port: str, *extra: str) -> None:
    assert modctl("devices", "add", "heat-1", "--profile", "hc-200", "--port", port,
                  "--operator", "tom", *extra, probe=True) == 0


def spellings(port: str, tmp_path: Path) -> list[str]:
    head, _, number = port.rpartition("/")
    link = tmp_path / "usb-Generic_HC-200_0001-if00"
    link.symlink_to(port)
    return [f"{head}//{number}", f"{head}/./{number}", str(link)]


def test_registration_identifies_the_device(db: Path, sim_device: SimFactory,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    device = sim_device("hc-200")
    register(device.port)
    assert "serial 1001" in capsys.readouterr().out
    with RecordStore(db) as store:
        row = store.device("heat-1")
    assert row is not None and row.serial == "1001" and row.model
    assert row.port_real == os.path.realpath(device.port)
    assert len(row.profile_sha256) == 64 and row.profile_path.endswith("hc-200.yaml")
    assert not any(c.on for c in history(device))     # identifying never switches on


@pytest.mark.parametrize("profile", ["us-300", "es-4"])
def test_registration_identifies_every_shipped_model(db: Path, sim_device: SimFactory,
                                                     profile: str) -> None:
    # The ES-4's telemetry names a channel: identifying it reads every channel (it used to
    # fail with an internal error, the template's key not being found).
    device = sim_device(profile)
    assert modctl("devices", "add", "dev-1", "--profile", profile, "--port", device.port,
                  "--operator", "tom", probe=True) == 0
    with RecordStore(db) as store:
        row = store.device("dev-1")
    assert row is not None and row.serial and row.model


def test_registration_refuses_a_device_that_does_not_answer(
        db: Path, capsys: pytest.CaptureFixture[str], sim_device: SimFactory) -> None:
    device = sim_device("us-300")      # not an HC-200
    assert modctl("devices", "add", "heat-1", "--profile", "hc-200", "--port", device.port,
                  "--operator", "tom", probe=True) == 3
    assert "did not identify as the HC-200 of the profile" in capsys.readouterr().err


def test_every_spelling_of_an_uncalibrated_devices_port_is_refused(
        db: Path, tmp_path: Path, sim_device: SimFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    device = sim_device("hc-200")
    register(device.port)
    capsys.readouterr()
    for port in [device.port, *spellings(device.port, tmp_path)]:
        status, report = session("hc-200", port, capsys)
        assert status == 3, (port, report)
        assert "out of calibration" in str(report["reason"]), port
    assert not any(c.on for c in history(device))


def test_a_profile_without_calibration_does_not_lift_the_requirement(
        db: Path, tmp_path: Path, sim_device: SimFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    device = sim_device("hc-200")
    register(device.port)
    capsys.readouterr()
    shipped = Path(__file__).parent.parent / "device_profiles" / "hc-200.yaml"
    text = shipped.read_text()
    cut = text[:text.index("\ncalibration:")] + "\n"
    (tmp_path / "hc-200-nocal.yaml").write_text(cut)
    status, report = session(str(tmp_path / "hc-200-nocal.yaml"), device.port, capsys)
    assert status == 3 and "out of calibration" in str(report["reason"])
    assert not any(c.on for c in history(device))


def test_a_registered_device_on_an_unregistered_port_is_known_by_its_identity(
        db: Path, sim_device: SimFactory, capsys: pytest.CaptureFixture[str]) -> None:
    device = sim_device("hc-200")
    register(device.port)
    # The device moves to another adapter: its old registration no longer names this port.
    with RecordStore(db) as store, store._write("test") as conn:
        conn.execute("UPDATE devices SET port = '/dev/ttyUSB7', port_real = '/dev/ttyUSB7'")
    capsys.readouterr()
    status, report = session("hc-200", device.port, capsys)
    assert status == 3 and "heat-1" in str(report["reason"])
    assert "out of calibration" in str(report["reason"])
    assert not any(c.on for c in history(device))


def test_another_unit_on_a_registered_port_is_refused(
        db: Path, sim_device: SimFactory, capsys: pytest.CaptureFixture[str]) -> None:
    device = sim_device("hc-200")
    assert modctl("devices", "add", "heat-1", "--profile", "hc-200", "--port", device.port,
                  "--operator", "tom", "--serial", "4242") == 0    # registered unprobed
    with RecordStore(db) as store, store._write("test") as conn:
        conn.execute("UPDATE devices SET model = '18499'")
    calibrate(db, "heat-1")     # in calibration: only the identity can tell it is not heat-1
    capsys.readouterr()
    status, report = session("hc-200", device.port, capsys)
    assert status == 3
    assert "reports 18499 serial 1001" in str(report["reason"])
    assert "serial 4242" in str(report["reason"])


def test_a_changed_profile_file_is_refused_until_pinned_again(
        db: Path, tmp_path: Path, sim_device: SimFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    device = sim_device("hc-200")
    shipped = Path(__file__).parent.parent / "device_profiles" / "hc-200.yaml"
    mine = tmp_path / "heat.yaml"
    mine.write_text(shipped.read_text())
    assert modctl("devices", "add", "heat-1", "--profile", str(mine), "--port", device.port,
                  "--operator", "tom", probe=True) == 0
    mine.write_text(shipped.read_text() + "\n# edited by hand\n")
    capsys.readouterr()
    status, report = session(str(mine), device.port, capsys)
    assert status == 3 and "has changed since registration" in str(report["reason"])
    assert "modctl devices pin heat-1" in str(report["reason"])
    assert modctl("devices", "pin", "heat-1", "--operator", "tom") == 0
    capsys.readouterr()
    status, report = session(str(mine), device.port, capsys)
    assert status == 3 and "out of calibration" in str(report["reason"])   # no longer pinned
    assert not any(c.on for c in history(device))
