"""Entry point of `modctl`: builds the parser, runs a command, maps errors to exit statuses."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, TextIO

from controller import __version__
from controller.cli import (
    book_cmd,
    calibrate_cmd,
    demo_cmd,
    devices_cmd,
    diagram_cmd,
    plan_cmd,
    profiles_cmd,
    records_cmd,
    serve_cmd,
    session_cmd,
    simulate_cmd,
    users_cmd,
)
from controller.cli.common import EXIT_INTERNAL, EXIT_INVALID, EXIT_USAGE, UsageError, error
from controller.profiles.yaml_source import SourceError
from controller.records.store import RecordsError

# Set to show a traceback for internal errors (for developers only).
DEBUG_ENV = "MODCTL_DEBUG"
COMMAND_MODULES = (profiles_cmd, session_cmd, simulate_cmd, records_cmd, demo_cmd,
                   diagram_cmd, plan_cmd, calibrate_cmd, devices_cmd, book_cmd, serve_cmd,
                   users_cmd)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modctl",
        description="Controller for serial physiotherapy modality devices "
                    "(heat/cold, ultrasound, TENS).")
    parser.add_argument("--version", action="version", version=f"modctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
        return status
    except SourceError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    except RecordsError as exc:
        error(str(exc))
        return EXIT_INVALID
    except UsageError as exc:
        error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:
        raise  # not a bug: the reader went away (main)
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        error(f"internal error: {type(exc).__name__}: {exc} "
              f"(set {DEBUG_ENV}=1 for details; please report it)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
