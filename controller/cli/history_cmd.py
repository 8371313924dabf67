"""`modctl records patient ID` and `modctl records report ID`: history and printable reports.

Registered inside the `records` group by `records_cmd.register`, which passes its `--db`
option and the wrapper that opens the database and reports its errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from controller.cli.common import EXIT_INVALID, EXIT_NOT_FOUND, EXIT_OK, error
from controller.cli.table import print_table

if TYPE_CHECKING:
    from controller.records.history import PatientHistory
    from controller.records.store import RecordStore

# The clinical wording, the history and the report stacks are imported by the commands that
# use them, not when `records` registers these (issue 15: `records list` starts fast).

# As in records_cmd: unreadable records, or a report that cannot be made or written.
EXIT_RECORDS = EXIT_INVALID
STDOUT = "-"
PDF_SUFFIX = ".pdf"
FORMATS = ("table", "json", "csv")

Command = Callable[["RecordStore", argparse.Namespace], int]
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
        "report", parents=list(parents), help="a printable report of one session (A4)",
        description="Write the printable, self-contained report of one session (a unique id "
                    "prefix is enough): one A4 page a clinician files, with the clinic's name "
                    "and address (roles file, clinic settings), the prescription, the outcome, "
                    "the dose and what it means, a chart, the clinical notes and lines for a "
                    "signature. HTML to stdout unless --out names a file; a FILE.pdf is printed "
                    "by Chromium when it is installed.")
    rep.add_argument("session_id", metavar="ID",
                     help="the session to report on (id or unique prefix)")
    rep.add_argument("--out", metavar="FILE",
                     help=f"write to FILE (.html, or .pdf when Chromium is installed) instead "
                          f"of stdout ('{STDOUT}': stdout)")
    rep.add_argument("--detail", action="store_true",
                     help="add an appendix page: the limits each value was checked against, "
                          "the event timeline and the raw record")
    rep.set_defaults(run=command(_report))


# -- records patient --------------------------------------------------------------------------

def _patient(store: RecordStore, args: argparse.Namespace) -> int:
    from controller.records.history import history_csv, history_json, patient_history
    history = patient_history(store, args.patient)
    if args.fmt == "json":
        sys.stdout.write(history_json(history))
    elif args.fmt == "csv":
        sys.stdout.write(history_csv(history))
    else:
        _print_history(history)
    return EXIT_OK


def _print_history(history: PatientHistory) -> None:
    from controller.records.clinical import duration_text, local_zone, modality_name, therapy_name
    entries = history.entries
    if not entries:
        print(f"no sessions for patient {history.patient}")
        return
    zone = local_zone()
    print(f"patient {history.patient}: {len(entries)} session{'s' * (len(entries) != 1)}, "
          f"{_when(entries[0].started_at)} to {_when(entries[-1].started_at)} ({zone})\n")
    print_table((f"STARTED ({zone})", "SESSION", "THERAPY", "DEVICE", "OUTCOME", "DELIVERED",
                  "DOSE"),
                 [(_when(e.started_at), e.session_id,
                   therapy_name({"modality": e.modality, "regimes": list(e.regimes)}),
                   f"{e.profile} #{e.device_serial or '?'}",
                   _outcome(e.outcome or e.status), duration_text(e.delivered_s),
                   _dose(e.modality, e.regimes, e.figures)) for e in entries])
    print("\ntotals")
    print_table(("THERAPY", "SESSIONS", "DELIVERED", "DOSE"),
                 [(modality_name(t.modality), str(t.sessions), duration_text(t.delivered_s),
                   _dose(t.modality, (), t.figures)) for t in history.totals])


def _outcome(outcome: str) -> str:
    """The outcome's first words (`Completed as planned`, `Stopped early`)."""
    from controller.records.clinical import OUTCOME_WORDS
    return OUTCOME_WORDS.get(outcome, outcome).split(":")[0]


def _dose(modality: str, regimes: Sequence[str], figures: dict[str, float]) -> str:
    from controller.records.dose_text import dose_lines
    lines = dose_lines({"modality": modality, "regimes": list(regimes)}, figures)
    return ", ".join(f"{d.label} {d.text()}" for d in lines) or "-"


def _when(iso: str) -> str:
    """A record's UTC time in the clinic's time zone, without the zone's name (it heads the
    column)."""
    from controller.records.clinical import local_time
    return local_time(iso).rsplit(" ", 1)[0]


# -- records report ---------------------------------------------------------------------------

def _report(store: RecordStore, args: argparse.Namespace) -> int:
    from controller.clinic.roles import RolesError, load_roles
    from controller.records.history import session_samples
    from controller.records.html_report import ReportError, render_html
    from controller.records.report_pdf import PdfError, html_to_pdf
    session = store.get_session(args.session_id)
    if session is None:
        error(f"no session {args.session_id} in {store.path}")
        return EXIT_NOT_FOUND
    try:
        clinic = load_roles().clinic
        text = render_html(session, session_samples(store, session.id), clinic=clinic,
                           notes=store.notes(session.id), detail=args.detail)
    except (ReportError, RolesError) as exc:
        error(str(exc))
        return EXIT_RECORDS
    out = args.out or STDOUT
    if out == STDOUT:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        if out.lower().endswith(PDF_SUFFIX):
            html_to_pdf(text, Path(out))
        else:
            Path(out).write_text(text, encoding="utf-8")
    except PdfError as exc:
        error(str(exc))
        return EXIT_RECORDS
    except OSError as exc:
        error(f"cannot write {out}: {exc.strerror or exc}")
        return EXIT_RECORDS
    print(f"report of session {session.id} written to {out}")
    return EXIT_OK
