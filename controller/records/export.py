"""`records export`: sessions as JSON (with their events) or CSV (one row per session).

The CSV neutralises every text cell that could start a spreadsheet formula (`csv_safe`) and
ends lines in CRLF (RFC 4180); numbers the program writes stay plain numbers.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from controller.records import integrity
from controller.records.csv_safe import LINE_END, safe_row
from controller.records.database import now_iso
from controller.records.schema import SCHEMA_VERSION
from controller.records.sessions import SessionRow

ExportFormat = Literal["json", "csv"]
# The CSV's fixed columns, before the prescription (as JSON) and one column per dose figure.
CSV_COLUMNS = ("id", "started_at", "ended_at", "profile", "port", "operator", "patient",
               "status", "outcome", "reason", "stop_source", "planned_s", "delivered_s",
               "device_elapsed_s", "profile_path", "profile_sha256")


def export_sessions(sessions: Sequence[SessionRow], fmt: ExportFormat) -> str:
    """The sessions, in the order given, as `fmt`."""
    if fmt == "json":
        return json.dumps({"schema_version": SCHEMA_VERSION, "exported_at": now_iso(),
                           "sessions": [s.to_json() for s in sessions]}, indent=2,
                          ensure_ascii=False) + "\n"
    if fmt != "csv":
        raise ValueError(f"export format {fmt!r} is not json or csv")
    rows = []
    for s in sessions:
        row: dict[str, Any] = {k: getattr(s, k) for k in CSV_COLUMNS}
        row["prescription"] = integrity.dumps(s.prescription)
        row.update(_flatten("dose", s.dose or {}))
        rows.append(row)
    dose_cols = sorted({k for r in rows for k in r if k.startswith("dose.")})
    out = io.StringIO()
    writer = csv.DictWriter(out, [*CSV_COLUMNS, "prescription", *dose_cols],
                            lineterminator=LINE_END)
    writer.writeheader()
    writer.writerows(safe_row(r) for r in rows)  # no cell may start a formula
    return out.getvalue()


def _flatten(prefix: str, value: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}.{key}"
        if isinstance(item, Mapping):
            out.update(_flatten(name, item))
        else:
            out[name] = integrity.dumps(item) if isinstance(item, list) else item
    return out
