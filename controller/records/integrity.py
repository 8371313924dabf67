"""Tamper evidence for the records rows: content hashes in the audit chain, and their check.

Every write of a record row (a session opened, identified, closed or marked interrupted; an event;
a batch of telemetry; a device registered, pinned or removed; a booking made or changed; a
calibration; a clinical note) appends, in the same transaction, one audit entry whose detail
holds ``rows``: a list of references ``{"table", "key", "sha256"}`` to the rows it wrote, each
with the SHA-256 of the row's canonical JSON (every column, as stored, keys sorted). A telemetry
batch is one reference ``{"table": "samples", "key": "<entry id>", "rows": n, "sha256": ...}``:
its rows carry the entry's id in their ``batch`` column and are hashed as a sorted list, so their
order on disk (which VACUUM may change) does not matter.

A database that already held rows when it was upgraded gets one ``records.baseline`` entry at the
upgrade: the hashes of every row then (events and telemetry grouped per session), so those rows
are checked too.

`verify` walks the chain, then compares every row with the latest entry that names it: a row with
no entry, a row that differs from its entry, and an entry whose row is gone are each a failure.
Rows are read in one snapshot; a whole chain rewritten from the first entry is only caught by
comparing the head with a copy kept elsewhere (docs/records.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from controller.records.sql import Connection, Row

GENESIS_HASH = "0" * 64
BASELINE_ACTION = "records.baseline"
# Tables whose rows are keyed one by one; events and samples are handled apart.
KEYED_TABLES = ("sessions", "calibrations", "devices", "bookings", "users", "session_notes")
_KEY_SQL = {"sessions": ("id", "SELECT * FROM sessions"),
            "calibrations": ("id", "SELECT * FROM calibrations"),
            "devices": ("name", "SELECT * FROM devices"),
            "bookings": ("id", "SELECT * FROM bookings"),
            "users": ("name", "SELECT * FROM users"),
            "session_notes": ("id", "SELECT * FROM session_notes")}
# The columns of a telemetry row, as hashed: PostgreSQL's table also has `rowid` (insertion
# order, built into SQLite), which is not part of the record.
SAMPLE_COLUMNS = "session_id, t_s, data, delivered_s, dose, batch"
_ONE_SQL = {"sessions": "SELECT * FROM sessions WHERE id = ?",
            "calibrations": "SELECT * FROM calibrations WHERE id = ?",
            "devices": "SELECT * FROM devices WHERE name = ?",
            "bookings": "SELECT * FROM bookings WHERE id = ?",
            "users": "SELECT * FROM users WHERE name = ?",
            "session_notes": "SELECT * FROM session_notes WHERE id = ?"}


def dumps(value: Any) -> str:
    """The one canonical JSON form (also the records' storage form)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def audit_hash(prev_hash: str, entry_id: int, at: str, actor: str, action: str,
               subject: str, detail: str) -> str:
    content = dumps({"id": entry_id, "at": at, "actor": actor, "action": action,
                     "subject": subject, "detail": detail})
    return hashlib.sha256((prev_hash + content).encode()).hexdigest()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _content(conn: Connection, table: str, row: Row) -> dict[str, Any]:
    content = dict(row)
    if table == "bookings":  # a booking's devices are part of it
        content["devices"] = [list(d) for d in conn.execute(
            "SELECT position, role, device FROM booking_devices WHERE booking_id = ?"
            " ORDER BY position", (row["id"],))]
    return content


def row_hash(conn: Connection, table: str, row: Row) -> str:
    return _sha(dumps(_content(conn, table, row)))


def group_hash(rows: Iterable[Row]) -> tuple[int, str]:
    """(count, hash) of rows whose order does not matter: their canonical texts, sorted."""
    texts = sorted(dumps(dict(r)) for r in rows)
    return len(texts), _sha(dumps(texts))


def ref(conn: Connection, table: str, key: str | int) -> dict[str, Any]:
    """The audit reference of one keyed row (sessions, calibrations, devices, bookings)."""
    row = conn.execute(_ONE_SQL[table], (key,)).fetchone()
    return {"table": table, "key": str(key), "sha256": row_hash(conn, table, row)}


def event_ref(conn: Connection, session_id: str, seq: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM events WHERE session_id = ? AND seq = ?",
                       (session_id, seq)).fetchone()
    return {"table": "events", "key": f"{session_id}/{seq}",
            "sha256": _sha(dumps(dict(row)))}


def batch_ref(conn: Connection, entry_id: int) -> dict[str, Any]:
    count, digest = group_hash(conn.execute(f"SELECT {SAMPLE_COLUMNS} FROM samples WHERE batch = ?",
                                            (entry_id,)))
    return {"table": "samples", "key": str(entry_id), "rows": count, "sha256": digest}


def _per_session(rows: Iterable[Row]) -> Iterator[tuple[str, list[Row]]]:
    """Rows ordered by session_id, grouped by it."""
    current: str | None = None
    group: list[Row] = []
    for r in rows:
        if r["session_id"] != current:
            if current is not None:
                yield current, group
            current, group = r["session_id"], []
        group.append(r)
    if current is not None:
        yield current, group


def baseline(conn: Connection) -> dict[str, Any] | None:
    """Hashes of every row now (the detail of a baseline entry), or None when there are none."""
    out: dict[str, Any] = {}
    for table in KEYED_TABLES:
        key, sql = _KEY_SQL[table]
        out[table] = {str(r[key]): row_hash(conn, table, r) for r in conn.execute(sql)}
    out["events"] = {}
    for sid, rows in _per_session(conn.execute(
            "SELECT * FROM events ORDER BY session_id, seq")):
        count, digest = group_hash(rows)
        out["events"][sid] = {"max_seq": max(int(r["seq"]) for r in rows), "rows": count,
                              "sha256": digest}
    out["samples"] = {}
    for sid, rows in _per_session(conn.execute(
            f"SELECT {SAMPLE_COLUMNS} FROM samples ORDER BY session_id")):
        count, digest = group_hash(rows)
        out["samples"][sid] = {"rows": count, "sha256": digest}
    if not any(out.values()):
        return None
    return out


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    """Entries in the chain (those before the break when it is broken)."""
    broken_id: int | None = None
    """First audit entry id where the chain itself breaks (None for a row problem)."""
    reason: str = ""
    head_hash: str = GENESIS_HASH
    """Hash of the last entry: anchor it elsewhere to detect a chain rewritten in full."""
    table: str | None = None
    """The table of the first row problem, if any."""
    key: str | None = None
    """That row's key (session id, event "SESSION/SEQ", device name, booking or calibration id,
    or the audit entry id of a telemetry batch)."""


@dataclass
class _Expected:
    """What the chain says the rows are: the latest reference per row."""

    keyed: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    events: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    events_base: dict[str, tuple[int, int, str, int]] = field(default_factory=dict)
    batches: dict[int, tuple[int, str]] = field(default_factory=dict)
    samples_base: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def take(self, entry_id: int, action: str, detail: Mapping[str, Any]) -> None:
        for r in detail.get("rows", ()):
            table, key, digest = r["table"], str(r["key"]), str(r["sha256"])
            if table == "samples":
                self.batches[int(key)] = (int(r["rows"]), digest)
            elif table == "events":
                sid, _, seq = key.rpartition("/")
                self.events[(sid, int(seq))] = (digest, entry_id)
            else:
                self.keyed[(table, key)] = (digest, entry_id)
        if action != BASELINE_ACTION:
            return
        # A baseline covers every row there was: the per-row references before it are spent.
        self.events.clear()
        self.events_base.clear()
        self.batches.clear()
        self.samples_base.clear()
        for table in KEYED_TABLES:
            for key, digest in detail.get(table, {}).items():
                self.keyed[(table, key)] = (digest, entry_id)
        for sid, g in detail.get("events", {}).items():
            self.events_base[sid] = (int(g["max_seq"]), int(g["rows"]), g["sha256"], entry_id)
        for sid, g in detail.get("samples", {}).items():
            self.samples_base[sid] = (entry_id, int(g["rows"]), g["sha256"])


class _Problem(Exception):
    def __init__(self, table: str, key: str, reason: str) -> None:
        super().__init__(reason)
        self.table, self.key = table, key


def verify(conn: Connection, expect_head: str | None = None) -> VerifyResult:
    """Check the chain and every audited row against it, in one read snapshot (`conn`).

    `expect_head`: a head written down earlier; it must still be the hash of an entry of the
    chain (the chain only grows), else the chain was rewritten or cut since."""
    rows = conn.execute("SELECT * FROM audit ORDER BY id").fetchall()
    seq = conn.execute("SELECT seq FROM audit_high").fetchone()
    expected = _Expected()
    prev, last_id = GENESIS_HASH, 0
    want = None if expect_head is None else expect_head.lower()
    head_found = want == GENESIS_HASH
    for count, r in enumerate(rows):
        entry_id = int(r["id"])
        problem = ""
        if r["prev_hash"] != prev:
            gap = (f" (entries {last_id + 1}..{entry_id - 1} are missing)"
                   if entry_id > last_id + 1 else "")
            problem = ("it does not link to the entry before it: an entry was deleted, "
                       f"inserted, moved or changed{gap}")
        elif (digest := audit_hash(prev, entry_id, r["at"], r["actor"], r["action"],
                                   r["subject"], r["detail"])) != r["hash"]:
            problem = "its content does not match its hash: it was edited or moved"
        if problem:
            return VerifyResult(False, count, entry_id, problem, prev)
        try:
            detail = json.loads(r["detail"])
            if isinstance(detail, dict):
                expected.take(entry_id, r["action"], detail)
        except (ValueError, KeyError, TypeError) as exc:
            return VerifyResult(False, count, entry_id,
                                f"its row references cannot be read ({exc})", prev)
        prev, last_id = digest, entry_id
        head_found = head_found or digest == want
    entries = len(rows)
    highest = 0 if seq is None else int(seq[0])
    if highest > last_id:
        return VerifyResult(False, entries, last_id + 1,
                            f"entries {last_id + 1}..{highest} are missing at the end",
                            prev)
    try:
        _check_keyed(conn, expected)
        _check_events(conn, expected)
        _check_samples(conn, expected)
    except _Problem as p:
        return VerifyResult(False, entries, None, str(p), prev, p.table, p.key)
    if want is not None and not head_found:
        return VerifyResult(False, entries, None,
                            f"the chain head {want} written down earlier is not in the chain "
                            "(any more): the chain was rewritten or cut since then", prev)
    return VerifyResult(True, entries, None, "", prev)


_UNAUDITED = ("has no audit entry: it was written outside modctl, or its entry was removed "
              "(an emptied or shortened audit trail)")


def _check_keyed(conn: Connection, expected: _Expected) -> None:
    for table in KEYED_TABLES:
        key_col, sql = _KEY_SQL[table]
        seen: set[str] = set()
        for r in conn.execute(f"{sql} ORDER BY {key_col}"):
            key = str(r[key_col])
            seen.add(key)
            want = expected.keyed.get((table, key))
            if want is None:
                raise _Problem(table, key, f"{table} row {key} {_UNAUDITED}")
            if row_hash(conn, table, r) != want[0]:
                raise _Problem(table, key, f"{table} row {key} was changed after audit entry "
                                           f"{want[1]} recorded it")
        for (t, key), (_, entry_id) in sorted(expected.keyed.items()):
            if t == table and key not in seen:
                raise _Problem(table, key, f"{table} row {key}, recorded by audit entry "
                                           f"{entry_id}, is gone: it was deleted")


def _check_events(conn: Connection, expected: _Expected) -> None:
    seen: set[tuple[str, int]] = set()
    sessions_seen: set[str] = set()
    for sid, rows in _per_session(conn.execute(
            "SELECT * FROM events ORDER BY session_id, seq")):
        sessions_seen.add(sid)
        base = expected.events_base.get(sid)
        old = [r for r in rows if base is not None and int(r["seq"]) <= base[0]]
        if base is not None and group_hash(old) != (base[1], base[2]):
            raise _Problem("events", sid, f"events of session {sid} (seq 1..{base[0]}) were "
                                          f"changed, added or deleted after the baseline "
                                          f"audit entry {base[3]}")
        for r in rows[len(old):]:
            key = (sid, int(r["seq"]))
            seen.add(key)
            want = expected.events.get(key)
            name = f"events row {sid}/{key[1]}"
            if want is None:
                raise _Problem("events", f"{sid}/{key[1]}", f"{name} {_UNAUDITED}")
            if _sha(dumps(dict(r))) != want[0]:
                raise _Problem("events", f"{sid}/{key[1]}",
                               f"{name} was changed after audit entry {want[1]} recorded it")
    for sid, base in sorted(expected.events_base.items()):
        if sid not in sessions_seen and base[1]:
            raise _Problem("events", sid, f"the events of session {sid}, recorded by the "
                                          f"baseline audit entry {base[3]}, are gone")
    for (sid, seq), (_, entry_id) in sorted(expected.events.items()):
        base = expected.events_base.get(sid)
        if (sid, seq) not in seen and (base is None or seq > base[0]):
            raise _Problem("events", f"{sid}/{seq}", f"events row {sid}/{seq}, recorded by "
                                                     f"audit entry {entry_id}, is gone: it "
                                                     "was deleted")


def _check_samples(conn: Connection, expected: _Expected) -> None:
    def in_base(r: Row) -> bool:
        base = expected.samples_base.get(r["session_id"])
        return base is not None and (r["batch"] is None or int(r["batch"]) < base[0])

    based: set[str] = set()
    for sid, rows in _per_session(conn.execute(
            f"SELECT {SAMPLE_COLUMNS} FROM samples ORDER BY session_id")):
        base = expected.samples_base.get(sid)
        if base is not None:
            based.add(sid)
            if group_hash(r for r in rows if in_base(r)) != (base[1], base[2]):
                raise _Problem("samples", sid, f"telemetry of session {sid} was changed, "
                                               "added or deleted after the baseline audit "
                                               f"entry {base[0]}")
        for r in rows:
            if not in_base(r) and (r["batch"] is None
                                   or int(r["batch"]) not in expected.batches):
                raise _Problem("samples", sid, f"telemetry of session {sid} (t = {r['t_s']} s) "
                                               f"{_UNAUDITED}")
    for sid, (entry_id, count, _) in sorted(expected.samples_base.items()):
        if sid not in based and count:
            raise _Problem("samples", sid, f"the telemetry of session {sid}, recorded by the "
                                           f"baseline audit entry {entry_id}, is gone")
    found: dict[int, tuple[int, str]] = {}
    batch_rows = conn.execute(f"SELECT {SAMPLE_COLUMNS} FROM samples WHERE batch IS NOT NULL"
                              " ORDER BY batch")
    current: int | None = None
    members: list[Row] = []
    for r in chain(batch_rows, [None]):
        if r is None or int(r["batch"]) != current:
            if current is not None:
                found[current] = group_hash(members)
            if r is None:
                break
            current, members = int(r["batch"]), []
        if not in_base(r):
            members.append(r)
    for batch, (count, digest) in sorted(expected.batches.items()):
        got = found.get(batch, (0, group_hash(())[1]))
        if got == (count, digest):
            continue
        what = "is gone: it was deleted" if got[0] == 0 else "was changed after it was recorded"
        raise _Problem("samples", str(batch),
                       f"the telemetry batch of audit entry {batch} ({count} samples) {what}")
