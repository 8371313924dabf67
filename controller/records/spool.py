"""The local spool: a shared records database out of reach never stops a treatment, and never
loses a record.

When a write of a running session (an event, telemetry, the device identity, the close, an
audit entry) fails because the PostgreSQL server cannot be reached, the write is appended to a
local write-ahead file instead, one JSON line per write, fsynced before the call returns: the
session goes on to its planned end, recorded. From then on every such write goes to the spool,
in order, and new sessions are refused (`SpoolActive`) while records cannot be written to the
database. A replay thread tries the server every `RETRY_S`; when it answers, the entries are
written in order, each in one transaction with its id in `spool_replayed`, so an entry is
written exactly once even if the replay itself is cut short and done again. The chain is then
verified and the replay audited (``records.spool_replayed``, with the spool file's SHA-256).

An entry the database can no longer take (its session was marked interrupted by another room
meanwhile) is not dropped: it is written whole into an audit entry ``records.spool_unreplayed``.

A spool left by a process that died (no live flock on it) is replayed by the next store that
opens the same database from this PC, before it marks interrupted sessions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
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

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

SPOOL_ENV = "MODCTL_SPOOL"
# How often the replay thread asks the server whether it is back.
RETRY_S = 2.0

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
    """Records go to the local spool: the database cannot be reached (new sessions wait)."""


class Spool:
    """One store's spool file and its replay."""

    def __init__(self, db: Database, directory: Path, apply: Apply) -> None:
        self._db = db
        self._apply = apply
        self.directory = directory
        self.path = directory / f"{db.token}.jsonl"
        self._lock = threading.Lock()
        self._replaying = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self._done = 0
        self._file: IO[str] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.replayed: list[dict[str, Any]] = []
        """What each finished replay did (for logs and tests)."""

    @property
    def active(self) -> bool:
        with self._lock:
            return len(self._entries) > self._done

    def waiting(self) -> int:
        with self._lock:
            return len(self._entries) - self._done

    # -- writing ---------------------------------------------------------------------------

    def put(self, op: str, args: Mapping[str, Any], cause: RecordsError | None = None) -> None:
        """Append one write, durable on return; starts the replay thread. Raises RecordsError
        (not `unreachable`: a records fault) when the local file cannot be written."""
        entry = {"id": uuid.uuid4().hex, "op": op, "at": now_iso(), "args": dict(args)}
        line = integrity.dumps(entry) + "\n"
        with self._lock:
            first = len(self._entries) == self._done
            try:
                if self._file is None:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    self._file = self.path.open("a", encoding="utf-8")
                    if fcntl is not None:
                        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    _fsync_dir(self.directory)
                self._file.write(line)
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                error = RecordsError(self._db.path, f"cannot write the local spool {self.path} "
                                                    f"while the database is out of reach: "
                                                    f"{exc.strerror or exc}")
                self._db.notify(error)
                raise error from exc
            self._entries.append(entry)
        if first:
            _log.warning("records database %s out of reach (%s): records go to the local "
                         "spool %s until it is back", self._db.path,
                         cause or "no answer", self.path)
        self._start()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="records-spool",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RETRY_S):
            if self.replay():
                return

    # -- replay ----------------------------------------------------------------------------

    def replay(self) -> bool:
        """Write what waits, in order; True when the spool is empty. Never raises: a server
        still out of reach leaves the rest for the next try. One replay at a time."""
        with self._replaying:
            return self._replay()

    def _replay(self) -> bool:
        count = 0
        while True:
            with self._lock:
                if self._done == len(self._entries):
                    break
                entry = self._entries[self._done]
            try:
                self._replay_one(entry)
            except RecordsError as exc:
                if exc.unreachable:
                    return False
                self._unreplayable(entry, exc)
            with self._lock:
                self._done += 1
            count += 1
        if count:
            self._finished(count)
        return True

    def _replay_one(self, entry: Mapping[str, Any]) -> None:
        reclaim = getattr(self._db.backend, "reclaim", None)
        if reclaim is not None:
            with self._db.guard("hold its owner lock again"):
                reclaim()  # the lost connection took the owner lock with it
        with self._db.write("replay the spooled records") as conn:
            new = conn.execute("INSERT INTO spool_replayed VALUES (?, ?) ON CONFLICT DO NOTHING"
                               " RETURNING entry", (entry["id"], now_iso())).fetchone()
            if new is not None:
                self._apply(str(entry["op"]), entry["args"])

    def _unreplayable(self, entry: Mapping[str, Any], exc: RecordsError) -> None:
        _log.error("spooled record %s could not be written (%s): kept whole in the audit "
                   "trail", entry["id"], exc)
        try:
            with self._db.write("keep an unreplayable spooled record") as conn:
                append_audit(conn, SYSTEM_ACTOR, "records.spool_unreplayed", str(entry["id"]),
                             {"entry": dict(entry), "error": str(exc)})
        except RecordsError as again:  # pragma: no cover - the file keeps it
            _log.error("and it could not be audited (%s); it stays in %s", again, self.path)

    def _finished(self, count: int) -> None:
        with self._lock:
            if self._done != len(self._entries):
                return
            text = self.path.read_bytes() if self.path.exists() else b""
            digest = hashlib.sha256(text).hexdigest()
            try:
                verified = self._db.verify_chain()
                with self._db.write("audit the spool replay") as conn:
                    append_audit(conn, SYSTEM_ACTOR, "records.spool_replayed", self.path.name,
                                 {"entries": count, "sha256": digest, "verified": verified})
            except RecordsError as exc:  # the entries are in; the next write will tell
                _log.error("spool replayed, but its audit entry failed: %s", exc)
                return
            self._close_file(remove=True)
            self._entries, self._done = [], 0
        self.replayed.append({"entries": count, "sha256": digest, "verified": verified})
        _log.warning("records database %s is back: %d spooled record(s) written and the "
                     "audit chain %s", self._db.path, count,
                     "verified" if verified else "FAILED verification")

    def _close_file(self, *, remove: bool) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if remove:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the replay thread; a spool still waiting stays on disk for the next store."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(RETRY_S + 5)
        with self._lock:
            self._close_file(remove=False)

    # -- spools left by processes that died ------------------------------------------------

    def adopt_orphans(self) -> int:
        """Replay every spool in the directory whose process is gone; the number replayed."""
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
                        continue  # its process still runs and replays it itself
                entries = _entries(handle.read(), path)
            with self._lock:
                self._entries.extend(entries)
            if self.replay():
                path.unlink(missing_ok=True)
                adopted += len(entries)
        return adopted


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


def _fsync_dir(directory: Path) -> None:
    """Make the new spool file's name durable too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
