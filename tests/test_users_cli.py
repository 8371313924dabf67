"""`modctl users add | list | disable | passwd`, in process and once as a real command.

In process the accounts hash with cheap Argon2id parameters (tests.support.service's
TEST_HASHER: a hash costs ~0.3 s at argon2-cffi's defaults, and these tests make a dozen);
the real command, and tests/test_accounts.py once, use the defaults."""

from __future__ import annotations

import getpass
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.cli import main as cli_main
from controller.records.store import RecordStore
from controller.service import accounts as accounts_module
from controller.service.accounts import Accounts
from tests.support.service import TEST_HASHER
from tests.test_accounts import GOOD, OTHER, assert_no_secret, audit_rows


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("USER", "sysadmin")  # the OS user is the actor
    monkeypatch.setattr(accounts_module, "PasswordHasher", lambda: TEST_HASHER)
    return tmp_path / "records.sqlite3"


def modctl(db: Path, *argv: str, stdin: str | None = None) -> int:
    if stdin is not None:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(sys, "stdin", io.StringIO(stdin))
            return cli_main.main([*argv, "--db", str(db)])
    return cli_main.main([*argv, "--db", str(db)])


@dataclass
class Prompts:
    answers: list[str] = field(default_factory=list)
    """What getpass returns, in order; none left: EOFError (no terminal)."""
    asked: list[str] = field(default_factory=list)


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> Prompts:
    got = Prompts()

    def fake(prompt: str = "Password: ", stream: object = None) -> str:
        got.asked.append(prompt)
        if not got.answers:
            raise EOFError
        return got.answers.pop(0)

    monkeypatch.setattr(getpass, "getpass", fake)
    return got


def verify(db: Path, name: str, password: str) -> bool:
    with RecordStore(db) as store:
        return Accounts(store).verify(name, password) is not None


def test_add_list_disable_passwd_with_password_stdin(db: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert modctl(db, "users", "add", "ada", "--role", "admin", "--password-stdin",
                  stdin=GOOD + "\n") == 0
    assert modctl(db, "users", "add", "bob", "--role", "clinician", "--password-stdin",
                  stdin=OTHER + "\r\n") == 0
    assert capsys.readouterr().out == "added ada (admin)\nadded bob (clinician)\n"
    assert verify(db, "ada", GOOD) and verify(db, "bob", OTHER)
    assert modctl(db, "users", "disable", "bob") == 0
    assert "disabled bob" in capsys.readouterr().out
    assert modctl(db, "users", "passwd", "ada", "--password-stdin", stdin=OTHER + "\n") == 0
    assert "password of ada changed" in capsys.readouterr().out
    assert verify(db, "ada", OTHER) and not verify(db, "ada", GOOD)
    assert modctl(db, "users", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "STATUS", "CREATED", "(UTC)", "LAST", "CHANGE",
                                "(UTC)"]
    assert lines[1].split()[:3] == ["ada", "admin", "active"]
    assert lines[2].split()[:3] == ["bob", "clinician", "disabled"]
    assert modctl(db, "users", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["name"], u["role"], u["status"], u["disabled"]) for u in listed] == [
        ("ada", "admin", "active", False), ("bob", "clinician", "disabled", True)]
    assert listed[0]["changed"] > listed[0]["created"]
    with RecordStore(db) as store:
        assert [(e["actor"], e["action"], e["subject"]) for e in audit_rows(store)] == [
            ("sysadmin", "user.add", "user/ada"), ("sysadmin", "user.add", "user/bob"),
            ("sysadmin", "user.disable", "user/bob"), ("sysadmin", "user.passwd", "user/ada")]
        assert_no_secret(store, GOOD, OTHER)
        assert store.verify_audit().ok


def test_refusals_and_bad_values(db: Path, capsys: pytest.CaptureFixture[str],
                                 prompts: Prompts) -> None:
    assert modctl(db, "users", "add", "ada", "--role", "admin", "--password-stdin",
                  stdin=GOOD + "\n") == 0
    capsys.readouterr()
    cases = [
        (("users", "add", "ADA", "--role", "clinician"), 3,
         "modctl: refused: user 'ada' already exists\n"),
        (("users", "add", "bad name", "--role", "clinician"), 2,
         "modctl: user name 'bad name': use 1-64 letters, digits, '.', '_' or '-'\n"),
        (("users", "disable", "zed"), 1,
         "modctl: user 'zed' does not exist (see modctl users list)\n"),
        (("users", "passwd", "zed"), 1,
         "modctl: user 'zed' does not exist (see modctl users list)\n"),
    ]
    for argv, status, message in cases:
        assert modctl(db, *argv) == status, argv
        assert capsys.readouterr().err == message
    assert prompts.asked == []  # refused before any password was asked
    assert modctl(db, "users", "add", "bob", "--role", "clinician", "--password-stdin",
                  stdin="short\n") == 2
    assert capsys.readouterr().err == ("modctl: password: too short (5 characters); use at "
                                       "least 12\n")
    assert modctl(db, "users", "add", "bob", "--role", "clinician", "--password-stdin",
                  stdin="") == 2
    assert "no password on stdin" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        modctl(db, "users", "add", "bob", "--role", "nurse")
    assert info.value.code == 2
    assert "invalid choice: 'nurse'" in capsys.readouterr().err
    assert modctl(db, "users", "disable", "ada") == 0
    assert modctl(db, "users", "passwd", "ada", "--password-stdin", stdin=OTHER + "\n") == 3
    assert "user 'ada' is disabled" in capsys.readouterr().err
    with RecordStore(db) as store:
        assert [u.name for u in store.users()] == ["ada"]


def test_the_password_is_asked_twice(db: Path, capsys: pytest.CaptureFixture[str],
                                     prompts: Prompts) -> None:
    prompts.answers.extend([GOOD, GOOD + "x"])
    assert modctl(db, "users", "add", "bob", "--role", "clinician") == 2
    assert capsys.readouterr().err == ("modctl: password: the two entries differ; nothing was "
                                       "changed\n")
    assert prompts.asked == ["New password for bob: ", "New password for bob (again): "]
    prompts.answers.extend(["too short"])
    assert modctl(db, "users", "add", "bob", "--role", "clinician") == 2
    assert "too short (9 characters)" in capsys.readouterr().err
    assert modctl(db, "users", "add", "bob", "--role", "clinician") == 2  # no terminal
    assert "use --password-stdin" in capsys.readouterr().err
    with RecordStore(db) as store:
        assert store.users() == []
    prompts.answers.extend([GOOD, GOOD])
    assert modctl(db, "users", "add", "bob", "--role", "clinician") == 0
    prompts.answers.extend([OTHER, OTHER])
    assert modctl(db, "users", "passwd", "bob") == 0
    assert verify(db, "bob", OTHER)


def test_list_without_a_database_creates_none(db: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert modctl(db, "users", "list") == 0
    assert "no accounts (add the first admin: modctl users add NAME --role admin)" in \
        capsys.readouterr().out
    assert modctl(db, "users", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []
    assert not db.exists()


def test_as_a_real_command(tmp_path: Path) -> None:
    db = tmp_path / "records.sqlite3"
    env = {**os.environ, "MODCTL_DB": str(db), "USER": "sysadmin"}
    command = [sys.executable, "-m", "controller.cli.main", "users"]
    added = subprocess.run([*command, "add", "ada", "--role", "admin", "--password-stdin"],
                           input=GOOD + "\n", capture_output=True, text=True, env=env,
                           timeout=60)
    assert (added.returncode, added.stdout, added.stderr) == (0, "added ada (admin)\n", "")
    again = subprocess.run([*command, "add", "ada", "--role", "admin", "--password-stdin"],
                           input=GOOD + "\n", capture_output=True, text=True, env=env,
                           timeout=60)
    assert (again.returncode, again.stderr) == (3, "modctl: refused: user 'ada' already "
                                                   "exists\n")
    listed = subprocess.run([*command, "list", "--json"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert listed.returncode == 0
    assert [u["name"] for u in json.loads(listed.stdout)] == ["ada"]
    assert verify(db, "ada", GOOD)
