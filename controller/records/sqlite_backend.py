"""The embedded backend: one SQLite file on this PC (the default).

Durability (docs/design.md §2.9): WAL mode with ``synchronous=FULL``: NORMAL survives a crash of
the controller but may lose the last commits on a power cut; a treatment record must survive
that too. Writers take ``BEGIN IMMEDIATE``, which also makes the audit chain's
read-last-hash-then-append atomic across processes (they wait up to `BUSY_TIMEOUT_S`).

Owner locks: a store that opens a session holds an flock on ``<db>.owners/<token>.lock``; the
OS drops it when the process dies, so a second controller beside this one never has its live
sessions marked interrupted.
"""

from __future__ import annotations

import sqlite3
from contextlib import suppress
from pathlib import Path
from typing import IO

from controller.records.schema import MIGRATIONS
from controller.records.sql import Connection

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: every open session counts as crashed
    fcntl = None  # type: ignore[assignment]

BUSY_TIMEOUT_S = 5.0

# sqlite messages → plain words for the operator.
_PLAIN = (
    ("not a database", "it is not a modctl records database, or it is damaged"),
    ("malformed", "it is damaged (malformed database image)"),
    ("readonly", "it is read-only: check the permissions of the file and its directory"),
    ("disk is full", "the disk is full"),
    ("unable to open", "it cannot be opened: directory missing or not writable"),
    ("locked", "another program holds it locked"),
)


class SqliteBackend:
    """Connections, transactions and owner locks of one SQLite file."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    migrations = MIGRATIONS
    shared = False
    """Whether several PCs may share this database (rooms)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._owner_file: IO[str] | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def connect(self) -> Connection:
        # check_same_thread=False only so close() may close every thread's connection.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def prepare(self, conn: Connection) -> str | None:
        """Make the file ready; a problem that makes it unusable, in words, or None."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        return None if mode == "wal" else f"WAL mode unavailable here (got {mode!r})"

    def begin_write(self, conn: Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def begin_read(self, conn: Connection) -> None:
        conn.execute("BEGIN")  # WAL: a snapshot that never blocks the writer

    def broken(self, conn: Connection) -> bool:
        return False

    def plain(self, exc: Exception) -> str:
        text = str(exc)
        return next((p for key, p in _PLAIN if key in text.lower()), text)

    def unreachable(self, exc: BaseException) -> bool:
        """A local file is never 'unreachable': its failures are records faults."""
        return False

    def conflict(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)


    # -- owner locks ---------------------------------------------------------------------

    def _owner_path(self, token: str) -> Path:
        return self.path.with_name(self.path.name + ".owners") / f"{token}.lock"

    def hold_owner_lock(self, token: str) -> None:
        if fcntl is None or self._owner_file is not None:
            return
        path = self._owner_path(token)
        path.parent.mkdir(exist_ok=True)
        handle = path.open("w")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._owner_file = handle

    def owner_alive(self, token: str) -> bool:
        if fcntl is None:
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

    def reclaim(self) -> None:
        """An flock is never lost while the process lives: nothing to take again."""

    def release(self) -> None:
        if self._owner_file is not None:
            with suppress(OSError):
                Path(self._owner_file.name).unlink()
            self._owner_file.close()
            self._owner_file = None
