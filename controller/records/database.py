"""The records database: connections, write transactions, schema migrations, write-failure
listeners, the audit chain's append, and the owner locks that tell a crashed controller's open
sessions from a live one's, over one of two backends: an SQLite file on this PC
(`sqlite_backend`, the default) or a PostgreSQL database shared by several rooms (`pg_backend`).

Every part of `controller.records.store.RecordStore` (sessions, telemetry, devices, bookings,
calibrations, accounts, notes) writes through one `Database`, so they share one write lock and
one audit chain. Writes in this process are serialised by one lock; across processes and hosts
the backend serialises them (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL).

Threads: one connection per thread, made on first use (and made again when a PostgreSQL
connection was lost).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from controller.records import integrity
from controller.records.integrity import GENESIS_HASH
from controller.records.schema import SCHEMA_VERSION
from controller.records.sql import Connection
from controller.records.sqlite_backend import BUSY_TIMEOUT_S, SqliteBackend
from controller.records.target import DbTarget, PgUrl, as_target

__all__ = ["BUSY_TIMEOUT_S", "Backend", "Database", "RecordsError", "default_db_path"]

DB_ENV = "MODCTL_DB"
DB_FILENAME = "records.sqlite3"
SYSTEM_ACTOR = "modctl"

FailureListener = Callable[["RecordsError"], None]
# Told, inside the write lock, as each write transaction ends: True when it committed.
WriteHook = Callable[[bool], None]
_log = logging.getLogger(__name__)


class RecordsError(Exception):
    """The records database cannot be used; the message names where it is and says why.
    `unreachable`: a shared database's server could not be reached (not a records fault of
    its own: see `controller.records.spool`)."""

    def __init__(self, path: DbTarget | str, message: str, *, unreachable: bool = False) -> None:
        super().__init__(f"records database {path}: {message}")
        self.path = path
        self.unreachable = unreachable


class RecordsConflict(RecordsError):
    """The database itself refused a write that breaks one of its rules (a double booking,
    a device registered twice): the caller says which rule, in its own words."""


class Backend(Protocol):
    """What `Database` needs of a backend (`SqliteBackend`, `PgBackend`)."""

    errors: tuple[type[Exception], ...]
    migrations: tuple[tuple[str, ...], ...]
    shared: bool

    def exists(self) -> bool: ...
    def connect(self) -> Connection: ...
    def prepare(self, conn: Connection) -> str | None: ...
    def begin_write(self, conn: Connection) -> None: ...
    def begin_read(self, conn: Connection) -> None: ...
    def broken(self, conn: Connection) -> bool: ...
    def plain(self, exc: Exception) -> str: ...
    def unreachable(self, exc: BaseException) -> bool: ...
    def conflict(self, exc: BaseException) -> bool: ...
    def hold_owner_lock(self, token: str) -> None: ...
    def owner_alive(self, token: str) -> bool: ...
    def reclaim(self) -> None: ...
    def release(self) -> None: ...


def backend_for(target: DbTarget) -> Backend:
    """The backend of a location; psycopg is imported only for a PostgreSQL URL."""
    if isinstance(target, PgUrl):
        try:
            from controller.records.pg_backend import PgBackend
        except ImportError as exc:
            raise RecordsError(target, "PostgreSQL needs psycopg 3: pip install "
                                       "'psycopg[binary]>=3.1'") from exc
        return PgBackend(target)
    return SqliteBackend(target)


def default_db_path(explicit: str | os.PathLike[str] | None = None,
                    env: Mapping[str, str] | None = None) -> DbTarget:
    """`--db` beats $MODCTL_DB beats $XDG_DATA_HOME/modctl beats ~/.local/share/modctl. A
    ``postgresql://`` URL names a shared database (`PgUrl`); anything else is a file path."""
    env = os.environ if env is None else env
    if explicit:
        return as_target(explicit)
    if env.get(DB_ENV):
        return as_target(env[DB_ENV])
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        return Path(xdg) / "modctl" / DB_FILENAME
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "share" / "modctl" / DB_FILENAME


def now_iso() -> str:
    """The time stamp of a row written now: UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- the audit chain's append (always inside a `Database.write` transaction) -----------------

def next_audit_id(conn: Connection) -> int:
    """The id the next audit entry will get: `audit_high` keeps the highest id ever given
    (a trigger raises it on every append), so a deleted tail of the chain shows."""
    row = conn.execute("SELECT seq FROM audit_high").fetchone()
    return 1 if row is None else int(row[0]) + 1


def append_audit(conn: Connection, actor: str, action: str, subject: str,
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
    """One records database. `connect` is where each transaction gets its thread's
    connection: `RecordStore` passes its own `_conn`, so a subclass may wrap every connection
    (the tests fill the disk that way); by default it is `connection`.

    Call `open` once before use; it creates or upgrades the tables."""

    def __init__(self, path: DbTarget, *,
                 connect: Callable[[], Connection] | None = None) -> None:
        self.path = path
        self.backend = backend_for(path)
        self._connect = connect or self.connection
        self._local = threading.local()
        self._conns: dict[threading.Thread, Connection] = {}
        self._conns_lock = threading.Lock()
        self._wlock = threading.Lock()
        self._depth = threading.local()
        self._write_hooks: list[WriteHook] = []
        self._listeners: list[FailureListener] = []
        self._listeners_lock = threading.Lock()
        self.token = uuid.uuid4().hex
        """This store's owner token, written on the sessions it opens."""
        self._owner_lock = threading.Lock()
        self._owner_held = False
        self.closed = False

    @property
    def shared(self) -> bool:
        """Whether several rooms may share this database (PostgreSQL)."""
        return self.backend.shared

    def open(self, *, create: bool) -> None:
        if not create and not self.backend.exists():
            raise RecordsError(self.path, "no such file")
        with self.guard("open it"):
            if isinstance(self.path, Path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            problem = self.backend.prepare(self._connect())
        if problem:
            raise RecordsError(self.path, problem)
        self._migrate()

    # -- connections and transactions ------------------------------------------------------

    def connection(self) -> Connection:
        """This thread's connection, made on first use (again after it was lost)."""
        if self.closed:
            raise RecordsError(self.path, "the store is closed")
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self.backend.broken(conn):
            return conn
        conn = self.backend.connect()
        with self._conns_lock:  # close the connections of threads that have ended
            for thread in [t for t in self._conns if not t.is_alive()]:
                with suppress(Exception):
                    self._conns.pop(thread).close()
            old = self._conns.pop(threading.current_thread(), None)
            if old is not None:
                with suppress(Exception):
                    old.close()
            self._conns[threading.current_thread()] = conn
        self._local.conn = conn
        return conn

    @contextmanager
    def guard(self, action: str) -> Iterator[None]:
        """Database and OS errors become one RecordsError naming the database and `action`."""
        try:
            yield
        except self.backend.errors as exc:
            if self.backend.conflict(exc):
                raise RecordsConflict(self.path, f"cannot {action}: "
                                                 f"{self.backend.plain(exc)}") from exc
            raise RecordsError(self.path, f"cannot {action}: {self.backend.plain(exc)}",
                               unreachable=self.backend.unreachable(exc)) from exc
        except OSError as exc:
            raise RecordsError(self.path, f"cannot {action}: {exc.strerror or exc}") from exc

    def add_write_hook(self, hook: WriteHook) -> None:
        """Call `hook(committed)` inside the write lock as each write transaction ends (the
        telemetry buffer puts back the samples a failed transaction had taken)."""
        self._write_hooks.append(hook)

    @contextmanager
    def write(self, action: str, *, may_conflict: bool = False,
              notify: bool = True) -> Iterator[Connection]:
        """One write transaction under the write lock. A write inside another on the same
        thread joins it (the spool's replay wraps a record's write with its own bookkeeping).
        When the database fails it (not a refusal by modctl's own checks, nor a shared server
        out of reach: the spool's business), the failure listeners are told, outside the lock.
        `may_conflict`: the database's own rules (a double booking, a device registered twice
        in another room meanwhile) may refuse this write: RecordsConflict, no listener told.
        `notify=False`: a background write whose failure is handled where it happens (the
        journal's writer, a room's heartbeat) and must never end a running session."""
        depth = getattr(self._depth, "n", 0)
        if depth:
            self._depth.n = depth + 1
            try:
                with self.guard(action):
                    yield self._connect()
            finally:
                self._depth.n = depth
            return
        try:
            with self.guard(action), self._wlock:
                conn = self._begin(self.backend.begin_write)
                committed = False
                self._depth.n = 1
                try:
                    yield conn
                    conn.execute("COMMIT")
                    committed = True
                except BaseException:
                    if conn.in_transaction:
                        with suppress(*self.backend.errors):
                            conn.execute("ROLLBACK")
                    raise
                finally:
                    self._depth.n = 0
                    for hook in self._write_hooks:
                        hook(committed)
        except RecordsError as exc:
            if may_conflict and isinstance(exc, RecordsConflict):
                raise
            if notify and isinstance(exc.__cause__, (*self.backend.errors, OSError)) \
                    and not exc.unreachable:
                self.notify(exc)
            raise

    def _begin(self, begin: Callable[[Connection], None]) -> Connection:
        """This thread's connection with a transaction begun. A server connection lost
        while idle (the server restarted) is noticed here, before anything was sent in the
        transaction, so a new connection is made and the transaction begun again."""
        conn = self._connect()
        try:
            begin(conn)
        except self.backend.errors as exc:
            self._abandon(conn)
            if not (self.backend.unreachable(exc) and self.backend.broken(conn)):
                raise
            conn = self._connect()
            try:
                begin(conn)
            except self.backend.errors:
                self._abandon(conn)
                raise
        return conn

    def _abandon(self, conn: Connection) -> None:
        """Roll back a transaction a failed begin left open (PostgreSQL's BEGIN then a lock
        wait that timed out): else the connection stays 'aborted' for good."""
        if conn.in_transaction:
            with suppress(*self.backend.errors):
                conn.execute("ROLLBACK")

    @contextmanager
    def read(self, action: str) -> Iterator[Connection]:
        """One snapshot for several queries; never blocks the writer."""
        if getattr(self._depth, "n", 0):  # inside a write on this thread: read in it
            with self.guard(action):
                yield self._connect()
            return
        with self.guard(action):
            conn = self._begin(self.backend.begin_read)
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def verify_chain(self) -> bool:
        """Whether the audit chain and every audited row check out now."""
        with self.read("verify the audit trail") as conn:
            return integrity.verify(conn).ok

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
            for step in self.backend.migrations[version:]:
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
                with suppress(Exception):
                    conn.close()
            self._conns.clear()
        self.backend.release()

    # -- owner locks (crash detection) -----------------------------------------------------

    def hold_owner_lock(self) -> None:
        """Hold this store's owner lock (from its first session on, until `close`). Taken
        once per store: sessions opening at once on several threads (the clinic service)
        must not each take it."""
        with self._owner_lock:
            if self._owner_held:
                return
            self.backend.hold_owner_lock(self.token)
            self._owner_held = True

    def owner_alive(self, token: str | None) -> bool:
        """Whether the store that wrote `token` on a session still runs."""
        if token == self.token:
            return True
        if token is None:
            return False
        return self.backend.owner_alive(token)
