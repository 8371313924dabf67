"""Entry point of `modctl`: builds the parser, runs a command, maps errors to exit statuses."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Collection, Sequence
from types import ModuleType
from typing import Any, TextIO

from controller import __version__
from controller.cli import logs
from controller.cli.common import (
    EXIT_INTERNAL,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    NotFound,
    UsageError,
    error,
)

# Set to show a traceback for internal errors (for developers only).
DEBUG_ENV = "MODCTL_DEBUG"
# Every command: its module and the one line `modctl` and `modctl --help` show for it. A
# command's module is imported only when that command runs (or for completion scripts and
# tests, which build the whole tree): `modctl --version` or `profiles list` never pay for the
# scheduling, calibration, web or pydantic stacks of the others (issue 15).
COMMANDS: dict[str, tuple[str, str]] = {
    "profiles": ("controller.cli.profiles_cmd", "list, show, validate device profiles"),
    "session": ("controller.cli.session_cmd", "run a timed treatment session"),
    "simulate": ("controller.cli.simulate_cmd", "serve a simulated device on a pseudo-terminal"),
    "records": ("controller.cli.records_cmd",
                "session records: list, show, export, verify, patient, report"),
    "demo": ("controller.cli.demo_cmd", "run a short session on each simulated device"),
    "diagram": ("controller.cli.diagram_cmd", "print the session state machine (Mermaid)"),
    "plan": ("controller.cli.plan_cmd", "treatment plans: list, show, validate, run"),
    "calibrate": ("controller.cli.calibrate_cmd",
                  "technician calibration of a device, and its history"),
    "devices": ("controller.cli.devices_cmd", "register, list and remove the clinic's devices"),
    "book": ("controller.cli.book_cmd", "book registered devices for patients"),
    "serve": ("controller.cli.serve_cmd", "run the clinic service (HTTP API, every device)"),
    "users": ("controller.cli.users_cmd", "accounts of the clinic service (modctl serve)"),
    "completion": ("controller.cli.completion",
                   "print a shell completion script (bash or zsh)"),
}
# The modules whose commands `modctl` has, in the order `--help` lists them: names (imported
# when needed) or already imported modules (tests add or narrow them).
COMMAND_MODULES: tuple[str | ModuleType, ...] = tuple(dict.fromkeys(
    module for module, _ in COMMANDS.values()))
# Top-level options that take a value: the word after them is not the command.
VALUE_OPTIONS = frozenset({"--log-file"})
# The hidden command the completion scripts call back for profile ids, device names...
COMPLETE_COMMAND = "__complete"
EXIT_STATUSES = """\
exit status:
  0    done (a session or plan: completed as planned)
  1    not found (an unknown profile, plan, session, device, booking or user), an invalid
       file (profiles/plan validate), records that cannot be used or do not verify
  2    usage error: a malformed command line or value; nothing was opened or changed
  3    refused or rejected before anything changed or any output started (a limit, a
       role, the calibration gate, a busy port, the patient's minimum interval)
  4    stopped early by the operator or the patient (calibrate: abandoned)
  5    ended by a fault or an interlock, or the stop could not be confirmed
  70   internal error (a bug), reported in one line; MODCTL_DEBUG=1 shows the traceback
  130  interrupted (Ctrl-C outside a session)
  141  cut short by a closed pipe

Run 'modctl COMMAND --help' for a command's options. Shell completion:
'modctl completion bash' or 'modctl completion zsh' (docs/cli.md).
"""

# The status when the reader of the output went away (`| head`) AND the command was cut short by
# it; 128 + SIGPIPE, what a shell reports for a program a closed pipe ended. Not reached through
# `print`: output to a closed pipe is dropped and the command finishes with its own status.
EXIT_PIPE = 141
# Write errors that mean nobody reads any more: a closed pipe, a terminal that hung up.
READER_GONE = frozenset({errno.EPIPE, errno.EIO})


class PipeSafeStream:
    """sys.stdout or sys.stderr, for any thread: once the reader is gone (EPIPE, or EIO from a
    terminal that hung up), the rest of the output goes to /dev/null and the command carries
    on, so a closed pipe never changes what a command does or the status it ends with (a
    session runs to its end regardless). Other write errors (a full disk) still raise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except OSError as exc:
                if exc.errno not in READER_GONE:
                    raise
                self.reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except OSError as exc:
                if exc.errno not in READER_GONE:
                    raise
                self.reader_gone()

    def reader_gone(self) -> None:
        """Point the file descriptor at /dev/null (Python's docs, "Note on SIGPIPE"), so that
        what is still buffered, and the flush at exit, cannot fail again."""
        self.broken = True
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError, AttributeError):  # a test's StringIO has no descriptor
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, buffer...
        return getattr(self._stream, name)


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser. With `commands`, only those commands' modules are imported and registered
    in full; the others are listed by name and help only (enough for `--help`, `--version`
    and a usage error). None: every command in full (completion scripts, tests)."""
    parser = argparse.ArgumentParser(
        prog="modctl", allow_abbrev=False,  # an abbreviated --log-file would hide the command
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Controller for serial physiotherapy modality devices "
                    "(heat/cold, ultrasound, TENS).",
        epilog=EXIT_STATUSES)
    parser.add_argument("--version", action="version", version=f"modctl {__version__}")
    logs.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in _module_entries():
        name = entry if isinstance(entry, str) else entry.__name__
        own = [c for c, (module, _) in COMMANDS.items() if module == name]
        if commands is None or not own or any(c in commands for c in own):
            module = importlib.import_module(name) if isinstance(entry, str) else entry
            module.register(sub)
        else:
            for command in own:
                sub.add_parser(command, help=COMMANDS[command][1], add_help=False)
    return parser


def _module_entries() -> list[str | ModuleType]:
    """COMMAND_MODULES without repeats (a module given both by name and as a module)."""
    seen: dict[str, str | ModuleType] = {}
    for entry in COMMAND_MODULES:
        seen.setdefault(entry if isinstance(entry, str) else entry.__name__, entry)
    return list(seen.values())


def command_word(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the first word that is not a top-level option
    or its value), or None."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in VALUE_OPTIONS:
            skip = True
        elif word == "--":
            return None
        elif not word.startswith("-"):
            return word
    return None


def command_list() -> str:
    """One line per command, as `modctl` alone prints them."""
    width = max(len(c) for c in COMMANDS)
    names = [c for c, (module, _) in COMMANDS.items()
             if any(module == (e if isinstance(e, str) else e.__name__)
                    for e in _module_entries())]
    lines = [f"  {c.ljust(width)}  {COMMANDS[c][1]}" for c in names]
    return "commands:\n" + "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its output survives a reader that goes away (`| head -1`)."""
    saved = sys.stdout, sys.stderr
    out = PipeSafeStream(sys.stdout) if sys.stdout is not None else None
    err = PipeSafeStream(sys.stderr) if sys.stderr is not None else None
    sys.stdout, sys.stderr = out or sys.stdout, err or sys.stderr
    try:
        return _main(argv)
    except BrokenPipeError:  # written past the stream (a raw buffer): cut short, quietly
        if out is not None and not out.broken:
            out.reader_gone()
        return EXIT_PIPE
    finally:
        for stream in (out, err):
            if stream is not None:
                stream.flush()
        sys.stdout, sys.stderr = saved


def _main(argv: Sequence[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == [COMPLETE_COMMAND]:  # the completion scripts' call back: fast, silent
        from controller.cli.completion import complete_main
        return complete_main(words[1:])
    word = command_word(words)
    parser = build_parser({word} if word in COMMANDS else set())
    args = parser.parse_args(words)
    if args.command is None:  # `modctl` alone: what there is to run
        parser.print_usage(sys.stderr)
        print(command_list() + "\nRun 'modctl COMMAND --help' for a command, 'modctl --help' "
              "for the exit statuses.", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(args.verbose, args.log_file)
    try:
        status: int = args.run(args)
        return status
    except UsageError as exc:
        error(str(exc))
        return EXIT_USAGE
    except NotFound as exc:
        error(str(exc))
        return EXIT_NOT_FOUND
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:
        raise  # not a bug: the reader went away (main)
    except Exception as exc:
        known = _expected_error(exc)
        if known is not None:
            return known
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        error(f"internal error: {type(exc).__name__}: {exc} "
              f"(set {DEBUG_ENV}=1 for details; please report it)")
        return EXIT_INTERNAL


def _expected_error(exc: Exception) -> int | None:
    """The status of an expected failure that reached main: a profile or plan file that cannot
    be read, an unusable records database. Their modules are imported only here, on the way
    out, so that commands that never touch them start without them."""
    from controller.profiles.yaml_source import SourceError
    from controller.records.store import RecordsError
    if isinstance(exc, SourceError):
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    if isinstance(exc, RecordsError):
        error(str(exc))
        return EXIT_INVALID
    return None


if __name__ == "__main__":
    sys.exit(main())
