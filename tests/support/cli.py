"""`modctl` run in-process, as a test sees it: (exit status, stdout, stderr)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controller.cli import main as cli_main

Run = Callable[..., tuple[int, str, str]]


def in_process(capsys: pytest.CaptureFixture[str]) -> Run:
    """A `run(*argv)` that calls `modctl`'s main and returns its status and captured output
    (argparse's SystemExit included)."""
    def run(*argv: str) -> tuple[int, str, str]:
        try:
            status = cli_main.main(list(argv))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return status, out, err
    return run
