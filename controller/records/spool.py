"""The local journal of a shared database: a running session never waits on the network, a
database out of reach never stops a treatment, and no record is lost.

On PostgreSQL the session's writes (its identity, events, telemetry, close) are first appended
to a local file, one JSON line per write, fsynced before the call returns: recorded as it
happens, at the cost of one local fsync, as on SQLite. A writer thread then applies them to the
database in order, each in one transaction with its id in `spool_replayed`, so an entry is
written exactly once however often it is tried (a commit whose answer was lost, a replay cut
short, a spool adopted after a crash). The session worker never blocks on the server: a network
cut that would hang a query for seconds (and let a 1 s device watchdog end the treatment) only
delays the writer thread.

When the server cannot be reached, the writer retries every `RETRY_S`; the session goes on to
its planned end, recorded in the file, and new sessions are refused (`SpoolActive`) while the
outage lasts. When the server is back, the backlog is written in order, the chain is verified,
and the replay is audited (``records.spool_replayed``, with the count and the verification).

An entry the database can no longer take (its session was marked interrupted by another room
meanwhile) is not dropped: it is written whole into an audit entry ``records.spool_unreplayed``.

A spool left by a process that died (no live flock on it) is replayed by the next store that
opens the same database from this PC, before it marks interrupted sessions.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from controller.records import integrity
from controller.records.database import (
    SYSTEM_ACTOR,
    Database,
    RecordsError,
    append_audit,
    now_iso,
)
from controller.records.sql import Connection

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

SPOOL_ENV = "MODCTL_SPOOL"
# How often the writer asks a server out of reach whether it is back.
RETRY_S = 2.0
# Closing a store waits this long for the writer to catch up; what is left stays in the file
# for the next store on this PC.
CLOSE_WAIT_S = 10.0
# A reader of this store's own records waits this long for its writes to reach the database.
SETTLE_WAIT_S = 5.0
# The file is emptied when everything in it is written and it has grown past this.
TRUNCATE_BYTES = 1 << 20
# How often the writer makes sure the store's owner lock is still held (seconds).
OWNER_CHECK_S = 5.0

_log = logging.getLogger(__name__)

# op name → how to write it to the database (set by the store: its own parts do the writing).
Apply = Callable[[str, Mapping[str, Any]], None]


def default_spool_dir(env: Mapping[str, str] | None = None) -> Path:
    """$MODCTL_SPOOL beats $XDG_STATE_HOME/modctl/spool beats ~/.local/state/modctl/spool."""
    env = os.environ if env is None else env
    if env.get(SPOOL_ENV):
        return Path(env[SPOOL_ENV]).expanduser()
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "modctl" / "spool"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "state" / "modctl" / "spool"


class SpoolActive(RecordsError):
    """Records wait in the local spool: the database cannot be reached (new sessions wait)."""


class Spool:
    """One store's journal file and the thread that writes it to the database."""

    def __init__(self, db: Database, directory: Path, apply: Apply) -> None:
        self._db = db
        self._apply = apply
        self.directory = directory
        self.path = directory / f"{db.token}.jsonl"
        self._cond = threading.Condition()
        self._entries: list[dict[str, Any]] = []
        self._done = 0
        self._outage: RecordsError | None = None
        self._outage_entries = 0
        self._file: IO[str] | None = None
        self._thread: threading.Thread | None = None
        self._stop = False
        self._owner_checked = time.monotonic()
        self.replayed: list[dict[str, Any]] = []
        """What each replay after an outage did (for logs and tests)."""

    @property
    def active(self) -> bool:
        """Whether the database is out of reach with writes waiting (new sessions wait)."""
        with self._cond:
            return self._outage is not None and self._done < len(self._entries)

    def waiting(self) -> int:
        with self._cond:
            return len(self._entries) - self._done

    # -- writing ---------------------------------------------------------------------------

    def put(self, op: str, args: Mapping[str, Any]) -> None:
        """Append one write, durable on return, for the writer thread. Raises RecordsError
        (a records fault: nothing may run unrecorded) when the local file cannot be written."""
        entry = {"id": uuid.uuid4().hex, "op": op, "at": now_iso(), "args": dict(args)}
        line = integrity.dumps(entry) + "\n"
        with self._cond:
            try:
                if self._file is None:
                    self._file = _open_locked(self.directory, self.path)
                self._file.write(line)
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                error = RecordsError(self._db.path, f"cannot write the local spool {self.path}: "
                                                    f"{exc.strerror or exc}")
                self._db.notify(error)
                raise error from exc
            self._entries.append(entry)
            self._cond.notify_all()
            self._ensure_writer()

    def _ensure_writer(self) -> None:
        """Start the writer thread once (under `_cond`)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="records-writer",
                                            daemon=True)
            self._thread.start()

    def settle(self, timeout: float = SETTLE_WAIT_S) -> None:
        """Wait until everything put so far is in the database (not during an outage)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._done < len(self._entries) and self._outage is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._done == len(self._entries) and not self._stop:
                    self._cond.wait(OWNER_CHECK_S)
                idle = self._done == len(self._entries)
                if self._stop and idle:
                    return
            self._keep_owner_lock()  # never under `_cond`: it may wait on the network
            if idle:
                continue
            if not self.replay():
                with self._cond:  # out of reach: try again later (or stop)
                    if self._cond.wait_for(lambda: self._stop, RETRY_S):
                        return

    def _keep_owner_lock(self) -> None:
        """Every `OWNER_CHECK_S`: the owner lock's own connection may have ended alone (an
        idle-session timeout, an administrator), and another room would then mark this
        store's running sessions interrupted. Take it again."""
        now = time.monotonic()
        if now - self._owner_checked < OWNER_CHECK_S:
            return
        self._owner_checked = now
        try:
            with self._db.guard("hold its owner lock"):
                self._db.backend.reclaim()
        except RecordsError as exc:
            _log.info("owner lock not taken again yet: %s", exc)

    def replay(self) -> bool:
        """Write what waits, in order; True when nothing waits. Never raises: a server out of
        reach leaves the rest for the next try. One thread at a time."""
        while True:
            with self._cond:
                if self._done == len(self._entries):
                    break
                entry = self._entries[self._done]
            try:
                self._write(entry)
            except RecordsError as exc:
                # Written whole into the audit trail, or tried again later: an entry is only
                # done once the database has committed it in one form or the other.
                if exc.unreachable or not self._unreplayable(entry, exc):
                    self._out_of_reach(exc)
                    return False
            with self._cond:
                self._done += 1
                if self._outage is not None:
                    self._outage_entries += 1
                self._cond.notify_all()
        self._caught_up()
        return True

    def _write(self, entry: Mapping[str, Any]) -> None:
        with self._db.write("write the spooled records", notify=False) as conn:
            if _first_time(conn, entry):
                self._apply(str(entry["op"]), entry["args"])

    def _out_of_reach(self, exc: RecordsError) -> None:
        with self._cond:
            first = self._outage is None
            self._outage = exc
            self._cond.notify_all()  # readers waiting in `settle` give up
        if first:
            _log.warning("%s; the session's records are kept in the local spool %s and "
                         "written when it is back", exc, self.path)

    def _unreplayable(self, entry: Mapping[str, Any], exc: RecordsError) -> bool:
        """Keep an entry the database refuses (its session was interrupted by another room
        meanwhile) whole in the audit trail; False when that cannot be written either (the
        server refuses writes: read-only after a failover, a lock wait timed out), and the
        entry waits in the file for the next try."""
        try:
            with self._db.write("keep an unreplayable spooled record", notify=False) as conn:
                if _first_time(conn, entry):
                    append_audit(conn, SYSTEM_ACTOR, "records.spool_unreplayed",
                                 str(entry["id"]), {"entry": dict(entry), "error": str(exc)})
        except RecordsError as again:
            _log.warning("spooled record %s not written (%s), nor kept in the audit trail "
                         "(%s): it waits in %s", entry["id"], exc, again, self.path)
            return False
        _log.error("spooled record %s could not be written (%s): kept whole in the audit "
                   "trail", entry["id"], exc)
        return True

    def _caught_up(self) -> None:
        """Everything is written: after an outage, verify and audit the replay; empty a
        grown file."""
        with self._cond:
            outage, count = self._outage, self._outage_entries
        if outage is not None:
            try:
                verified = self._db.verify_chain()
                with self._db.write("audit the spool replay", notify=False) as conn:
                    append_audit(conn, SYSTEM_ACTOR, "records.spool_replayed", self.path.name,
                                 {"entries": count, "verified": verified})
            except RecordsError as exc:
                if exc.unreachable:  # gone again: the next round says it
                    return
                _log.error("spool replayed, but its audit entry failed: %s", exc)
                verified = False
            self.replayed.append({"entries": count, "verified": verified})
            _log.warning("records database %s is back: %d spooled record(s) written and the "
                         "audit chain %s", self._db.path, count,
                         "verified" if verified else "FAILED verification")
        with self._cond:
            self._outage, self._outage_entries = None, 0
            if self._done == len(self._entries):
                self._entries, self._done = [], 0
                if self._file is not None and self._file.tell() > TRUNCATE_BYTES:
                    self._file.truncate(0)
                    self._file.seek(0)
            self._cond.notify_all()

    def close(self) -> None:
        """Let the writer catch up (up to `CLOSE_WAIT_S`), then stop it. What still waits
        stays in the file for the next store on this PC; an empty file is removed."""
        self.settle(CLOSE_WAIT_S)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(RETRY_S + 5)
        with self._cond:
            left = len(self._entries) - self._done
            if self._file is not None:
                self._file.close()
                self._file = None
                if not left:
                    self.path.unlink(missing_ok=True)
        if left:
            _log.error("%d record(s) could not be written to %s yet: they stay in %s and are "
                       "written by the next modctl that opens it on this PC", left,
                       self._db.path, self.path)

    # -- spools left by processes that died ------------------------------------------------

    def adopt_orphans(self) -> int:
        """Write every spool in the directory whose process is gone (entries already written
        are skipped by their ids); the number of entries taken over."""
        if not self.directory.is_dir():
            return 0
        adopted = 0
        for path in sorted(self.directory.glob("*.jsonl")):
            if path == self.path:
                continue
            with path.open("r+", encoding="utf-8") as handle:
                if fcntl is not None:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # its process still runs and writes it itself
                entries = _entries(handle.read(), path)
            with self._cond:
                self._entries.extend(entries)
            if self.replay():
                path.unlink(missing_ok=True)
                adopted += len(entries)
        with self._cond:
            if self._done < len(self._entries):  # the server is out of reach: keep trying
                self._ensure_writer()
        return adopted


def _first_time(conn: Connection, entry: Mapping[str, Any]) -> bool:
    """Record the entry's id in the ledger, in the caller's transaction: False when an
    earlier try already committed it (a commit whose answer was lost, an adopted journal)."""
    return conn.execute("INSERT INTO spool_replayed VALUES (?, ?) ON CONFLICT DO NOTHING"
                        " RETURNING entry", (entry["id"], now_iso())).fetchone() is not None


def _entries(text: str, path: Path) -> list[dict[str, Any]]:
    """The entries of a spool file; a last line cut short by a crash was never acknowledged
    to its writer (the fsync had not returned), so it is skipped, with a warning."""
    out: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            _log.warning("spool %s line %d is cut short (a crash while writing it); skipped",
                         path, number)
    return out


def _open_locked(directory: Path, path: Path) -> IO[str]:
    """This store's journal, opened for appending and locked while the store lives (another
    store adopts only journals nobody holds). It is made under a temporary name and renamed
    once locked, so no other store can find it unlocked."""
    directory.mkdir(parents=True, exist_ok=True)
    if path.exists():
        handle = path.open("a", encoding="utf-8")
    else:
        temporary = path.with_suffix(".new")
        handle = temporary.open("a", encoding="utf-8")
        try:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            temporary.rename(path)
        except OSError:
            handle.close()
            raise
        _fsync_dir(directory)
        return handle
    try:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise
    return handle


def _fsync_dir(directory: Path) -> None:
    """Make the new spool file's name durable too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
