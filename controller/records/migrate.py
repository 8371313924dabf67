"""`modctl records migrate --from SRC --to URL`: move a clinic's records from one database to
another (the SQLite file of one PC to the PostgreSQL database several rooms share), with the
audit chain intact.

Every row is copied as stored (ids, time stamps as text, every column the row hashes cover), so
the copy's chain is the source's chain, entry for entry, and `records verify` on the copy gives
the source's head hash. The order of the steps is what makes it safe:

1. the source is opened (an older schema is upgraded first, sealed by a baseline entry, as any
   `modctl` command does) and read in ONE snapshot: its chain is verified in that snapshot and
   exactly that snapshot is copied, so a tampered source is refused before anything is written;
2. the target is opened (its tables made) and must hold no records at all: a migration never
   merges two databases;
3. everything is copied in ONE target transaction, which also verifies the copy (chain, every
   row, head hash and counts equal to the source's) before it commits: a copy that does not
   match is rolled back whole, and the target is left empty.

Not copied: `rooms` (which services run now) and `spool_replayed` (a local spool's ledger):
operational state of the source's own processes, not records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, islice
from pathlib import Path
from typing import Any

from controller.records import integrity
from controller.records.database import Database, RecordsError
from controller.records.sql import Connection, Row
from controller.records.store import RecordStore
from controller.records.target import DbTarget, PgUrl, as_target

# Tables copied, in an order their foreign keys and triggers accept (PostgreSQL fills
# booking_devices' window from its booking), with the order rows are read in: samples in
# insertion order (SQLite's rowid, PostgreSQL's `rowid` column), everything else by key.
COPY_ORDER: tuple[tuple[str, str], ...] = (
    ("users", "name"),
    ("devices", "name"),
    ("sessions", "id"),
    ("events", "session_id, seq"),
    ("samples", "rowid"),
    ("bookings", "id"),
    ("booking_devices", "booking_id, position"),
    ("calibrations", "id"),
    ("session_notes", "id"),
    ("audit", "id"),
)
# Columns a database fills by itself: PostgreSQL's samples.rowid (an identity) and a booking
# device's window and active flag (triggers). Never copied; no row hash covers them.
GENERATED: dict[str, frozenset[str]] = {
    "samples": frozenset({"rowid"}),
    "booking_devices": frozenset({"during", "active"}),
}
# PostgreSQL identity columns given explicit ids by the copy: their sequences are moved past
# the copied ids, so the next booking, calibration or note gets the next id.
PG_IDENTITIES: tuple[tuple[str, str], ...] = (
    ("bookings", "id"), ("calibrations", "id"), ("session_notes", "id"))
# Rows sent to the target per statement batch (and a progress line each).
CHUNK_ROWS = 5000
SQLITE_SCHEME = "sqlite://"
# Booking statuses whose devices PostgreSQL's exclusion constraint holds (not "done").
PG_HOLDING = ("booked", "started")

Progress = Callable[[str], None]


class MigrationError(RecordsError):
    """A migration refused or undone; the message names the database and the problem."""


@dataclass(frozen=True)
class MigrationReport:
    source: str
    target: str
    counts: dict[str, int]
    """Rows copied per table (equal in source and target)."""
    entries: int
    """Audit entries in the chain (source and target)."""
    head_hash: str
    """The chain head of both: write it down (`records verify --expect-head`)."""
    open_sessions: int
    """Sessions copied still open (their controller is gone: the target's next controller
    marks them interrupted, as it would have on the source)."""
    seconds: float

    def lines(self) -> list[str]:
        """The report for the terminal."""
        rows = ", ".join(f"{n} {table}" for table, n in self.counts.items())
        out = [f"migrated {self.source} -> {self.target} in {self.seconds:.1f} s",
               f"copied: {rows}",
               f"chain head: {self.entries} entries, sha256 {self.head_hash} "
               "(verified on the target, equal to the source's)"]
        if self.open_sessions:
            out.append(f"{self.open_sessions} session(s) were left open by a controller that "
                       "stopped: the next controller on the target marks them interrupted")
        return out


def location(value: str | os.PathLike[str]) -> DbTarget:
    """A database location from the command line: a ``postgresql://`` URL, a
    ``sqlite:///path/to/file`` URL (three slashes before an absolute path), or a file path."""
    if isinstance(value, str) and value.startswith(SQLITE_SCHEME):
        path = value[len(SQLITE_SCHEME):]
        if not path:
            raise ValueError(f"{value!r}: no file after {SQLITE_SCHEME} "
                             f"(write {SQLITE_SCHEME}/path/to/records.sqlite3)")
        return Path(path).expanduser()
    return as_target(value)


def migrate(source: DbTarget | str, target: DbTarget | str, *,
            progress: Progress | None = None) -> MigrationReport:
    """Copy every record of `source` into the empty database `target` (see the module's
    docstring). Raises MigrationError (or RecordsError: a database that cannot be opened)
    naming the database and the problem; the target then holds no record (a refused source
    is found before the target is even opened). ValueError: a malformed `sqlite://` location."""
    src_at, dst_at = location(source), location(target)
    say: Progress = progress or (lambda _text: None)
    if _same(src_at, dst_at):
        raise MigrationError(dst_at, "it is the source itself: migrate into a new database")
    started = time.monotonic()
    say(f"opening {src_at}")
    with RecordStore(src_at, create=False) as src_store, \
            src_store._db.read("read the records to migrate") as src:
        say("verifying the source's audit chain")
        checked = integrity.verify(src)
        if not checked.ok:
            where = "" if checked.broken_id is None else f"entry {checked.broken_id}: "
            raise MigrationError(src_at, f"its audit trail does not verify ({where}"
                                         f"{checked.reason}); nothing was copied. Find out "
                                         "what changed first (modctl records verify)")
        open_sessions = _refuse_running(src_store, src, src_at)
        pg = isinstance(dst_at, PgUrl)
        if pg:
            _refuse_overlaps(src, src_at)
        counts = _counts(src)
        say(f"source verified: {checked.entries} audit entries, head {checked.head_hash}")
        say(f"opening {dst_at}")
        with RecordStore(dst_at) as dst_store, \
                dst_store._db.write("migrate the records") as dst:
            _refuse_used(dst, dst_at)
            copied = {table: _copy(src, dst, table, order, counts[table], dst_store._db, say)
                      for table, order in COPY_ORDER}
            _move_counters(src, dst, pg)
            say("verifying the copy")
            _check_copy(dst, dst_at, checked, counts, copied)
    seconds = time.monotonic() - started
    say(f"done in {seconds:.1f} s")
    return MigrationReport(source=str(src_at), target=str(dst_at), counts=copied,
                           entries=checked.entries, head_hash=checked.head_hash,
                           open_sessions=open_sessions, seconds=seconds)


# -- the checks -------------------------------------------------------------------------------

def _same(a: DbTarget, b: DbTarget) -> bool:
    if isinstance(a, Path) and isinstance(b, Path):
        return a.resolve() == b.resolve()
    return isinstance(a, PgUrl) and isinstance(b, PgUrl) and a.raw == b.raw


def _refuse_running(store: RecordStore, src: Connection, at: DbTarget) -> int:
    """Refuse while a controller records a session on the source (its later writes would be
    lost); returns how many open sessions were left by controllers that are gone."""
    open_rows = src.execute("SELECT id, owner FROM sessions WHERE status = 'open'"
                            " ORDER BY id").fetchall()
    for row in open_rows:
        if store._db.owner_alive(row["owner"]):
            raise MigrationError(at, f"session {row['id']} is being recorded on it now: stop "
                                     "every modctl using it, then migrate")
    return len(open_rows)


def _counts(conn: Connection) -> dict[str, int]:
    return {table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            for table, _ in COPY_ORDER}


def _refuse_used(dst: Connection, at: DbTarget) -> None:
    """The target must never have held a record (checked under its write lock)."""
    held = {t: n for t, n in _counts(dst).items() if n}
    high = dst.execute("SELECT seq FROM audit_high").fetchone()
    if held or (high is not None and int(high[0])):
        what = ", ".join(f"{n} {table}" for table, n in held.items()) or \
            f"an audit trail once {int(high[0])} entries long"
        raise MigrationError(at, f"it already holds records ({what}): records migrate copies "
                                 "into an empty database only and never merges two; give a "
                                 "new database")


def _moment(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


def _refuse_overlaps(src: Connection, at: DbTarget) -> None:
    """PostgreSQL refuses two active bookings of one device for overlapping times (its
    exclusion constraint); the SQLite file checked that in code, so older files may hold such
    pairs. Name them all, rather than the database's first refusal."""
    held: dict[str, list[tuple[datetime, datetime, int, str]]] = {}
    for r in src.execute(
            "SELECT d.device, b.id, b.starts_at, b.ends_at FROM booking_devices d"
            " JOIN bookings b ON b.id = d.booking_id"
            f" WHERE b.status IN ({', '.join('?' * len(PG_HOLDING))})", PG_HOLDING):
        start, end = _moment(r["starts_at"]), _moment(r["ends_at"])
        if start is not None and end is not None:  # else the database says what it cannot read
            held.setdefault(r["device"], []).append((start, end, int(r["id"]), r["starts_at"]))
    clashes: list[str] = []
    for device, windows in sorted(held.items()):
        windows.sort()
        last_end, last_id = windows[0][1], windows[0][2]
        for start, end, booking, shown in windows[1:]:
            if start < last_end:  # half-open windows, as PostgreSQL's tstzrange '[)'
                clashes.append(f"bookings {last_id} and {booking} both hold device "
                               f"{device!r} at {shown}")
            if end > last_end:
                last_end, last_id = end, booking
    if clashes:
        raise MigrationError(at, "PostgreSQL refuses overlapping active bookings of one device, "
                                 f"and this database has {len(clashes)}: "
                                 + "; ".join(clashes) + ". Cancel one of each pair "
                                 "(modctl bookings cancel) on the source, then migrate")


def _check_copy(dst: Connection, at: DbTarget, source: integrity.VerifyResult,
                counts: dict[str, int], copied: dict[str, int]) -> None:
    """Verify the copy inside its own transaction: any difference rolls it back whole."""
    result = integrity.verify(dst)
    target_counts = _counts(dst)
    problem = ""
    if not result.ok:
        problem = f"the copy does not verify: {result.reason}"
    elif (result.entries, result.head_hash) != (source.entries, source.head_hash):
        problem = (f"the copy's chain head ({result.entries} entries, {result.head_hash}) "
                   f"differs from the source's ({source.entries}, {source.head_hash})")
    elif not counts == copied == target_counts:
        diff = [t for t in counts if len({counts[t], copied[t], target_counts[t]}) > 1]
        problem = f"row counts differ from the source's in {', '.join(diff)}"
    if problem:
        raise MigrationError(at, f"{problem}; nothing was kept")


# -- the copy ---------------------------------------------------------------------------------

def _chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def _copy(src: Connection, dst: Connection, table: str, order: str, total: int,
          db: Database, say: Progress) -> int:
    """Copy one table row for row (rows stream from the source in chunks)."""
    rows = iter(src.execute(f"SELECT * FROM {table} ORDER BY {order}"))
    first = next(rows, None)
    if first is None:
        return 0
    skip = GENERATED.get(table, frozenset())
    columns = [c for c in first.keys() if c not in skip]  # noqa: SIM118 - a row iterates values
    names = ", ".join(f'"{c}"' for c in columns)  # quoted: "position", "before", "after"
    sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
    done = 0
    for chunk in _chunks(chain([first], rows), CHUNK_ROWS):
        values: list[tuple[Any, ...]] = [tuple(r[c] for c in columns) for r in chunk]
        try:
            dst.executemany(sql, values)
        except db.backend.errors as exc:  # the database's refusal, with the table it hit
            raise MigrationError(db.path, f"cannot copy {table} (rows {done + 1}.."
                                          f"{done + len(values)}): {db.backend.plain(exc)}; "
                                          "nothing was kept") from exc
        done += len(values)
        say(f"copied {table}: {done}/{total}")
    return done


def _move_counters(src: Connection, dst: Connection, pg: bool) -> None:
    """The chain's highest id as the source knew it; PostgreSQL's identities past the copied
    ids (SQLite's AUTOINCREMENT follows explicit ids by itself)."""
    seqs = [row[0] for row in (src.execute("SELECT seq FROM audit_high").fetchone(),
                               dst.execute("SELECT seq FROM audit_high").fetchone()) if row]
    # never lowered: SQLite's trigger refuses that (the copy's inserts already raised it)
    dst.execute("UPDATE audit_high SET seq = ?", (max([0, *map(int, seqs)]),))
    if not pg:
        return
    for table, column in PG_IDENTITIES:
        top = dst.execute(f"SELECT MAX({column}) FROM {table}").fetchone()[0]
        dst.execute("SELECT setval(pg_get_serial_sequence(?, ?), ?, ?)",
                    (table, column, 1 if top is None else int(top), top is not None))
