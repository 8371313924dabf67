"""The records database file: connections, write transactions, schema migrations, write-failure
listeners, the audit chain's append, and the owner locks that tell a crashed controller's open
sessions from a live one's.

Every part of `controller.records.store.RecordStore` (sessions, telemetry, devices, bookings,
calibrations) writes through one `Database`, so they share one write lock and one audit chain.

Durability (docs/design.md §2.9): WAL mode with ``synchronous=FULL``. NORMAL would survive a
crash of the controller process but may lose the last commits on a power cut or an OS crash; a
treatment record must survive those too, so each commit is fsynced.

Threads: one SQLite connection per thread, made on first use. WAL lets readers work beside the
session worker without blocking it or being blocked. Writes in this process are serialised by one
lock and run as ``BEGIN IMMEDIATE`` transactions, which also makes the audit chain's
read-last-hash-then-append atomic across processes (they wait up to `BUSY_TIMEOUT_S`).

Owner locks: each store that opens a session holds an flock on ``<db>.owners/<token>.lock``; the
OS drops it when the process dies, so a second controller running beside this one never has its
live sessions marked interrupted.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from controller.records import integrity
from controller.records.integrity import GENESIS_HASH
from controller.records.schema import MIGRATIONS, SCHEMA_VERSION

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: every open session counts as crashed
    fcntl = None  # type: ignore[assignment]

DB_ENV = "MODCTL_DB"
DB_FILENAME = "records.sqlite3"
BUSY_TIMEOUT_S = 5.0
SYSTEM_ACTOR = "modctl"

FailureListener = Callable[["RecordsError"], None]
# Told, inside the write lock, as each write transaction ends: True when it committed.
WriteHook = Callable[[bool], None]
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


def now_iso() -> str:
    """The time stamp of a row written now: UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- the audit chain's append (always inside a `Database.write` transaction) -----------------

def next_audit_id(conn: sqlite3.Connection) -> int:
    """The id the next audit entry will get (AUTOINCREMENT remembers deleted ones)."""
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
    return 1 if seq is None else int(seq[0]) + 1


def append_audit(conn: sqlite3.Connection, actor: str, action: str, subject: str,
                 detail: Mapping[str, Any], rows: list[dict[str, Any]] | None = None,
                 entry_id: int | None = None) -> int:
    """Append an entry; `rows` are the references (with content hashes) of the rows this
    transaction wrote; `entry_id` is the id given out by `next_audit_id` earlier in it."""
    if entry_id is None:
        entry_id = next_audit_id(conn)
    last = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    prev = GENESIS_HASH if last is None else str(last[0])
    at = now_iso()
    text = integrity.dumps({**detail, "rows": rows} if rows else detail)
    digest = integrity.audit_hash(prev, entry_id, at, actor, action, subject, text)
    conn.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (entry_id, at, actor, action, subject, text, prev, digest))
    return entry_id


class Database:
    """One records database file. `connect` is where each transaction gets its thread's
    connection: `RecordStore` passes its own `_conn`, so a subclass may wrap every connection
    (the tests fill the disk that way); by default it is `connection`.

    Call `open` once before use; it creates or upgrades the tables."""

    def __init__(self, path: Path, *,
                 connect: Callable[[], sqlite3.Connection] | None = None) -> None:
        self.path = path
        self._connect = connect or self.connection
        self._local = threading.local()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._conns_lock = threading.Lock()
        self._wlock = threading.Lock()
        self._write_hooks: list[WriteHook] = []
        self._listeners: list[FailureListener] = []
        self._listeners_lock = threading.Lock()
        self.token = uuid.uuid4().hex
        """This store's owner token, written on the sessions it opens."""
        self._owner_file: IO[str] | None = None
        self._owner_lock = threading.Lock()
        self.closed = False

    def open(self, *, create: bool) -> None:
        if not create and not self.path.exists():
            raise RecordsError(self.path, "no such file")
        with self.guard("open it"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mode = self._connect().execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RecordsError(self.path, f"WAL mode unavailable here (got {mode!r})")
        self._migrate()

    # -- connections and transactions ------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, made on first use."""
        if self.closed:
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
    def guard(self, action: str) -> Iterator[None]:
        """SQLite and OS errors become one RecordsError naming the file and `action`."""
        try:
            yield
        except sqlite3.Error as exc:
            text = str(exc)
            plain = next((p for key, p in _PLAIN if key in text.lower()), text)
            raise RecordsError(self.path, f"cannot {action}: {plain}") from exc
        except OSError as exc:
            raise RecordsError(self.path, f"cannot {action}: {exc.strerror or exc}") from exc

    def add_write_hook(self, hook: WriteHook) -> None:
        """Call `hook(committed)` inside the write lock as each write transaction ends (the
        telemetry buffer puts back the samples a failed transaction had taken)."""
        self._write_hooks.append(hook)

    @contextmanager
    def write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction under the write lock. When the database fails it (not a
        refusal by modctl's own checks), the failure listeners are told, outside the lock."""
        try:
            with self.guard(action), self._wlock:
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
                committed = False
                try:
                    yield conn
                    conn.execute("COMMIT")
                    committed = True
                except BaseException:
                    if conn.in_transaction:
                        with suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
                finally:
                    for hook in self._write_hooks:
                        hook(committed)
        except RecordsError as exc:
            if isinstance(exc.__cause__, (sqlite3.Error, OSError)):
                self.notify(exc)
            raise

    @contextmanager
    def read(self, action: str) -> Iterator[sqlite3.Connection]:
        """One snapshot for several queries; never blocks the writer (WAL)."""
        with self.guard(action):
            conn = self._connect()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def audit(self, actor: str, action: str, subject: str,
              detail: Mapping[str, Any] | None = None) -> int:
        """Append one audit entry in its own transaction; returns its id."""
        if detail and "rows" in detail:
            raise ValueError("audit detail key 'rows' is reserved for the records' row hashes")
        with self.write("append to the audit trail") as conn:
            return append_audit(conn, actor, action, subject, detail or {})

    # -- write failures --------------------------------------------------------------------

    def add_failure_listener(self, callback: FailureListener) -> None:
        with self._listeners_lock:
            self._listeners.append(callback)

    def remove_failure_listener(self, callback: FailureListener) -> None:
        with self._listeners_lock, suppress(ValueError):
            self._listeners.remove(callback)

    def notify(self, error: RecordsError) -> None:
        """Tell every failure listener; a listener's exception is logged, never raised."""
        with self._listeners_lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback(error)
            except Exception as exc:  # a listener's bug must not hide the records failure
                _log.error("records failure listener %r failed: %s", callback, exc)

    # -- schema ----------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self.write("prepare its tables") as conn:
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
                    append_audit(conn, SYSTEM_ACTOR, integrity.BASELINE_ACTION, "records",
                                 {"from_schema": version, "to_schema": SCHEMA_VERSION, **rows})
            # Always written: a read-only database fails here, at open, not mid-session.
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def close(self) -> None:
        """Close every thread's connection and drop the owner lock."""
        self.closed = True
        with self._conns_lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
        if self._owner_file is not None:
            with suppress(OSError):
                Path(self._owner_file.name).unlink()
            self._owner_file.close()

    # -- owner locks (crash detection) -----------------------------------------------------

    def _owner_path(self, token: str) -> Path:
        return self.path.with_name(self.path.name + ".owners") / f"{token}.lock"

    def hold_owner_lock(self) -> None:
        """Hold this store's owner lock (from its first session on, until `close`). Taken
        once per store: sessions opening at once on several threads (the clinic service)
        must not each flock it (a second flock of the same file fails)."""
        if fcntl is None:
            return
        with self._owner_lock:
            if self._owner_file is not None:
                return
            path = self._owner_path(self.token)
            path.parent.mkdir(exist_ok=True)
            handle = path.open("w")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._owner_file = handle

    def owner_alive(self, token: str | None) -> bool:
        """Whether the store that wrote `token` on a session still runs."""
        if token == self.token:
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
