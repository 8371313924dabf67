"""`modctl devices add | list | remove`, and the helpers the other clinic CLI tests share."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from unittest import mock

import pytest

from controller.cli import book_cmd, devices_cmd, serve_cmd
from controller.cli import main as cli_main
from controller.clinic import clock as clinic_time
from controller.clinic import roles
from controller.clinic.roles import ROLES_ENV
from controller.records.store import RecordStore

ROLES = """\
default_operator: alice
operators:
  alice: [clinician]
  bob: [clinician]
  tom: [technician]
  ada: [admin]
"""
# A fixed clinic clock: Monday 4 March 2030, 08:00 local time.
NOW = datetime(2030, 3, 4, 8, 0).astimezone(UTC)


def modctl(*argv: str, probe: bool = False) -> int:
    """Run modctl as `main()` does, with the clinic commands registered. The ports here are
    made up: `devices add` registers without identifying the device unless `probe`."""
    if argv[:2] == ("devices", "add") and not probe:
        argv = (*argv, "--no-probe")
    modules = tuple(dict.fromkeys((*cli_main.COMMAND_MODULES, devices_cmd, book_cmd,
                                   serve_cmd)))
    with mock.patch.object(cli_main, "COMMAND_MODULES", modules):
        return cli_main.main(list(argv))


def clinic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, roles_text: str | None = ROLES,
           now: datetime | None = NOW) -> Path:
    """A roles file (or none), a database path in $MODCTL_DB, and a fixed clock; the db."""
    if roles_text is None:
        monkeypatch.delenv(ROLES_ENV, raising=False)
        monkeypatch.setattr(roles, "DEFAULT_ROLES_PATH", tmp_path / "no-roles.yaml")
    else:
        path = tmp_path / "roles.yaml"
        path.write_text(roles_text)
        path.chmod(0o600)
        monkeypatch.setenv(ROLES_ENV, str(path))
    db = tmp_path / "records.sqlite3"
    monkeypatch.setenv("MODCTL_DB", str(db))
    if now is not None:
        monkeypatch.setattr(clinic_time, "now", lambda: now)
    return db


def calibrate(db: Path, device: str, due: date = date(2031, 1, 1), passed: bool = True,
              on: datetime = NOW) -> None:
    with RecordStore(db) as store:
        store.add_calibration(device=device, profile="-", technician="tom",
                              instrument="reference", instrument_id="REF-1", before={},
                              after={}, passed=passed, performed_at=on, next_due=due)


def audit(db: Path) -> list[tuple[str, str, str]]:
    with RecordStore(db) as store, store._read("test") as conn:
        return [(r["actor"], r["action"], r["subject"])
                for r in conn.execute("SELECT * FROM audit ORDER BY id")]


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return clinic(tmp_path, monkeypatch)


def test_register_list_and_remove(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert modctl("devices", "add", "heat-1", "--profile", "hc-200", "--port", "/dev/pts/91",
                  "--operator", "tom", "--serial", "HC-0042") == 0
    out = capsys.readouterr().out
    assert "registered heat-1: hc-200" in out and "never been calibrated" in out
    assert modctl("devices", "add", "us-1", "--profile", "us-300", "--port", "/dev/pts/92",
                  "--operator", "ada") == 0
    calibrate(db, "heat-1")
    capsys.readouterr()
    assert modctl("devices", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "PROFILE", "PORT"]
    assert "heat-1" in lines[1] and "HC-0042" in lines[1] and "ok, next due 2031-01-01" in lines[1]
    assert "us-1" in lines[2] and "OVERDUE: it has never been calibrated" in lines[2]
    assert modctl("devices", "remove", "us-1", "--operator", "tom", "--reason", "broken") == 0
    assert "removed us-1 from service" in capsys.readouterr().out
    assert modctl("devices", "list") == 0
    assert "us-1" not in capsys.readouterr().out
    assert modctl("devices", "list", "--all") == 0
    assert "removed 20" in capsys.readouterr().out
    assert ("tom", "device.add", "device/heat-1") in audit(db)
    assert ("ada", "device.add", "device/us-1") in audit(db)
    assert ("tom", "device.remove", "device/us-1") in audit(db)


def test_registration_needs_the_technician_role(db: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert modctl("devices", "add", "heat-1", "--profile", "hc-200", "--port", "/dev/pts/91",
                  "--operator", "bob") == 3
    err = capsys.readouterr().err
    assert "operator 'bob' may not register a device: the technician role is needed" in err
    # No --operator: the roles file's default operator (alice, a clinician) is refused too.
    assert modctl("devices", "add", "heat-1", "--profile", "hc-200", "--port", "/dev/pts/91") == 3
    assert "'alice' may not register a device" in capsys.readouterr().err
    assert modctl("devices", "add", "heat-1", "--profile", "hc-200", "--port", "/dev/pts/91",
                  "--operator", "tom") == 0
    assert modctl("devices", "remove", "heat-1", "--operator", "alice") == 3
    assert "technician role is needed" in capsys.readouterr().err


def test_an_unknown_profile_is_not_found(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Not found is exit 1 for every command (docs/cli.md), not a refusal.
    assert modctl("devices", "add", "heat-1", "--profile", "hc-900", "--port", "/dev/pts/1",
                  "--operator", "tom") == 1
    assert "--profile hc-900: no such profile" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["heat 1", "--profile", "hc-200", "--port", "/dev/pts/1"], "device name 'heat 1'"),
    (["heat-1", "--profile", "hc-200", "--port", " "], "port: empty"),
    (["dup", "--profile", "hc-200", "--port", "/dev/pts/1"], "'dup' is already registered"),
    (["other", "--profile", "hc-200", "--port", "/dev/pts/0"], "already the port of device"),
])
def test_registration_refusals_are_clear(db: Path, capsys: pytest.CaptureFixture[str],
                                         argv: list[str], message: str) -> None:
    assert modctl("devices", "add", "dup", "--profile", "hc-200", "--port", "/dev/pts/0",
                  "--operator", "tom") == 0
    capsys.readouterr()
    assert modctl("devices", "add", *argv, "--operator", "tom") == 3
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_profile_file_is_kept_by_absolute_path(db: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    source = Path(__file__).parent.parent / "device_profiles" / "es-4.yaml"
    (tmp_path / "mine.yaml").write_text(source.read_text())
    monkeypatch.chdir(tmp_path)
    assert modctl("devices", "add", "tens-1", "--profile", "mine.yaml", "--port", "/dev/pts/5",
                  "--operator", "tom") == 0
    with RecordStore(db) as store:
        device = store.device("tens-1")
    assert device is not None and device.profile == str(tmp_path / "mine.yaml")


def test_remove_refusals(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert modctl("devices", "remove", "ghost", "--operator", "tom") == 1  # no database yet
    assert "no such file" in capsys.readouterr().err
    modctl("devices", "add", "heat-1", "--profile", "hc-200", "--port", "/dev/pts/1",
           "--operator", "tom")
    assert modctl("devices", "remove", "ghost", "--operator", "tom") == 1  # not found
    assert "no device 'ghost' is registered (registered: heat-1)" in capsys.readouterr().err


def test_list_without_a_database_creates_none(db: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert modctl("devices", "list") == 0
    assert capsys.readouterr().out.strip() == "no devices registered"
    assert not db.exists()


def test_without_a_roles_file_anyone_registers_and_is_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = clinic(tmp_path, monkeypatch, roles_text=None)
    monkeypatch.setenv("USER", "maria")
    assert modctl("devices", "add", "heat-1", "--profile", "hc-200", "--port", "/dev/pts/1") == 0
    assert ("maria", "device.add", "device/heat-1") in audit(db)


def test_an_unsafe_roles_file_refuses_the_command(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    clinic(tmp_path, monkeypatch)
    (tmp_path / "roles.yaml").chmod(0o666)
    assert modctl("devices", "add", "heat-1", "--profile", "hc-200", "--port", "/dev/pts/1",
                  "--operator", "tom") == 3
    assert "writable by group or others" in capsys.readouterr().err
