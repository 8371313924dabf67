"""The command line's shape (issue 15): what the fast commands import, `modctl` alone, help on
every argument, one "not found" status, the logging options.

Start-up *time* is measured by bench/cli_startup.py, not here: these tests check the structure
that makes it fast (no heavy stack imported), which holds on any machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.cli import main as cli_main
from controller.clinic import roles
from controller.records.store import RecordStore
from tests.support.cli import Run, in_process

# Stacks the fast commands must not import: validation models, the scheduler, the web
# service, the session state machine, the profile model (which brings pydantic).
HEAVY = ("pydantic", "apscheduler", "fastapi", "transitions", "controller.profiles.model",
         "controller.session.service", "controller.clinic.roles")
PROBE = """
import json, sys
from controller.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("IMPORTED " + json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    return in_process(capsys)


@pytest.fixture
def clinic_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A records database with one device and one booking, no roles file (not enforced)."""
    monkeypatch.delenv(roles.ROLES_ENV, raising=False)
    monkeypatch.setattr(roles, "DEFAULT_ROLES_PATH", tmp_path / "no-roles.yaml")
    db = tmp_path / "records.sqlite3"
    monkeypatch.setenv("MODCTL_DB", str(db))
    with RecordStore(db) as store:
        store.add_device("heat-1", "hc-200", "/dev/pts/90", "tom")
        store.add_booking(devices={"device": "heat-1"}, profile="hc-200", plan=None,
                          settings={"temperature_c": "40"}, modalities=["thermal"],
                          patient="P-0042", starts_at=datetime.now(UTC) + timedelta(days=1),
                          duration_s=600, actor="tom", min_interval_s=0)
    return db


# -- start-up structure ------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["profiles", "list"],
                                  ["records", "list"], []],
                         ids=lambda a: " ".join(a) or "modctl")
def test_fast_commands_import_no_heavy_stack(argv: list[str], tmp_path: Path) -> None:
    db = tmp_path / "records.sqlite3"
    RecordStore(db).close()
    if argv[:2] == ["records", "list"]:
        argv = [*argv, "--db", str(db)]
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=repr(HEAVY)), *argv],
                          capture_output=True, text=True, timeout=60, check=False)
    line = done.stdout.splitlines()[-1]
    assert line.startswith("IMPORTED "), done.stdout + done.stderr
    assert json.loads(line.removeprefix("IMPORTED ")) == [], done.stderr


def test_only_the_named_command_module_is_imported() -> None:
    parser = cli_main.build_parser({"profiles"})
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(cli_main.COMMANDS)
    assert "list" in str(sub.choices["profiles"].format_help())  # registered in full
    assert sub.choices["session"].format_help().startswith("usage: modctl session")


def test_the_command_table_says_what_each_module_registers() -> None:
    for name, (module, help_text) in cli_main.COMMANDS.items():
        parser = argparse.ArgumentParser(prog="modctl")
        sub = parser.add_subparsers()
        importlib.import_module(module).register(sub)
        registered = {a.dest: a.help for a in sub._choices_actions}
        assert registered == {name: help_text}, module


# -- discoverability ---------------------------------------------------------------------------

def test_modctl_alone_lists_every_command(run: Run) -> None:
    status, out, err = run()
    assert status == 2 and out == ""
    assert err.startswith("usage: modctl")
    lines = err.splitlines()
    listed = lines[lines.index("commands:") + 1:lines.index("commands:") + 1
                   + len(cli_main.COMMANDS)]
    assert [line.split()[0] for line in listed] == list(cli_main.COMMANDS)
    for line, (help_text) in zip(listed, (h for _, h in cli_main.COMMANDS.values()),
                                 strict=True):
        assert line.endswith(help_text)


def test_help_documents_the_exit_statuses(run: Run) -> None:
    status, out, _ = run("--help")
    assert status == 0
    assert "exit status:" in out
    for code in ("0", "1", "2", "3", "4", "5", "70", "130", "141"):
        assert any(line.split()[:1] == [code] for line in out.splitlines()), code
    assert "not found" in out and "modctl completion bash" in out


def walk(parser: argparse.ArgumentParser,
         path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, (*path, name))
        else:
            yield path, action


def test_every_argument_and_option_has_help() -> None:
    missing = [f"modctl {' '.join(path)}: {action.option_strings or action.metavar}"
               for path, action in walk(cli_main.build_parser())
               if not action.help or not str(action.help).strip()]
    assert missing == []


# -- exit statuses -----------------------------------------------------------------------------

# Everything a command can name that does not exist: one status, EXIT_NOT_FOUND (1).
NOT_FOUND = [
    (["profiles", "show", "hc-900"], "no such profile"),
    (["simulate", "hc-900"], "no such profile"),
    (["plan", "show", "no-such-plan"], "no-such-plan"),
    (["records", "show", "ZZZZZZZZ"], "no session ZZZZZZZZ"),
    (["records", "note", "ZZZZZZZZ", "--text", "x"], "no session ZZZZZZZZ"),
    (["records", "report", "ZZZZZZZZ"], "no session ZZZZZZZZ"),
    (["devices", "remove", "ghost"], "no device 'ghost' is registered (registered: heat-1)"),
    (["devices", "pin", "ghost", "--no-probe"], "no device 'ghost'"),
    (["devices", "add", "heat-2", "--profile", "hc-900", "--port", "/dev/pts/1",
      "--no-probe"], "no such profile"),
    (["book", "cancel", "99"], "there is no booking 99"),
    (["book", "start", "99"], "there is no booking 99"),
    (["book", "add", "--device", "ghost", "--profile", "hc-200", "--duration", "10m",
      "--at", "09:00", "--patient", "P-0042"], "no device 'ghost'"),
    (["book", "add", "--device", "heat-1", "--plan", "no-such-plan", "--at", "09:00",
      "--patient", "P-0042"], "no such plan"),
    (["users", "disable", "ghost"], "user 'ghost' does not exist"),
    (["users", "passwd", "ghost", "--password-stdin"], "user 'ghost' does not exist"),
]
USAGE = [["nosuch"], ["book", "cancel", "abc"], ["records", "list", "--limit", "0"],
         ["profiles", "show", "hc-200", "--full", "--json"]]


@pytest.mark.parametrize(("argv", "message"), NOT_FOUND, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else "")
def test_not_found_is_one_status(argv: list[str], message: str, clinic_db: Path,
                                 run: Run) -> None:
    status, _, err = run(*argv)
    assert status == cli_main.EXIT_NOT_FOUND == 1, err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv", USAGE, ids=" ".join)
def test_usage_errors_are_2(argv: list[str], clinic_db: Path, run: Run) -> None:
    status, _, err = run(*argv)
    assert status == 2 and "Traceback" not in err


def test_found_things_are_0(clinic_db: Path, run: Run) -> None:
    for argv in (["profiles", "show", "hc-200"], ["plan", "show", "low-back-pain"],
                 ["devices", "list"], ["book", "list", "--all"], ["users", "list"]):
        status, out, err = run(*argv)
        assert status == 0 and out, (argv, err)


# -- logging options ---------------------------------------------------------------------------

def test_logging_options_are_wired(tmp_path: Path, run: Run) -> None:
    log = tmp_path / "modctl.log"
    status, out, _ = run("-vv", "--log-file", str(log), "profiles", "list")
    assert status == 0 and "hc-200" in out and log.exists()
    status, _, err = run("--log-file", str(tmp_path / "no" / "dir" / "x.log"), "profiles",
                         "list")
    assert status == 2 and "--log-file" in err
    assert cli_main.command_word(["-v", "--log-file", "profiles", "records"]) == "records"
