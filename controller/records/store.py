"""Session records: sessions, their events and telemetry, and a hash-chained audit trail.

All database access lives here, behind `RecordStore`, so a server database can replace the
embedded SQLite file later without touching callers.

Durability (docs/design.md §2.9): every `add_event` is its own committed transaction, in WAL
mode with ``synchronous=FULL``. NORMAL would survive a crash of the controller process but may
lose the last commits on a power cut or an OS crash; a treatment record must survive those too,
so each commit is fsynced. Telemetry is the one exception (see `add_sample`).

Threads: one SQLite connection per thread, made on first use. WAL lets readers work beside the
session worker without blocking it or being blocked. Writes in this process are serialised by one
lock and run as ``BEGIN IMMEDIATE`` transactions, which also makes the audit chain's
read-last-hash-then-append atomic across processes (they wait up to `BUSY_TIMEOUT_S`).

Registered devices, bookings and calibrations live in the same file; their queries are in
`controller.records.clinic_tables.ClinicRecords`, a mixin of `RecordStore`.

Tamper evidence (`controller.records.integrity`): every row write appends, in its own
transaction, an audit entry holding the SHA-256 of the rows it wrote, so `verify_audit` can find
rows changed, added or deleted behind modctl's back, not only edited audit entries.

Write failures (a full disk, an I/O error) reach `add_failure_listener` callbacks from whichever
thread hit them; telemetry that could not be written stays buffered, in order, and is retried.

Sessions left open are recognised as crashed by their owner lock: each store that opens a session
holds an flock on ``<db>.owners/<token>.lock``; the OS drops it when the process dies, so a second
controller running beside this one never has its live sessions marked interrupted.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from controller.records import integrity
from controller.records.clinic_tables import (
    CLINIC_IDENTITY_MIGRATION,
    CLINIC_MIGRATION,
    ClinicRecords,
)
from controller.records.csv_safe import LINE_END, safe_row
from controller.records.integrity import GENESIS_HASH, VerifyResult

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: every open session counts as crashed
    fcntl = None  # type: ignore[assignment]

DB_ENV = "MODCTL_DB"
DB_FILENAME = "records.sqlite3"
BUSY_TIMEOUT_S = 5.0
# Telemetry is batched: a crash loses at most this much of it (events are never batched).
SAMPLE_FLUSH_S = 1.0
SAMPLE_BATCH_MAX = 256
# Telemetry kept while writing fails (a full disk): some minutes of samples at the poll rates of
# the shipped profiles, so a short outage loses nothing, yet memory stays bounded. Past it a new
# sample is refused with RecordsError (the session has been told of the failure already).
SAMPLE_BUFFER_MAX = 4096
EVENT_KINDS = ("state", "command", "reply", "decision", "fault", "note")
SYSTEM_ACTOR = "modctl"

ExportFormat = Literal["json", "csv"]

# Migration hook: MIGRATIONS[n] takes schema version n to n + 1. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY, profile TEXT NOT NULL, port TEXT NOT NULL,
            identity TEXT NOT NULL, operator TEXT NOT NULL, patient TEXT,
            prescription TEXT NOT NULL, planned_s REAL NOT NULL, started_at TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('open', 'closed', 'interrupted')),
            outcome TEXT, reason TEXT, stop_source TEXT, delivered_s REAL, dose TEXT,
            ended_at TEXT, owner TEXT)""",
        "CREATE INDEX sessions_patient ON sessions (patient, started_at)",
        "CREATE INDEX sessions_status ON sessions (status)",
        """CREATE TABLE events (
            session_id TEXT NOT NULL REFERENCES sessions (id), seq INTEGER NOT NULL,
            t_s REAL NOT NULL, at TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL,
            delivered_s REAL, dose TEXT, PRIMARY KEY (session_id, seq)) WITHOUT ROWID""",
        """CREATE TABLE samples (
            session_id TEXT NOT NULL REFERENCES sessions (id), t_s REAL NOT NULL,
            data TEXT NOT NULL, delivered_s REAL, dose TEXT)""",
        "CREATE INDEX samples_session ON samples (session_id, t_s)",
        # AUTOINCREMENT keeps the highest id ever used in sqlite_sequence: a deleted tail shows.
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
            action TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
            BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
            BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
    ),
    CLINIC_MIGRATION,  # devices, bookings, calibrations (controller/records/clinic_tables.py)
    (  # 3: row hashes in the audit chain; profile hashes; device-reported elapsed time
        "ALTER TABLE sessions ADD COLUMN profile_path TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE sessions ADD COLUMN profile_sha256 TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE sessions ADD COLUMN device_elapsed_s REAL",
        # The audit entry that covers a telemetry row (NULL: written before schema 3).
        "ALTER TABLE samples ADD COLUMN batch INTEGER",
        "CREATE INDEX samples_batch ON samples (batch)",
        *CLINIC_IDENTITY_MIGRATION,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
FailureListener = Callable[["RecordsError"], None]
_log = logging.getLogger(__name__)

# sqlite messages → plain words for the operator.
_PLAIN = (
    ("not a database", "it is not a modctl records database, or it is damaged"),
    ("malformed", "it is damaged (malformed database image)"),
    ("readonly", "it is read-only: check the permissions of the file and its directory"),
    ("disk is full", "the disk is full"),
    ("unable to open", "it cannot be opened: directory missing or not writable"),
    ("locked", "another program holds it locked"),
)


class RecordsError(Exception):
    """The records database cannot be used; the message names the path and says why."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"records database {path}: {message}")
        self.path = path


@dataclass(frozen=True)
class SampleRow:
    """One telemetry sample: `t_s` seconds since the session began."""

    t_s: float
    data: dict[str, Any]
    delivered_s: float | None = None
    dose: dict[str, Any] | None = None


@dataclass(frozen=True)
class EventRow:
    seq: int
    t_s: float
    at: str
    kind: str
    detail: dict[str, Any]
    delivered_s: float | None = None
    dose: dict[str, Any] | None = None


@dataclass(frozen=True)
class SessionRow:
    id: str
    profile: str
    port: str
    identity: dict[str, Any]
    operator: str
    patient: str | None
    prescription: dict[str, Any]
    planned_s: float
    started_at: str
    status: str
    outcome: str | None
    reason: str | None
    stop_source: str | None
    delivered_s: float | None
    dose: dict[str, Any] | None
    ended_at: str | None
    events: tuple[EventRow, ...] = ()  # filled by get_session only
    profile_path: str = ""
    """The profile file the session ran on ('' for records from before schema 3)."""
    profile_sha256: str = ""
    device_elapsed_s: float | None = None
    """The device's own report of its output time, beside the host-measured `delivered_s`."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_db_path(explicit: str | os.PathLike[str] | None = None,
                    env: Mapping[str, str] | None = None) -> Path:
    """`--db` beats $MODCTL_DB beats $XDG_DATA_HOME/modctl beats ~/.local/share/modctl."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    if env.get(DB_ENV):
        return Path(env[DB_ENV]).expanduser()
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        return Path(xdg) / "modctl" / DB_FILENAME
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "share" / "modctl" / DB_FILENAME


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_session_id() -> str:
    """ULID: 48-bit millisecond wall time + 80 random bits, so ids sort by start time."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# default=str: an odd value in a detail must never cost the record of an event.
_dumps = integrity.dumps


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_audit_hash = integrity.audit_hash


class RecordStore(ClinicRecords):
    """The records database. Use as a context manager, or call `close()` once the other
    threads using it are done (it closes every thread's connection)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = True) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self._local = threading.local()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._conns_lock = threading.Lock()
        self._wlock = threading.Lock()
        self._samples: list[tuple[str, float, str, float | None, str | None]] = []
        # The batch taken out by the transaction under way (one at a time: the write lock).
        self._in_flight: list[tuple[str, float, str, float | None, str | None]] = []
        self._samples_lock = threading.Lock()
        self._listeners: list[FailureListener] = []
        self._listeners_lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._t0: dict[str, float] = {}
        self._token = uuid.uuid4().hex
        self._owner_file: IO[str] | None = None
        self._closed = False
        if not create and not self.path.exists():
            raise RecordsError(self.path, "no such file")
        with self._guard("open it"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mode = self._conn().execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RecordsError(self.path, f"WAL mode unavailable here (got {mode!r})")
        self._migrate()

    # -- connections and transactions ------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RecordsError(self.path, "the store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        # check_same_thread=False only so close() may close every thread's connection.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=FULL")
        with self._conns_lock:  # close the connections of threads that have ended
            for thread in [t for t in self._conns if not t.is_alive()]:
                self._conns.pop(thread).close()
            self._conns[threading.current_thread()] = conn
        self._local.conn = conn
        return conn

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            text = str(exc)
            plain = next((p for key, p in _PLAIN if key in text.lower()), text)
            raise RecordsError(self.path, f"cannot {action}: {plain}") from exc
        except OSError as exc:
            raise RecordsError(self.path, f"cannot {action}: {exc.strerror or exc}") from exc

    @contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction. When the database fails it (not a refusal by modctl's own
        checks), telemetry it had taken is put back and the failure listeners are told."""
        try:
            with self._guard(action), self._wlock:
                conn = self._conn()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    self._restore_in_flight()
                    raise
                finally:
                    self._in_flight = []
        except RecordsError as exc:
            if isinstance(exc.__cause__, (sqlite3.Error, OSError)):
                self._notify(exc)
            raise

    # -- write failures --------------------------------------------------------------------

    def add_failure_listener(self, callback: FailureListener) -> None:
        """Call `callback(error)` after every write the database fails, from the thread that
        hit it (the flush job, the session worker, ...), outside the write lock. A callback
        must be quick and must not write to this store; its exceptions are logged, not raised."""
        with self._listeners_lock:
            self._listeners.append(callback)

    def remove_failure_listener(self, callback: FailureListener) -> None:
        with self._listeners_lock, suppress(ValueError):
            self._listeners.remove(callback)

    def _notify(self, error: RecordsError) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback(error)
            except Exception as exc:  # a listener's bug must not hide the records failure
                _log.error("records failure listener %r failed: %s", callback, exc)

    @contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        """One snapshot for several queries; never blocks the writer (WAL)."""
        with self._guard(action):
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write("prepare its tables") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (0)")
            if version > SCHEMA_VERSION:
                raise RecordsError(self.path, f"made by a newer modctl (schema {version}, "
                                              f"this one knows {SCHEMA_VERSION})")
            for step in MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            if 0 < version < SCHEMA_VERSION:
                # Rows written before this upgrade have no row hashes in the chain (or hashes
                # of fewer columns): seal what is there now, so verify checks them too.
                rows = integrity.baseline(conn)
                if rows is not None:
                    self._append_audit(conn, SYSTEM_ACTOR, integrity.BASELINE_ACTION,
                                       "records", {"from_schema": version,
                                                   "to_schema": SCHEMA_VERSION, **rows})
            # Always written: a read-only database fails here, at open, not mid-session.
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def close(self) -> None:
        """Flush telemetry and close. Sessions still open stay open (as after a crash).

        A flush that fails here (the disk is still full) is said on the log with the
        number of samples it could not keep; it does not raise, so the session's own
        outcome and exit status (a records fault) are what the caller reports."""
        if self._closed:
            return
        try:
            self.flush()
        except RecordsError as exc:
            with self._samples_lock:
                lost = len(self._samples)
            _log.error("%s; %d telemetry sample(s) could not be written before closing",
                      exc, lost)
        finally:
            self._closed = True
            with self._conns_lock:
                for conn in self._conns.values():
                    conn.close()
                self._conns.clear()
            if self._owner_file is not None:
                with suppress(OSError):
                    Path(self._owner_file.name).unlink()
                self._owner_file.close()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- owner locks (crash detection) -----------------------------------------------------

    def _owner_path(self, token: str) -> Path:
        return self.path.with_name(self.path.name + ".owners") / f"{token}.lock"

    def _hold_owner_lock(self) -> None:
        if self._owner_file is not None or fcntl is None:
            return
        path = self._owner_path(self._token)
        path.parent.mkdir(exist_ok=True)
        handle = path.open("w")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._owner_file = handle

    def _owner_alive(self, token: str | None) -> bool:
        if token == self._token:
            return True
        if token is None or fcntl is None:
            return False
        path = self._owner_path(token)
        try:
            handle = path.open("r")
        except FileNotFoundError:
            return False
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            path.unlink(missing_ok=True)  # its owner is gone: tidy up
            return False

    # -- sessions --------------------------------------------------------------------------

    def open_session(self, *, profile: str, port: str, identity: Mapping[str, Any],
                     operator: str, patient: str | None, prescription: Mapping[str, Any],
                     planned_s: float, profile_path: str = "",
                     profile_sha256: str = "") -> str:
        """Record a new open session; `prescription` is as applied, with the limits used, and
        `profile_path`/`profile_sha256` name the profile file it runs on."""
        session_id = new_session_id()
        with self._guard("hold its owner lock"):
            self._hold_owner_lock()
        with self._write("open a session") as conn:
            conn.execute(
                "INSERT INTO sessions (id, profile, port, identity, operator, patient,"
                " prescription, planned_s, started_at, status, owner, profile_path,"
                " profile_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
                (session_id, profile, port, _dumps(identity), operator, patient,
                 _dumps(prescription), planned_s, _now(), self._token, profile_path,
                 profile_sha256))
            self._append_audit(conn, operator, "session.open", session_id,
                               {"profile": profile, "port": port, "patient": patient,
                                "planned_s": planned_s, "profile_path": profile_path,
                                "profile_sha256": profile_sha256},
                               [integrity.ref(conn, "sessions", session_id)])
        self._t0[session_id] = time.monotonic()
        return session_id

    def set_session_identity(self, session_id: str, identity: Mapping[str, Any]) -> None:
        """Record what the device reported at identification (model, serial, firmware, ...)
        on the open session."""
        with self._write("record the device identity") as conn:
            row = self._open_row(conn, session_id)
            conn.execute("UPDATE sessions SET identity = ? WHERE id = ?",
                         (_dumps(identity), session_id))
            self._append_audit(conn, row["operator"], "session.identity", session_id,
                               {"identity": dict(identity)},
                               [integrity.ref(conn, "sessions", session_id)])

    def _open_row(self, conn: sqlite3.Connection, session_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT status, operator FROM sessions WHERE id = ?",
                           (session_id,)).fetchone()
        if row is None or row["status"] != "open":
            state = "unknown" if row is None else row["status"]
            raise RecordsError(self.path, f"session {session_id} is {state}, not open")
        return row  # type: ignore[no-any-return]

    def close_session(self, session_id: str, outcome: str, reason: str,
                      stop_source: str | None, delivered_s: float,
                      dose: Mapping[str, Any] | None, *,
                      device_elapsed_s: float | None = None) -> None:
        """Close the session; `device_elapsed_s` is the device's own report of its output
        time, kept beside the host-measured `delivered_s`."""
        with self._write("close a session") as conn:
            entry_id = self._next_audit_id(conn)
            refs = self._drain_samples(conn, entry_id)
            row = self._open_row(conn, session_id)
            conn.execute(
                "UPDATE sessions SET status = 'closed', outcome = ?, reason = ?,"
                " stop_source = ?, delivered_s = ?, dose = ?, ended_at = ?,"
                " device_elapsed_s = ? WHERE id = ?",
                (outcome, reason, stop_source, delivered_s,
                 None if dose is None else _dumps(dose), _now(), device_elapsed_s,
                 session_id))
            refs.append(integrity.ref(conn, "sessions", session_id))
            self._append_audit(conn, row["operator"], "session.close", session_id,
                               {"outcome": outcome, "reason": reason,
                                "stop_source": stop_source, "delivered_s": delivered_s,
                                "device_elapsed_s": device_elapsed_s, "dose": dose},
                               refs, entry_id)
        self._t0.pop(session_id, None)

    def mark_interrupted_sessions(self) -> list[SessionRow]:
        """Mark sessions whose controller died as interrupted. Nothing is ever resumed."""
        marked: list[str] = []
        with self._write("mark interrupted sessions") as conn:
            for row in conn.execute("SELECT id, owner, started_at FROM sessions"
                                    " WHERE status = 'open'").fetchall():
                if self._owner_alive(row["owner"]):
                    continue
                sid = row["id"]
                delivered = self._latest(conn, sid, "delivered_s")
                dose = self._latest(conn, sid, "dose")
                elapsed = conn.execute(
                    "SELECT json_extract(data, '$.elapsed_s') FROM samples WHERE session_id = ?"
                    " AND json_type(data, '$.elapsed_s') IN ('integer', 'real')"
                    " ORDER BY t_s DESC, rowid DESC LIMIT 1", (sid,)).fetchone()
                device_elapsed = None if elapsed is None else float(elapsed[0])
                last = conn.execute("SELECT MAX(t_s), MAX(at) FROM events WHERE session_id = ?",
                                    (sid,)).fetchone()
                reason = ("interrupted: the controller stopped without closing the session; "
                          "the device's own watchdog ends its output; nothing was resumed")
                if delivered is None:
                    reason += "; delivered time unknown"
                conn.execute(
                    "UPDATE sessions SET status = 'interrupted', outcome = 'interrupted',"
                    " reason = ?, delivered_s = ?, dose = ?, ended_at = ?, device_elapsed_s = ?"
                    " WHERE id = ?",
                    (reason, delivered, dose, last[1] or row["started_at"], device_elapsed, sid))
                detail = {"state": "interrupted", "found_at": _now(), "delivered_s": delivered,
                          "device_elapsed_s": device_elapsed}
                seq = self._insert_event(conn, sid, last[0] or 0.0, "state", detail, delivered,
                                         dose)
                self._append_audit(conn, SYSTEM_ACTOR, "session.interrupted", sid,
                                   {**detail, "dose": _loads(dose)},
                                   [integrity.ref(conn, "sessions", sid),
                                    integrity.event_ref(conn, sid, seq)])
                marked.append(sid)
        with self._read("read sessions") as conn:
            return [self._session(conn, sid) for sid in marked]

    @staticmethod
    def _latest(conn: sqlite3.Connection, sid: str, column: str) -> Any:
        row = conn.execute(
            f"SELECT {column} FROM (SELECT t_s, {column} FROM events WHERE session_id = ?1"
            f" UNION ALL SELECT t_s, {column} FROM samples WHERE session_id = ?1)"
            f" WHERE {column} IS NOT NULL ORDER BY t_s DESC LIMIT 1", (sid,)).fetchone()
        return None if row is None else row[0]

    # -- events and telemetry --------------------------------------------------------------

    def _offset(self, session_id: str, t_s: float | None) -> float:
        if t_s is not None:
            return t_s
        if session_id not in self._t0:
            raise ValueError(f"t_s is required for session {session_id} (opened elsewhere)")
        return time.monotonic() - self._t0[session_id]

    def add_event(self, session_id: str, kind: str, detail: Mapping[str, Any] | None = None,
                  *, t_s: float | None = None, delivered_s: float | None = None,
                  dose: Mapping[str, Any] | None = None) -> int:
        """Commit one event now (durable on return) and return its seq.

        `t_s` defaults to monotonic seconds since `open_session` in this store. Pending telemetry
        and the event's audit entry ride along in the same transaction, at no extra fsync."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind {kind!r} is not one of {', '.join(EVENT_KINDS)}")
        t = self._offset(session_id, t_s)
        with self._write("record an event") as conn:
            entry_id = self._next_audit_id(conn)
            refs = self._drain_samples(conn, entry_id)
            seq = self._insert_event(conn, session_id, t, kind, detail or {}, delivered_s,
                                     None if dose is None else _dumps(dose))
            refs.append(integrity.event_ref(conn, session_id, seq))
            self._append_audit(conn, SYSTEM_ACTOR, "event.add", session_id, {"kind": kind},
                               refs, entry_id)
            return seq

    @staticmethod
    def _insert_event(conn: sqlite3.Connection, sid: str, t_s: float, kind: str,
                      detail: Mapping[str, Any], delivered_s: float | None,
                      dose: str | None) -> int:
        seq = int(conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events"
                               " WHERE session_id = ?", (sid,)).fetchone()[0])
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (sid, seq, t_s, _now(), kind, _dumps(detail), delivered_s, dose))
        return seq

    def add_sample(self, session_id: str, data: Mapping[str, Any], *, t_s: float | None = None,
                   delivered_s: float | None = None,
                   dose: Mapping[str, Any] | None = None) -> None:
        """Buffer one telemetry sample. Written with the next event, at session close, by
        `flush()`, or by the first call once `SAMPLE_FLUSH_S` has passed since the last write:
        one fsync per batch instead of one per sample, at the price of losing up to that much
        telemetry (never events) in a crash.

        Raises RecordsError when the write it triggers fails (the samples stay buffered), or
        when `SAMPLE_BUFFER_MAX` samples are already waiting (this one is not kept)."""
        sample = (session_id, self._offset(session_id, t_s), _dumps(data), delivered_s,
                  None if dose is None else _dumps(dose))
        with self._samples_lock:
            waiting = len(self._samples) + len(self._in_flight)
            if waiting < SAMPLE_BUFFER_MAX:
                self._samples.append(sample)
            due = (len(self._samples) >= SAMPLE_BATCH_MAX
                   or time.monotonic() - self._last_flush >= SAMPLE_FLUSH_S)
        if waiting >= SAMPLE_BUFFER_MAX:
            error = RecordsError(self.path, f"cannot record telemetry: {waiting} samples are "
                                            "already waiting to be written (the most kept, "
                                            f"SAMPLE_BUFFER_MAX = {SAMPLE_BUFFER_MAX}) because "
                                            "writing keeps failing; this sample was not kept")
            self._notify(error)
            raise error
        if due:
            self.flush()

    def flush(self) -> None:
        """Write buffered telemetry now. On failure the samples stay buffered, in order, for
        the next try; the failure listeners are told and RecordsError is raised."""
        with self._samples_lock:
            if not self._samples:
                self._last_flush = time.monotonic()
                return
        with self._write("record telemetry") as conn:
            entry_id = self._next_audit_id(conn)
            refs = self._drain_samples(conn, entry_id)
            if refs:
                subject = ",".join(sorted({s[0] for s in self._in_flight}))
                self._append_audit(conn, SYSTEM_ACTOR, "samples.write", subject, {}, refs,
                                   entry_id)

    def flush_quietly(self) -> None:
        """`flush()` for a periodic job: a failure has reached the failure listeners (and the
        samples stay buffered), so it is logged in one line here, never raised to a scheduler
        that would print a traceback."""
        try:
            self.flush()
        except RecordsError as exc:
            _log.info("telemetry flush failed (kept for the next try): %s", exc)

    def _drain_samples(self, conn: sqlite3.Connection, entry_id: int) -> list[dict[str, Any]]:
        """Insert the buffered samples as the batch of audit entry `entry_id`; return its row
        reference (none when nothing was buffered). `_write` puts them back if it fails."""
        with self._samples_lock:
            batch, self._samples = self._samples, []
            self._in_flight = batch
            self._last_flush = time.monotonic()
        if not batch:
            return []
        conn.executemany("INSERT INTO samples (session_id, t_s, data, delivered_s, dose, batch)"
                         " VALUES (?, ?, ?, ?, ?, ?)", [(*s, entry_id) for s in batch])
        return [integrity.batch_ref(conn, entry_id)]

    def _restore_in_flight(self) -> None:
        with self._samples_lock:
            self._samples[:0] = self._in_flight  # in front, in order: they came first
            self._in_flight = []

    # -- audit trail -----------------------------------------------------------------------

    def audit(self, actor: str, action: str, subject: str,
              detail: Mapping[str, Any] | None = None) -> int:
        """Append one audit entry; returns its id. `detail` may not use the key "rows" (row
        hashes are only written by the store itself)."""
        if detail and "rows" in detail:
            raise ValueError("audit detail key 'rows' is reserved for the records' row hashes")
        with self._write("append to the audit trail") as conn:
            return self._append_audit(conn, actor, action, subject, detail or {})

    @staticmethod
    def _next_audit_id(conn: sqlite3.Connection) -> int:
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
        return 1 if seq is None else int(seq[0]) + 1

    @classmethod
    def _append_audit(cls, conn: sqlite3.Connection, actor: str, action: str, subject: str,
                      detail: Mapping[str, Any], rows: list[dict[str, Any]] | None = None,
                      entry_id: int | None = None) -> int:
        """Append an entry; `rows` are the references (with content hashes) of the rows this
        transaction wrote; `entry_id` is the id given out by `_next_audit_id` earlier in it."""
        if entry_id is None:
            entry_id = cls._next_audit_id(conn)
        last = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev = GENESIS_HASH if last is None else str(last[0])
        at = _now()
        text = _dumps({**detail, "rows": rows} if rows else detail)
        digest = _audit_hash(prev, entry_id, at, actor, action, subject, text)
        conn.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (entry_id, at, actor, action, subject, text, prev, digest))
        return entry_id

    def verify_audit(self, expect_head: str | None = None) -> VerifyResult:
        """Check the audit chain and every audited row against it (see
        `controller.records.integrity`). `expect_head`: the head hash written down earlier;
        a different head fails (a chain rewritten or cut since). Telemetry still buffered in
        this store is written first."""
        self.flush()
        with self._read("read the audit trail") as conn:
            return integrity.verify(conn, expect_head)

    # -- queries ---------------------------------------------------------------------------

    @staticmethod
    def _row(r: sqlite3.Row, events: tuple[EventRow, ...] = ()) -> SessionRow:
        return SessionRow(
            id=r["id"], profile=r["profile"], port=r["port"], identity=_loads(r["identity"]),
            operator=r["operator"], patient=r["patient"],
            prescription=_loads(r["prescription"]), planned_s=r["planned_s"],
            started_at=r["started_at"], status=r["status"], outcome=r["outcome"],
            reason=r["reason"], stop_source=r["stop_source"], delivered_s=r["delivered_s"],
            dose=_loads(r["dose"]), ended_at=r["ended_at"], events=events,
            profile_path=r["profile_path"], profile_sha256=r["profile_sha256"],
            device_elapsed_s=r["device_elapsed_s"])

    def _session(self, conn: sqlite3.Connection, sid: str) -> SessionRow:
        events = tuple(
            EventRow(e["seq"], e["t_s"], e["at"], e["kind"], _loads(e["detail"]),
                     e["delivered_s"], _loads(e["dose"]))
            for e in conn.execute("SELECT * FROM events WHERE session_id = ? ORDER BY seq",
                                  (sid,)))
        row = conn.execute("SELECT * FROM sessions WHERE id = ?", (sid,)).fetchone()
        return self._row(row, events)

    def list_sessions(self, limit: int | None = 50, patient: str | None = None,
                      profile: str | None = None) -> list[SessionRow]:
        """Newest first, without events; `limit=None` lists them all."""
        with self._read("list sessions") as conn:
            rows = conn.execute(
                "SELECT * FROM sessions WHERE (?1 IS NULL OR patient = ?1)"
                " AND (?2 IS NULL OR profile = ?2) ORDER BY started_at DESC, id DESC LIMIT ?3",
                (patient, profile, -1 if limit is None else limit)).fetchall()
        return [self._row(r) for r in rows]

    def get_samples(self, session_id: str) -> list[SampleRow]:
        """A session's telemetry in time order (this store's buffered samples included)."""
        self.flush()
        with self._read("read telemetry") as conn:
            rows = conn.execute(
                "SELECT t_s, data, delivered_s, dose FROM samples WHERE session_id = ?"
                " ORDER BY t_s, rowid", (session_id,)).fetchall()
        return [SampleRow(r["t_s"], _loads(r["data"]), r["delivered_s"], _loads(r["dose"]))
                for r in rows]

    def get_session(self, session_id: str) -> SessionRow | None:
        """One session with its events; a unique prefix of the id is enough."""
        with self._read("read a session") as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM sessions WHERE id = ?1 OR (length(?1) >= 4 AND id LIKE ?1 || '%')"
                " ORDER BY id = ?1 DESC LIMIT 2", (session_id.upper(),))]
            if len(ids) == 2 and ids[0] != session_id.upper():
                raise RecordsError(self.path, f"session id prefix {session_id} is ambiguous")
            return self._session(conn, ids[0]) if ids else None

    def export(self, fmt: ExportFormat, patient: str | None = None) -> str:
        """All sessions (oldest first): JSON with events, or CSV one row per session."""
        with self._read("export sessions") as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM sessions WHERE ?1 IS NULL OR patient = ?1"
                " ORDER BY started_at, id", (patient,))]
            sessions = [self._session(conn, sid) for sid in ids]
        if fmt == "json":
            return json.dumps({"schema_version": SCHEMA_VERSION, "exported_at": _now(),
                               "sessions": [s.to_json() for s in sessions]}, indent=2,
                              ensure_ascii=False) + "\n"
        if fmt != "csv":
            raise ValueError(f"export format {fmt!r} is not json or csv")
        fixed = ["id", "started_at", "ended_at", "profile", "port", "operator", "patient",
                 "status", "outcome", "reason", "stop_source", "planned_s", "delivered_s",
                 "device_elapsed_s", "profile_path", "profile_sha256"]
        rows = []
        for s in sessions:
            row: dict[str, Any] = {k: getattr(s, k) for k in fixed}
            row["prescription"] = _dumps(s.prescription)
            row.update(_flatten("dose", s.dose or {}))
            rows.append(row)
        dose_cols = sorted({k for r in rows for k in r if k.startswith("dose.")})
        out = io.StringIO()
        writer = csv.DictWriter(out, [*fixed, "prescription", *dose_cols], lineterminator=LINE_END)
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
            out[name] = _dumps(item) if isinstance(item, list) else item
    return out
