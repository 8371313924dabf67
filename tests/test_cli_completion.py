"""Shell completion (issue 15): the generated bash script run in a real bash, as bash runs it
on TAB (COMP_WORDS/COMP_CWORD, then the function), and the `__complete` call back in-process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.cli import completion
from controller.cli.main import main
from controller.records.store import RecordStore

BASH = shutil.which("bash")
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "modctl.bash"
    path.write_text(completion.script("bash"), encoding="utf-8")
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Two devices (one removed) and one booking."""
    path = tmp_path / "records.sqlite3"
    with RecordStore(path) as store:
        store.add_device("heat-1", "hc-200", "/dev/pts/90", "tom")
        store.add_device("us-room2", "us-300", "/dev/pts/91", "tom")
        store.add_booking(devices={"device": "heat-1"}, profile="hc-200", plan=None,
                          settings={"temperature_c": "40"}, modalities=["thermal"],
                          patient="P-0042", starts_at=datetime.now(UTC) + timedelta(days=1),
                          duration_s=600, actor="tom", min_interval_s=0)
    return path


def complete(script: Path, *words: str, db: Path | None = None) -> list[str]:
    """What bash offers for the last word of `modctl WORDS...`."""
    assert BASH is not None
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
    env.pop("MODCTL_DB", None)
    if db is not None:
        env["MODCTL_DB"] = str(db)
    code = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _modctl; '
            'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run([BASH, "-c", code, "bash", str(script), "modctl", *words],
                          capture_output=True, text=True, timeout=30, check=False, env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [line for line in done.stdout.splitlines() if line]


pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def test_commands_and_subcommands(bash_script: Path) -> None:
    assert complete(bash_script, "") == ["profiles", "session", "simulate", "records", "demo",
                                         "diagram", "plan", "calibrate", "devices", "book",
                                         "serve", "users", "completion"]
    assert complete(bash_script, "-v", "--log-file", "x.log", "pro") == ["profiles"]
    assert complete(bash_script, "book", "") == ["add", "list", "cancel", "start"]
    assert complete(bash_script, "records", "export", "--format", "") == ["json", "csv", "fhir"]


def test_options(bash_script: Path) -> None:
    assert complete(bash_script, "session", "run", "hc-200", "--p") == ["--port", "--patient"]
    assert complete(bash_script, "profiles", "show", "hc-200", "--") == ["--help", "--full",
                                                                        "--json"]


def test_profile_ids_and_plan_presets(bash_script: Path) -> None:
    assert complete(bash_script, "profiles", "show", "") == ["es-4", "hc-200", "us-300"]
    assert complete(bash_script, "book", "add", "--profile", "h") == ["hc-200"]
    assert "low-back-pain" in complete(bash_script, "plan", "show", "")


def test_device_names_and_booking_ids(bash_script: Path, db: Path) -> None:
    assert complete(bash_script, "devices", "remove", "", db=db) == ["heat-1", "us-room2"]
    assert complete(bash_script, "book", "add", "--device", "u", db=db) == ["us-room2"]
    assert complete(bash_script, "calibrate", "", db=db) == ["history", "heat-1", "us-room2",
                                                             "es-4", "hc-200", "us-300"]
    assert complete(bash_script, "book", "start", "", db=db) == ["1"]
    # --db on the command line wins over $MODCTL_DB
    assert complete(bash_script, "book", "cancel", "--db", str(db), "") == ["1"]


def test_no_database_completes_nothing_and_says_nothing(bash_script: Path,
                                                        tmp_path: Path) -> None:
    assert complete(bash_script, "devices", "remove", "", db=tmp_path / "none.sqlite3") == []
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database " * 100)
    assert complete(bash_script, "book", "start", "", db=garbage) == []


def test_call_back_in_process(db: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["__complete", "devices", "bookings", "profiles", "--db", str(db)]) == 0
    assert capsys.readouterr() == ("heat-1\nus-room2\n1\nes-4\nhc-200\nus-300\n", "")
    assert main(["__complete", "devices", "--db", str(tmp_path / "missing")]) == 0
    assert capsys.readouterr() == ("", "")
    assert not (tmp_path / "missing").exists()  # never creates a database
    assert main(["__complete", "bogus", "--db"]) == 0
    assert capsys.readouterr() == ("", "")


def test_zsh_script_uses_the_same_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "zsh"]) == 0
    zsh = capsys.readouterr().out
    assert zsh.startswith("#compdef modctl\n") and "bashcompinit" in zsh
    bash = completion.script("bash")
    assert bash.split("_modctl_spec() {", 1)[1] == zsh.split("_modctl_spec() {", 1)[1]
    with pytest.raises(SystemExit) as info:
        main(["completion", "fish"])
    assert info.value.code == 2
