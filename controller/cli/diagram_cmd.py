"""`modctl diagram`: the session state machine as Mermaid, generated from the code."""

from __future__ import annotations

import argparse

from controller.cli.common import EXIT_OK
from controller.session.machine import mermaid_diagram

DOC_HEADER = """# Session states

Generated from `controller/session/machine.py` by `modctl diagram --doc`;
`tests/test_session_machine.py` fails when this file and the code differ.
Every way out of ramping, delivering or holding goes through `stopping`, where
the output is commanded off and confirmed.

```mermaid
"""
DOC_FOOTER = "```\n"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("diagram", help="print the session state machine (Mermaid)",
                       description="Print the session state machine as Mermaid source, "
                                   "generated from the code.")
    p.add_argument("--doc", action="store_true",
                   help="print it as the Markdown page docs/session-states.md")
    p.set_defaults(run=_run)


def document() -> str:
    return DOC_HEADER + mermaid_diagram() + DOC_FOOTER


def _run(args: argparse.Namespace) -> int:
    print(document() if args.doc else mermaid_diagram(), end="")
    return EXIT_OK
