"""`modctl records list | show | export | verify | note | patient | report`: the session records
database (`patient` and `report` live in `history_cmd`). Every command only reads, except
`note`, which adds a clinician's note to a session (audited)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from controller.cli import history_cmd
from controller.cli.common import (
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    UsageError,
    error,
)
from controller.cli.table import print_table
from controller.clinic.clock import TimeError, parse_day
from controller.records.notes_table import NOTE_FIELDS, PAIN_MAX, PAIN_MIN, NoteRow
from controller.records.store import (
    DB_ENV,
    NoteError,
    RecordsError,
    RecordStore,
    SessionRow,
    default_db_path,
)

# The clinical wording (clinical, dose_text), the exports and the roles are imported by the
# commands that use them: `records list` starts without them (issue 15).

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
                         description="Show one session (a unique id prefix is enough) in "
                                     "clinical words, its notes, then its events.")
    show.add_argument("session_id", metavar="ID",
                      help="a session id, or a unique prefix of one (modctl records list)")
    show.add_argument("--json", action="store_true",
                      help="print the session record, its clinical summary and notes as JSON")
    show.set_defaults(run=_command(_show))
    exp = rs.add_parser("export", parents=[db], help="sessions as JSON, CSV or FHIR R4",
                        description="Export sessions, oldest first: JSON with their events, "
                                    "CSV with one row per session and the dose figures as "
                                    "columns, or a FHIR R4 Bundle (Procedure, Device and "
                                    "Observation resources; docs/records.md).")
    exp.add_argument("--format", choices=("json", "csv", "fhir"), default="json", dest="fmt",
                     help="json (default): sessions with their events; csv: one row per "
                          "session; fhir: a FHIR R4 Bundle")
    exp.add_argument("--patient", metavar="ID",
                     help="only this patient's sessions; JSON then also holds the patient's "
                          "history with totals per modality")
    exp.add_argument("--since", metavar="YYYY-MM-DD", type=_since_day,
                     help="only sessions started on or after this day (the clinic's local "
                          "time)")
    exp.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    exp.set_defaults(run=_command(_export))
    note = rs.add_parser(
        "note", parents=[db], help="add a clinical note to a session",
        description="Record a clinician's note on a session (a unique id prefix is enough): "
                    "body site, skin check before and after, pain score before and after "
                    f"({PAIN_MIN}-{PAIN_MAX}), free text. Notes are never changed: a correction "
                    "is a new note. Audited; needs the clinician role when roles are "
                    "enforced.")
    note.add_argument("session_id", metavar="ID",
                      help="the session the note is about (id or unique prefix)")
    note.add_argument("--body-site", metavar="TEXT", help="where the treatment was applied")
    note.add_argument("--skin-before", metavar="TEXT", help="skin check before the treatment")
    note.add_argument("--skin-after", metavar="TEXT", help="skin check after the treatment")
    note.add_argument("--pain-before", metavar="N", type=_pain_score,
                      help=f"pain score before ({PAIN_MIN}-{PAIN_MAX})")
    note.add_argument("--pain-after", metavar="N", type=_pain_score,
                      help=f"pain score after ({PAIN_MIN}-{PAIN_MAX})")
    note.add_argument("--text", metavar="TEXT", default="", help="free text")
    note.add_argument("--operator", default="", metavar="NAME",
                      help="who records the note (default: the roles file's default_operator, "
                           "else $USER)")
    note.set_defaults(run=_command(_note))
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
    mig = rs.add_parser(
        "migrate", help="move a clinic's records to another database (SQLite to PostgreSQL)",
        description="Copy every record (sessions, events, telemetry, devices, bookings, "
                    "calibrations, accounts, notes and the whole audit chain) from one "
                    "database into an empty one, typically an SQLite file into the "
                    "PostgreSQL database several rooms will share. The source chain is "
                    "verified first, the copy is verified before it is committed (same "
                    "chain head), and a target that already holds records is refused. "
                    "Stop every controller using the source first.")
    mig.add_argument("--from", dest="source", required=True, metavar="DB",
                     help="the database to copy: a file path, sqlite:///path, or a "
                          "postgresql:// URL")
    mig.add_argument("--to", dest="target", required=True, metavar="DB",
                     help="the empty database to fill: a postgresql:// URL (or a new file)")
    mig.set_defaults(run=_migrate)
    history_cmd.register(rs, [db], _command)


def _migrate(args: argparse.Namespace) -> int:
    from controller.records.migrate import migrate
    try:
        report = migrate(args.source, args.target,
                         progress=lambda text: print(text, file=sys.stderr, flush=True))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except RecordsError as exc:
        error(str(exc))
        return EXIT_RECORDS
    for line in report.lines():
        print(line)
    return EXIT_OK


def _head_hash(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a chain head (64 hexadecimal digits, "
                                         "as printed by records verify)")
    return text.lower()


def _pain_score(text: str) -> int:
    # ASCII digits only: int() also takes other scripts' digits.
    if not (text.isascii() and text.isdigit()) or not PAIN_MIN <= int(text) <= PAIN_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pain score: give a whole number "
                                         f"from {PAIN_MIN} to {PAIN_MAX}")
    return int(text)


def _since_day(text: str) -> date:
    try:
        return parse_day(text, "--since")
    except TimeError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--since ")) from None


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
    from controller.records.clinical import duration_text, local_time
    sessions = store.list_sessions(args.limit, patient=args.patient, profile=args.profile)
    if not sessions:
        print("no sessions")
        return EXIT_OK
    print_table(("ID", "STARTED", "PROFILE", "PATIENT", "STATUS", "OUTCOME", "PLANNED",
                 "DELIVERED"),
                [(s.id, local_time(s.started_at), s.profile, s.patient, s.status, s.outcome,
                  duration_text(s.planned_s), duration_text(s.delivered_s)) for s in sessions])
    return EXIT_OK


def _show(store: RecordStore, args: argparse.Namespace) -> int:
    s = store.get_session(args.session_id)
    if s is None:
        error(f"no session {args.session_id} in {store.path}")
        return EXIT_NOT_FOUND
    notes = store.notes(s.id)
    if args.json:
        print(json.dumps({"session": s.to_json(), "clinical": clinical_summary(s),
                          "notes": [n.to_json() for n in notes]}, indent=2,
                         ensure_ascii=False))
    else:
        _print_session(s, notes)
    return EXIT_OK


def clinical_summary(s: SessionRow) -> dict[str, Any]:
    """The session in clinical words (what `records show` prints first), for programs."""
    from controller.records.clinical import (
        delivered_text,
        device_info,
        local_time,
        outcome_sentence,
        prescription_summary,
        therapy_name,
    )
    from controller.records.dose_text import dose_lines, dose_meaning
    return {"patient": s.patient, "operator": s.operator, "therapy": therapy_name(
                s.prescription, s.dose),
            "started_at": s.started_at, "ended_at": s.ended_at,
            "started_local": local_time(s.started_at), "ended_local": local_time(s.ended_at),
            "device": device_info(s).to_json(), "device_serial": device_info(s).serial,
            "prescription": prescription_summary(s.prescription, s.planned_s),
            "outcome": outcome_sentence(s), "delivered": delivered_text(s),
            "dose": {d.key: {"label": d.label, "value": d.value, "unit": d.unit}
                     for d in dose_lines(s.prescription, s.dose)},
            "dose_meaning": dose_meaning(s.prescription, s.dose)}


def _print_session(s: SessionRow, notes: list[NoteRow]) -> None:
    from controller.records.clinical import (
        delivered_text,
        device_info,
        local_time,
        outcome_sentence,
        prescription_summary,
        stop_confirmation,
        therapy_name,
    )
    from controller.records.dose_text import dose_lines, dose_meaning
    _, confirmed = stop_confirmation(s)
    dose = "; ".join(f"{d.label} {d.text()}" for d in dose_lines(s.prescription, s.dose))
    fields: list[tuple[str, Any]] = [
        ("session", s.id), ("patient", s.patient or "-"),
        ("therapy", therapy_name(s.prescription, s.dose)),
        ("prescription", prescription_summary(s.prescription, s.planned_s)),
        ("device", f"{device_info(s).text()} (port {s.port})"), ("operator", s.operator),
        ("started", f"{local_time(s.started_at, seconds=True)} (UTC {s.started_at})"),
        ("ended", f"{local_time(s.ended_at, seconds=True)} (UTC {s.ended_at})"
         if s.ended_at else "-"),
        ("outcome", outcome_sentence(s)), ("stop confirmed", confirmed),
        ("delivered", delivered_text(s)), ("dose", dose or "none recorded"),
        ("", dose_meaning(s.prescription, s.dose)),
        ("record", f"{s.status}; profile {s.profile}"
         + (f", file {s.profile_path} (sha256 {s.profile_sha256})" if s.profile_path else "")),
        ("device elapsed", _secs(s.device_elapsed_s)),
        ("prescription record", _compact(s.prescription)),
        ("dose record", "-" if s.dose is None else _compact(s.dose))]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        if name or value:
            print(f"{name.ljust(width)}  {value}".rstrip())
    print(f"\nnotes ({len(notes)})")
    for n in notes:
        print(f"  {local_time(n.recorded_at)}  {n.actor}: {note_text(n)}")
    print(f"\nevents ({len(s.events)})")
    kind_width = max((len(e.kind) for e in s.events), default=0)
    for e in s.events:
        print(f"  {e.seq:>4}  +{e.t_s:9.3f}s  {e.at}  {e.kind.ljust(kind_width)}  "
              f"{_compact(e.detail)}")


def note_text(n: NoteRow) -> str:
    """One line: `left shoulder; skin before: intact; pain 6 → 3; tolerated well`."""
    parts = [n.body_site or ""]
    if n.skin_before or n.skin_after:
        parts.append(f"skin before: {n.skin_before or '-'}, after: {n.skin_after or '-'}")
    if n.pain_before is not None or n.pain_after is not None:
        parts.append(f"pain {'-' if n.pain_before is None else n.pain_before} → "
                     f"{'-' if n.pain_after is None else n.pain_after} (0-10)")
    parts.append(n.text.replace("\n", " / "))
    return "; ".join(p for p in parts if p)


def _note(store: RecordStore, args: argparse.Namespace) -> int:
    from controller.clinic.roles import RoleRefused, RolesError, load_roles
    try:
        operator = load_roles().require("clinician", args.operator, "record a clinical note")
    except (RoleRefused, RolesError) as exc:
        error(f"refused: {exc}")
        return EXIT_REJECTED
    session = store.get_session(args.session_id)
    if session is None:
        error(f"no session {args.session_id} in {store.path}")
        return EXIT_NOT_FOUND
    try:
        note = store.add_note(session.id, actor=operator, body_site=args.body_site,
                              skin_before=args.skin_before, skin_after=args.skin_after,
                              pain_before=args.pain_before, pain_after=args.pain_after,
                              text=args.text)
    except NoteError as exc:
        error(_as_option(str(exc)))
        return EXIT_USAGE
    print(f"note {note.id} recorded on session {session.id} by {operator}: {note_text(note)}")
    return EXIT_OK


def _as_option(message: str) -> str:
    """A note refusal naming its field as the command line spells it (`--pain-before: ...`)."""
    field, sep, rest = message.partition(": ")
    if sep and field in NOTE_FIELDS:
        return f"--{field.replace('_', '-')}: {rest}"
    return message


def _export(store: RecordStore, args: argparse.Namespace) -> int:
    from controller.clinic.roles import RolesError, load_roles
    from controller.records.export import export_sessions
    from controller.records.fhir import fhir_json
    from controller.records.history import patient_export_json
    sessions = store.sessions_oldest_first(args.patient)
    if args.since is not None:
        floor = datetime.combine(args.since, time()).astimezone().astimezone(UTC)
        sessions = [s for s in sessions if datetime.fromisoformat(s.started_at) >= floor]
    if args.fmt == "fhir":
        try:
            system = load_roles().clinic.patient_id_system
        except RolesError as exc:
            error(f"cannot read the clinic's patient id system: {exc}")
            return EXIT_RECORDS
        text = fhir_json(sessions, {s.id: store.notes(s.id) for s in sessions},
                         patient_system=system)
    elif args.patient is not None and args.fmt == "json":
        text = patient_export_json(args.patient, sessions)
    else:
        text = export_sessions(sessions, args.fmt)
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
