"""The shared backend: one PostgreSQL database for several rooms (psycopg 3).

Every write transaction takes one transaction-scoped advisory lock first, so writers on every
host are serialised as SQLite's ``BEGIN IMMEDIATE`` serialises them on one PC: the audit chain's
read-last-hash-then-append stays one chain under concurrent writers, and the records' own checks
(double booking, a device registered twice) see every other room's committed rows. The database
also enforces those rules by itself (`pg_schema`). Reads are REPEATABLE READ snapshots.

Owner locks: a store that opens a session holds a session-level advisory lock keyed by its
token on a connection of its own; PostgreSQL drops it when that connection ends (the process
died, or its host vanished and TCP keepalive gave up), so another room can tell a crashed
controller's open sessions from a live one's.
"""

from __future__ import annotations

import threading
from contextlib import suppress

import psycopg

from controller.records.pg_conn import PgConnection
from controller.records.pg_schema import PG_MIGRATIONS
from controller.records.sql import Connection
from controller.records.target import PgUrl

# Advisory lock key spaces (first int of the two-int form): modctl's, chosen once.
WRITE_LOCK = (0x6D6F64, 1)
OWNER_SPACE = 0x6D6F65


class PgBackend:
    """Connections, transactions and owner locks of one PostgreSQL database."""

    errors: tuple[type[Exception], ...] = (psycopg.Error,)
    migrations = PG_MIGRATIONS
    shared = True

    def __init__(self, url: PgUrl) -> None:
        self.url = url
        self._lock_conn: PgConnection | None = None
        self._lock_guard = threading.Lock()
        self._held: str | None = None

    def exists(self) -> bool:
        return True

    def connect(self) -> Connection:
        """A new connection (a thread's first, or one made again after the server was lost:
        then the owner lock's connection may be gone too, and the lock is taken again)."""
        conn = PgConnection(self.url.raw)
        self.reclaim()
        return conn

    def prepare(self, conn: Connection) -> str | None:
        return None

    def begin_write(self, conn: Connection) -> None:
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(?, ?)", WRITE_LOCK)

    def begin_read(self, conn: Connection) -> None:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")

    def broken(self, conn: Connection) -> bool:
        return isinstance(conn, PgConnection) and conn.broken

    def plain(self, exc: Exception) -> str:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, psycopg.OperationalError) and "connect" in text.lower():
            return f"the database server cannot be reached ({text})"
        return text

    def unreachable(self, exc: BaseException) -> bool:
        """The server is down or the connection was lost: not the records' own fault."""
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))

    def conflict(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.IntegrityError)


    # -- owner locks ---------------------------------------------------------------------

    def _locks(self) -> PgConnection:
        if self._lock_conn is None or self._lock_conn.broken:
            self._lock_conn = PgConnection(self.url.raw)
        return self._lock_conn

    def hold_owner_lock(self, token: str) -> None:
        with self._lock_guard:
            if self._held == token:
                return
            self._locks().execute("SELECT pg_advisory_lock(?, hashtext(?))",
                                  (OWNER_SPACE, token))
            self._held = token

    def reclaim(self) -> None:
        """Take the owner lock again if its connection was lost (the server restarted). The
        token is kept until the lock is held again, however many tries that takes."""
        with self._lock_guard:
            if self._held is None or self._lock_conn is None:
                return
            try:
                self._lock_conn.execute("SELECT 1")
                return
            except psycopg.Error:
                pass
            self._lock_conn = PgConnection(self.url.raw)
            self._lock_conn.execute("SELECT pg_advisory_lock(?, hashtext(?))",
                                    (OWNER_SPACE, self._held))

    def owner_alive(self, token: str) -> bool:
        with self._lock_guard:
            conn = self._locks()
            row = conn.execute("SELECT pg_try_advisory_lock(?, hashtext(?))",
                               (OWNER_SPACE, token)).fetchone()
            got = bool(row is not None and row[0])
            if got:
                conn.execute("SELECT pg_advisory_unlock(?, hashtext(?))", (OWNER_SPACE, token))
            return not got

    def release(self) -> None:
        with self._lock_guard:
            if self._lock_conn is not None:
                with suppress(psycopg.Error):
                    self._lock_conn.close()
            self._lock_conn, self._held = None, None

