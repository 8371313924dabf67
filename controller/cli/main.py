"""Entry point of `modctl`: builds the parser, runs a command, maps errors to exit statuses."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

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
)
from controller.cli.common import EXIT_INTERNAL, EXIT_INVALID, EXIT_USAGE, UsageError, error
from controller.records import RecordsError
from controller.yaml_source import SourceError

# Set to show a traceback for internal errors (for developers only).
DEBUG_ENV = "MODCTL_DEBUG"
COMMAND_MODULES = (profiles_cmd, session_cmd, simulate_cmd, records_cmd, demo_cmd,
                   diagram_cmd, plan_cmd, calibrate_cmd, devices_cmd, book_cmd, serve_cmd)


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
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        error(f"internal error: {type(exc).__name__}: {exc} "
              f"(set {DEBUG_ENV}=1 for details; please report it)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
