"""`modctl records patient ID` and `modctl records report ID`: history and printable reports.

Registered inside the `records` group by `records_cmd.register`, which passes its `--db`
option and the wrapper that opens the database and reports its errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from controller.cli.common import EXIT_INVALID, EXIT_OK, error
from controller.records.history import (
    DOSE_FIGURES,
    HistoryEntry,
    PatientHistory,
    format_number,
    history_csv,
    history_json,
    patient_history,
    session_samples,
)
from controller.records.html_report import ReportError, render_html
from controller.records.store import RecordStore

# As in records_cmd: unreadable records, or a report that cannot be made or written.
EXIT_RECORDS = EXIT_INVALID
REPORT_NAME = "session-{session_id}.html"
STDOUT = "-"
FORMATS = ("table", "json", "csv")

Command = Callable[[RecordStore, argparse.Namespace], int]
Wrap = Callable[[Command], Callable[[argparse.Namespace], int]]


def register(rs: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: Sequence[argparse.ArgumentParser], command: Wrap) -> None:
    pat = rs.add_parser(
        "patient", parents=list(parents), help="a patient's sessions and doses over time",
        description="A patient's sessions, oldest first, with the delivered time and the "
                    "modality's dose figures, then totals per modality.")
    pat.add_argument("patient", metavar="ID", help="the patient's pseudonymous id")
    fmt = pat.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_const", const="json", dest="fmt",
                     help="print the history as JSON")
    fmt.add_argument("--csv", action="store_const", const="csv", dest="fmt",
                     help="print the history as CSV: one row per session, then one total "
                          "row per modality")
    pat.set_defaults(run=command(_patient), fmt=FORMATS[0])
    rep = rs.add_parser(
        "report", parents=list(parents), help="a printable HTML report of one session",
        description="Write a printable, self-contained HTML report of one session (a unique "
                    "id prefix is enough), with a chart of the main measured quantity over "
                    "time. The chart needs matplotlib: install modctl[report].")
    rep.add_argument("session_id", metavar="ID")
    rep.add_argument("--out", metavar="FILE.html",
                     help=f"where to write it (default {REPORT_NAME.format(session_id='ID')} "
                          f"in the current directory; '{STDOUT}' for stdout)")
    rep.set_defaults(run=command(_report))


# -- records patient --------------------------------------------------------------------------

def _patient(store: RecordStore, args: argparse.Namespace) -> int:
    history = patient_history(store, args.patient)
    if args.fmt == "json":
        sys.stdout.write(history_json(history))
    elif args.fmt == "csv":
        sys.stdout.write(history_csv(history))
    else:
        _print_history(history)
    return EXIT_OK


def _print_history(history: PatientHistory) -> None:
    entries = history.entries
    if not entries:
        print(f"no sessions for patient {history.patient}")
        return
    print(f"patient {history.patient}: {len(entries)} session{'s' * (len(entries) != 1)}, "
          f"{_when(entries[0].started_at)} to {_when(entries[-1].started_at)} (UTC)\n")
    _print_table(("STARTED (UTC)", "SESSION", "MODALITY", "PROFILE", "OUTCOME", "DELIVERED",
                  "DOSE"),
                 [(_when(e.started_at), e.session_id, _modality(e), e.profile,
                   e.outcome or e.status, _secs(e.delivered_s),
                   _dose(e.modality, e.figures)) for e in entries])
    print("\ntotals")
    _print_table(("MODALITY", "SESSIONS", "DELIVERED", "DOSE"),
                 [(t.modality, str(t.sessions), _secs(t.delivered_s),
                   _dose(t.modality, t.figures)) for t in history.totals])


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _modality(e: HistoryEntry) -> str:
    return f"{e.modality} ({', '.join(e.regimes)})" if e.regimes else e.modality


def _dose(modality: str, figures: dict[str, float]) -> str:
    parts = [f"{f.label} {format_number(figures[f.key])} {f.unit}"
             for f in DOSE_FIGURES.get(modality, ()) if f.key in figures]
    return ", ".join(parts) or "-"


def _when(iso: str) -> str:
    return iso[:19].replace("T", " ")


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


# -- records report ---------------------------------------------------------------------------

def _report(store: RecordStore, args: argparse.Namespace) -> int:
    session = store.get_session(args.session_id)
    if session is None:
        error(f"no session {args.session_id} in {store.path}")
        return EXIT_RECORDS
    try:
        text = render_html(session, session_samples(store, session.id))
    except ReportError as exc:
        error(str(exc))
        return EXIT_RECORDS
    out = args.out or REPORT_NAME.format(session_id=session.id)
    if out == STDOUT:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as exc:
        error(f"cannot write {out}: {exc.strerror or exc}")
        return EXIT_RECORDS
    print(f"report of session {session.id} written to {out}")
    return EXIT_OK
