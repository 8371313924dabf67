"""CSV cells a spreadsheet will not run as formulas (OWASP "CSV injection").

A text cell that begins with `=`, `+`, `-` or `@` (or a tab or carriage return, which some
spreadsheets skip before looking for one of those) is read by Excel, LibreOffice and Google Sheets
as a formula, which can run commands or leak other cells. Records hold text typed by people
(reasons, notes, patient ids, device details), so every CSV writer passes its cells through
`safe_cell` / `safe_row`: such a text cell is prefixed with a single quote, which spreadsheets
show as plain text and which a program reading the CSV can strip.

Only text is neutralised: numbers the program writes itself (an int or a float, a negative dose
delta for instance) stay numbers, because the csv module writes them as digits a spreadsheet
reads as a value, never as a formula. A number that arrives as *text* ("-5") is prefixed like any
other text: the writer cannot tell it from "-5+cmd|..." without parsing, and a quote costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# RFC 4180 line end. Python's csv writer quotes a cell only for the characters of its line
# terminator: with "\n" alone, a carriage return inside a typed text is written bare and splits
# the row for the reader (a way to forge rows); with "\r\n" every CR or LF cell is quoted.
LINE_END = "\r\n"
# The first characters that make a spreadsheet treat a cell as a formula (OWASP list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def safe_cell(value: Any) -> Any:
    """`value` unchanged, except a text cell starting a formula, which gets a leading quote."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return QUOTE + value
    return value


def safe_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A `csv.DictWriter` row with every cell passed through `safe_cell`."""
    return {key: safe_cell(value) for key, value in row.items()}
