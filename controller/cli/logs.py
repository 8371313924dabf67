"""Logging for the command line: quiet by default, detailed on request.

Default: warnings and errors on stderr as one plain line, "modctl: message" (no logger names,
levels or tracebacks: what a technician reads). `-v` adds INFO lines the same way; `-vv` shows
DEBUG (protocol retries and exchanges) with timestamps and logger names. `--log-file PATH`
writes everything at DEBUG to the file whatever the stderr level, for a bug report.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

from controller.session.exit_codes import EXIT_USAGE

# The stderr level for 0, 1 and 2-or-more `-v`.
LEVEL_BY_VERBOSITY = (logging.WARNING, logging.INFO, logging.DEBUG)
# Below WARNING only modctl's own loggers are shown (and written to --log-file): the
# scheduler's and the state machine library's notes on every job and callback drown the
# exchanges. From this many `-v` on, everything is.
OWN_LOGGERS = ("controller", "protocols", "simulator", "__main__")
EVERYTHING_FROM = 3
PLAIN_PREFIX = "modctl: "
DETAILED_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
DETAILED_DATE = "%H:%M:%S"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(threadName)s]: %(message)s"
# Marks the handlers this module installed, so a second configure() (tests call main() many
# times in one process) replaces them instead of doubling every line.
_OWNED = "_modctl_cli_handler"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The logging options every `modctl` command accepts."""
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="more detail on stderr: -v for progress notes, -vv for protocol exchanges "
             "and retries (DEBUG, with timestamps and logger names), -vvv for the libraries' "
             "own notes too")
    parser.add_argument(
        "--log-file", metavar="PATH", default=None,
        help="also write a DEBUG log (every exchange and retry) to PATH, whatever -v says")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of the record (main() wraps it in a
    pipe-safe stream, tests capture it), not the one that existed at configuration."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


class _OwnDetail(logging.Filter):
    """Lets warnings and errors through from anyone, detail from modctl's loggers only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or \
            record.name.split(".", 1)[0] in OWN_LOGGERS


class _PlainFormatter(logging.Formatter):
    """"modctl: message" on one line: the first line of the message, no traceback (the
    traceback goes to the log file or -vv, never to a technician's screen)."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage().strip()
        first = text.splitlines()[0] if text else ""
        return PLAIN_PREFIX + first


def configure(verbose: int, log_file: str | None) -> None:
    """Install the stderr handler (and the file handler) on the root logger. An unwritable
    --log-file is a usage error: one line on stderr and SystemExit(EXIT_USAGE)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OWNED, False):
            root.removeHandler(handler)
            handler.close()
    level = LEVEL_BY_VERBOSITY[min(max(verbose, 0), len(LEVEL_BY_VERBOSITY) - 1)]
    console = _StderrHandler()
    console.setLevel(level)
    if level <= logging.DEBUG:
        console.setFormatter(logging.Formatter(DETAILED_FORMAT, DETAILED_DATE))
    else:
        console.setFormatter(_PlainFormatter())
    setattr(console, _OWNED, True)
    if verbose < EVERYTHING_FROM:
        console.addFilter(_OwnDetail())
    root.addHandler(console)
    lowest = level
    if log_file:
        try:
            to_file = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            print(f"{PLAIN_PREFIX}--log-file {log_file}: cannot write it: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        to_file.setLevel(logging.DEBUG)
        to_file.setFormatter(logging.Formatter(FILE_FORMAT))
        if verbose < EVERYTHING_FROM:
            to_file.addFilter(_OwnDetail())
        setattr(to_file, _OWNED, True)
        root.addHandler(to_file)
        lowest = logging.DEBUG
    root.setLevel(lowest)
