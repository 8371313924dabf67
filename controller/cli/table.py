"""The one table layout of every `modctl ... list`: a header row in capitals, then one row per
item, columns two spaces apart, the last column unpadded (so a long path or name never pushes
the line out with trailing blanks). Plain text only: greppable, `cut`-able, and no import cost
for the fast commands (issue 15)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

GAP = "  "
# Shown for a cell without a value (None or ''), so columns never collapse.
MISSING = "-"


def cell(value: object) -> str:
    """A cell's text: None and '' read as MISSING, newlines as ' / ' (one row per item)."""
    if value is None:
        return MISSING
    text = str(value).replace("\r\n", "\n").replace("\n", " / ")
    return text or MISSING


def table_lines(header: Sequence[str], rows: Iterable[Sequence[object]],
                right: Iterable[int] = ()) -> list[str]:
    """The lines of the table; columns listed in `right` are right-aligned (numbers)."""
    body = [[cell(v) for v in row] for row in rows]
    for row in body:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {row}")
    grid = [list(header), *body]
    widths = [max(len(r[i]) for r in grid) for i in range(len(header))]
    aligned = set(right)
    lines = []
    for row in grid:
        cells = [c.rjust(w) if i in aligned else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append(GAP.join(cells).rstrip())
    return lines


def print_table(header: Sequence[str], rows: Iterable[Sequence[object]],
                right: Iterable[int] = (), out: TextIO | None = None) -> None:
    """Print the table to `out` (default: stdout at the time of the call)."""
    stream = out if out is not None else sys.stdout
    for line in table_lines(header, rows, right):
        print(line, file=stream)
