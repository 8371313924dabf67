"""The newcomer path: clone the repository and run the README's two commands, as written.

Issue 6, part 5. A new user reads README.md, copies the command under "Set up and run
the main job", or the one under "Set up and pass the tests", into a shell in a fresh
clone. This test does exactly that:

1. `git clone` of this repository's committed HEAD into a temporary directory (what
   is not committed does not exist for a newcomer), once per command: each command starts
   with its own `python3 -m venv .venv` and must stand on its own;
2. both commands are taken from the README.md of the clone (the first fenced `sh` block
   after each of the two phrases), never hard-coded, and run with `/bin/sh -c` in their
   clone, from a fresh `.venv`, with pip installing from the package index;
3. the first must exit 0 and report three completed sessions (one per simulated
   device); the second must exit 0 with pytest passing.

The two commands run side by side: the demo's sessions are mostly waiting, and the test
command's install fills that time (one after the other, the test took ~50 s; side by side
~30 s). pip does not byte-compile what it installs (PIP_NO_COMPILE): Python compiles what
it imports, and compiling all of pymodbus and playwright proves nothing here.

The second command runs the test suite, which contains this test: to stop the
recursion, the commands run with MODCTL_NEWCOMER=1, which makes this test skip itself,
and the pytest invocation at the end of the command gets
`-x -p no:cacheprovider -k "not newcomer"` plus a few quick test files (QUICK_TESTS):
the command is the README's, the install is from nothing, pytest starts, collects
from the clone and passes. Running the whole suite again there would double the
time of a CI run for no new information (CI runs the whole suite already); set
MODCTL_NEWCOMER_FULL=1 to run all of it anyway.

Marked slow: it installs the dependencies (pymodbus, playwright...) into two
virtual environments; ~30 s on a warm pip cache, more on a cold one.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
NEWCOMER_ENV = "MODCTL_NEWCOMER"
FULL_ENV = "MODCTL_NEWCOMER_FULL"
MAIN_JOB = "Set up and run the main job"
TESTS_JOB = "Set up and pass the tests"
# Each command creates a venv and installs from nothing: generous, still bounded.
COMMAND_TIMEOUT_S = 15 * 60
# Quick, and between them they need the installed package data (shipped profiles),
# the simulator on a pseudo-terminal and hypothesis: proof the [test] extra works.
QUICK_TESTS = ("tests/test_crc.py", "tests/test_profiles_shipped.py",
               "tests/test_prescription.py", "tests/test_sim_us300.py")
DEMO_SESSIONS = 3
OUTPUT_TAIL = 4000


def _skip_unless_possible() -> None:
    if os.environ.get(NEWCOMER_ENV):
        pytest.skip(f"already inside a newcomer run ({NEWCOMER_ENV} is set): "
                    "not cloning recursively")
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot clone the repository")
    if shutil.which("python3") is None:
        pytest.skip("python3 is not on PATH: the README's commands start with it")
    inside = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--is-inside-work-tree"],
                            capture_output=True, text=True)
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        pytest.skip(f"{REPO} is not a git work tree: nothing to clone")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "-q", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the repository has no commits yet: a clone would be empty")
    if not _index_reachable():
        pytest.skip("the package index (pypi.org) is not reachable: pip cannot install")


def _index_reachable() -> bool:
    """True when pip can plausibly download: a configured index/proxy, or pypi.org answers."""
    configured = ("PIP_INDEX_URL", "PIP_FIND_LINKS", "HTTPS_PROXY", "https_proxy",
                  "ALL_PROXY", "all_proxy")
    if any(os.environ.get(name) for name in configured):
        return True
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


def readme_command(readme: str, phrase: str) -> str:
    """The first fenced `sh` block after `phrase`, as one command line."""
    at = readme.find(phrase)
    assert at >= 0, f"README.md no longer says {phrase!r}"
    block = re.compile(r"^```sh[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S).search(readme, at)
    assert block is not None, f"README.md has no ```sh block after {phrase!r}"
    lines = [ln.strip() for ln in block.group(1).splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    assert lines, f"the ```sh block after {phrase!r} is empty"
    return " ".join(ln.removesuffix("\\").strip() for ln in lines)


def narrowed_test_command(command: str, clone: Path) -> str:
    """The README's test command with the final pytest call narrowed (see the module doc)."""
    tail = command.rsplit("&&", 1)[-1]
    assert re.search(r"-m pytest\b|\bpytest\b", tail), (
        f"the README's test command no longer ends with a pytest call: {command!r}")
    extra = ["-x", "-p", "no:cacheprovider", "-k", "not newcomer"]
    if not os.environ.get(FULL_ENV):
        quick = [t for t in QUICK_TESTS if (clone / t).is_file()]
        assert quick, f"none of {QUICK_TESTS} exists in the committed tree"
        extra += quick
    return f"{command} {' '.join(shlex.quote(a) for a in extra)}"


def start_in_clone(command: str, clone: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`/bin/sh -c COMMAND` in the clone, in a process group of its own; its output goes to
    `output.txt` beside the clone (a file, not a pipe: no command waits on a full pipe while
    the test waits on the other)."""
    with (clone.parent / "output.txt").open("w") as out:
        return subprocess.Popen(["/bin/sh", "-c", command], cwd=clone, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen[bytes], command: str, clone: Path,
           deadline: float) -> tuple[int, str]:
    """Exit status and output; the whole process group is killed at the deadline."""
    try:
        status = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        stop_group(proc)
        out = (clone.parent / "output.txt").read_text(errors="replace")
        pytest.fail(f"{command!r} still running after {COMMAND_TIMEOUT_S} s:\n"
                    f"{out[-OUTPUT_TAIL:]}")
    return status, (clone.parent / "output.txt").read_text(errors="replace")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of a command (a failure elsewhere must not leave it running)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def newcomer_env(scratch: Path) -> dict[str, str]:
    """The user's environment, minus anything that points into this checkout's venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTEST_ADDOPTS",
                        "MODCTL_DB", "MODCTL_DEBUG")}
    venv_bin = os.environ.get("VIRTUAL_ENV")
    if venv_bin:
        prefix = str(Path(venv_bin) / "bin")
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if p != prefix)
    (scratch / "tmp").mkdir()
    (scratch / "data").mkdir()
    env.update({
        NEWCOMER_ENV: "1",
        # Demo databases (mkdtemp) and records stay inside the scratch directory.
        "TMPDIR": str(scratch / "tmp"),
        "XDG_DATA_HOME": str(scratch / "data"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "PIP_NO_COMPILE": "1",       # see the module docstring
    })
    return env


@pytest.fixture
def clones(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two fresh clones of HEAD, one per README command, each in a scratch directory."""
    _skip_unless_possible()
    made = []
    for job in ("main-job", "tests-job"):
        target = tmp_path / job / "modctl"
        done = subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO),
                               str(target)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"git clone failed: {done.stderr}"
        made.append(target)
    try:
        yield made[0], made[1]
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # two venvs: do not keep them around


def test_readme_commands_work_in_a_fresh_clone(clones: tuple[Path, Path]) -> None:
    main_clone, tests_clone = clones
    main_job = readme_command((main_clone / "README.md").read_text(encoding="utf-8"), MAIN_JOB)
    tests_job = readme_command((tests_clone / "README.md").read_text(encoding="utf-8"),
                               TESTS_JOB)
    command = narrowed_test_command(tests_job, tests_clone)
    deadline = time.monotonic() + COMMAND_TIMEOUT_S
    main_proc = start_in_clone(main_job, main_clone, newcomer_env(main_clone.parent))
    tests_proc = start_in_clone(command, tests_clone, newcomer_env(tests_clone.parent))
    try:
        main_status, main_out = finish(main_proc, main_job, main_clone, deadline)
        if main_status == 0:  # while the tests clone still runs
            check_a_silent_device_is_one_sentence(main_clone / ".venv" / "bin" / "modctl",
                                                  main_clone.parent)
        status, out = finish(tests_proc, command, tests_clone, deadline)
    finally:
        stop_group(main_proc)
        stop_group(tests_proc)

    assert main_status == 0, f"{main_job!r} exited {main_status}:\n{main_out[-OUTPUT_TAIL:]}"
    completed = re.findall(r"^session \S+: completed - ", main_out, re.M)
    assert len(completed) == DEMO_SESSIONS, (
        f"{main_job!r} reported {len(completed)} completed sessions, expected "
        f"{DEMO_SESSIONS}:\n{main_out[-OUTPUT_TAIL:]}")
    assert "audit trail of the records: intact" in main_out, main_out[-OUTPUT_TAIL:]
    check_bare_modctl_lists_the_commands(main_clone / ".venv" / "bin" / "modctl")

    assert status == 0, f"{command!r} exited {status}:\n{out[-OUTPUT_TAIL:]}"
    summary = re.search(r"^(\d+) passed", out, re.M) or re.search(r"\b(\d+) passed\b", out)
    assert summary is not None and int(summary.group(1)) > 0, out[-OUTPUT_TAIL:]
    assert not re.search(r"\b\d+ (failed|error)", out), out[-OUTPUT_TAIL:]


def check_bare_modctl_lists_the_commands(modctl: Path) -> None:
    """`modctl` alone, as a newcomer types it first: the commands, one line each (issue 15),
    on stderr with the usage status 2 (docs/cli.md)."""
    done = subprocess.run([str(modctl)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert "commands:" in lines, done.stderr
    listed = [line.split()[0] for line in lines[lines.index("commands:") + 1:]
              if line.startswith("  ")]
    assert {"profiles", "session", "records", "demo", "devices", "book", "completion"} \
        <= set(listed), done.stderr
    assert "Traceback" not in done.stderr


# What a technician must never see on stderr (issue 15): hex runs, reprs, tracebacks.
HEX_RUN = re.compile(r"\b[0-9a-f]{2}( [0-9a-f]{2}){2,}\b")
NEVER_ON_STDERR = ("Traceback", "None", "b'", "[Errno")


def check_a_silent_device_is_one_sentence(modctl: Path, scratch: Path) -> None:
    """A device that goes silent as its output starts: one sentence on stderr, no hex, no
    retries (issue 15), with the newcomer's own `modctl` and its simulator."""
    sim = subprocess.Popen([str(modctl), "simulate", "hc-200", "--fault", "silent_at=0"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline()
        assert line.startswith("port: "), line
        done = subprocess.run(
            [str(modctl), "session", "run", "hc-200", "--port", line.split()[1],
             "--duration", "5s", "--set", "temperature_c=40", "--db",
             str(scratch / "silent.sqlite3")],
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        sim.terminate()
        sim.wait(10)
    assert done.returncode == 5, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert re.search(r"no reply from the HC-200 on \S+ after \d+ attempts", done.stderr)
    assert not HEX_RUN.search(done.stderr), done.stderr
    assert not any(word in done.stderr for word in NEVER_ON_STDERR), done.stderr


def test_bare_modctl_lists_the_commands() -> None:
    """The same check against this checkout's installed `modctl` (fast; the clone's copy runs
    in the slow test above)."""
    check_bare_modctl_lists_the_commands(Path(sys.executable).parent / "modctl")


def test_readme_commands_are_found_where_a_newcomer_looks() -> None:
    """Fast guard on the parsing above, against this checkout's README."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    main_job = readme_command(readme, MAIN_JOB)
    tests_job = readme_command(readme, TESTS_JOB)
    assert "python3 -m venv .venv" in main_job and "modctl demo" in main_job
    assert "pytest" in tests_job.rsplit("&&", 1)[-1]
    assert narrowed_test_command(tests_job, REPO).startswith(tests_job + " -x ")
