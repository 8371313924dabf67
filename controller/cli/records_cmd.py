"""`modctl records list | show | export | verify | patient | report`: read the session records
database (`patient` and `report` live in `history_cmd`)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.cli import history_cmd
from controller.cli.common import EXIT_INVALID, EXIT_OK, error
from controller.records.history import export_patient_json
from controller.records.store import DB_ENV, RecordsError, RecordStore, SessionRow, default_db_path

DEFAULT_LIST_LIMIT = 50
# A database that cannot be read and a broken audit trail both exit 1: the records can't be trusted.
EXIT_RECORDS = EXIT_INVALID

Command = Callable[[RecordStore, argparse.Namespace], int]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", metavar="PATH",
                    help=f"records database (default: ${DB_ENV}, else "
                         "$XDG_DATA_HOME/modctl/records.sqlite3, else "
                         "~/.local/share/modctl/records.sqlite3)")
    p = sub.add_parser("records",
                       help="session records: list, show, export, verify, patient, report",
                       description="Session records kept by the controller, their audit "
                                   "trail, patient histories and printable session reports.")
    rs = p.add_subparsers(dest="records_cmd", required=True, metavar="COMMAND")
    ls = rs.add_parser("list", parents=[db], help="recent sessions, newest first",
                       description="List recent sessions, newest first.")
    ls.add_argument("--limit", type=_positive_int, default=DEFAULT_LIST_LIMIT, metavar="N",
                    help=f"at most N sessions (default {DEFAULT_LIST_LIMIT})")
    ls.add_argument("--patient", metavar="ID", help="only this patient's sessions")
    ls.add_argument("--profile", metavar="PROFILE", help="only sessions with this profile id")
    ls.set_defaults(run=_command(_list))
    show = rs.add_parser("show", parents=[db], help="one session and its events timeline",
                         description="Show one session (a unique id prefix is enough) and "
                                     "its events.")
    show.add_argument("session_id", metavar="ID")
    show.set_defaults(run=_command(_show))
    exp = rs.add_parser("export", parents=[db], help="sessions as JSON or CSV",
                        description="Export sessions: JSON with their events, or CSV with one "
                                    "row per session and the dose figures as columns.")
    exp.add_argument("--format", choices=("json", "csv"), default="json", dest="fmt")
    exp.add_argument("--patient", metavar="ID",
                     help="only this patient's sessions; JSON then also holds the patient's "
                          "history with totals per modality")
    exp.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    exp.set_defaults(run=_command(_export))
    ver = rs.add_parser("verify", parents=[db],
                        help="check the records against the audit trail's hash chain",
                        description="Check the audit trail's hash chain and every session, "
                                    "event, telemetry batch, calibration, device and booking "
                                    "against the content hash it recorded. Prints the chain "
                                    "head (keep it elsewhere); exit 0 when intact, 1 naming "
                                    "the first problem.")
    ver.add_argument("--expect-head", metavar="HASH", type=_head_hash,
                     help="a chain head written down earlier (printed by an earlier "
                          "verify): fail unless it is still in the chain, so a chain "
                          "rewritten or cut since then is caught")
    ver.set_defaults(run=_command(_verify))
    history_cmd.register(rs, [db], _command)


def _head_hash(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a chain head (64 hexadecimal digits, "
                                         "as printed by records verify)")
    return text.lower()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _command(body: Command) -> Callable[[argparse.Namespace], int]:
    """Open the database read for the command (never creating one) and report its errors."""
    def run(args: argparse.Namespace) -> int:
        try:
            with RecordStore(default_db_path(args.db), create=False) as store:
                return body(store, args)
        except RecordsError as exc:
            error(str(exc))
            return EXIT_RECORDS
    return run


def _list(store: RecordStore, args: argparse.Namespace) -> int:
    sessions = store.list_sessions(args.limit, patient=args.patient, profile=args.profile)
    if not sessions:
        print("no sessions")
        return EXIT_OK
    header = ("ID", "STARTED", "PROFILE", "PATIENT", "STATUS", "OUTCOME", "PLANNED", "DELIVERED")
    rows = [header, *[(s.id, s.started_at[:19].replace("T", " "), s.profile, s.patient or "-",
                       s.status, s.outcome or "-", _secs(s.planned_s), _secs(s.delivered_s))
                      for s in sessions]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _show(store: RecordStore, args: argparse.Namespace) -> int:
    s = store.get_session(args.session_id)
    if s is None:
        error(f"no session {args.session_id} in {store.path}")
        return EXIT_RECORDS
    _print_session(s)
    return EXIT_OK


def _print_session(s: SessionRow) -> None:
    fields: list[tuple[str, Any]] = [
        ("session", s.id), ("profile", s.profile), ("port", s.port),
        ("identity", _compact(s.identity)), ("operator", s.operator),
        ("patient", s.patient or "-"), ("status", s.status), ("outcome", s.outcome or "-"),
        ("reason", s.reason or "-"), ("stop source", s.stop_source or "-"),
        ("profile file", f"{s.profile_path} (sha256 {s.profile_sha256})"
         if s.profile_path else "-"),
        ("planned", _secs(s.planned_s)), ("delivered", _secs(s.delivered_s)),
        ("device elapsed", _secs(s.device_elapsed_s)),
        ("started", s.started_at), ("ended", s.ended_at or "-"),
        ("prescription", _compact(s.prescription)),
        ("dose", "-" if s.dose is None else _compact(s.dose))]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name.ljust(width)}  {value}")
    print(f"\nevents ({len(s.events)})")
    kind_width = max((len(e.kind) for e in s.events), default=0)
    for e in s.events:
        print(f"  {e.seq:>4}  +{e.t_s:9.3f}s  {e.at}  {e.kind.ljust(kind_width)}  "
              f"{_compact(e.detail)}")


def _export(store: RecordStore, args: argparse.Namespace) -> int:
    if args.patient is not None and args.fmt == "json":
        text = export_patient_json(store, args.patient)
    else:
        text = store.export(args.fmt, patient=args.patient)
    if args.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(args.out).write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        error(f"cannot write {args.out}: {exc.strerror or exc}")
        return EXIT_RECORDS
    return EXIT_OK


def _verify(store: RecordStore, args: argparse.Namespace) -> int:
    result = store.verify_audit(expect_head=args.expect_head)
    print(f"chain head: {result.entries} entries, sha256 {result.head_hash}")
    if result.ok:
        print(f"audit trail intact: {result.entries} entries, every record matches its entry")
        return EXIT_OK
    if result.broken_id is not None:
        error(f"audit trail broken at entry {result.broken_id}: {result.reason} "
              f"({result.entries} entries before it are intact)")
    else:
        error(f"records do not match the audit trail: {result.reason}")
    return EXIT_RECORDS


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
