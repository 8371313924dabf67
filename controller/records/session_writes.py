"""A running session's writes (its identity, events, telemetry, close, and audit entries).

On the embedded SQLite file they are written at once, and a write that fails is a records
fault (docs/design.md §2.9). On a shared PostgreSQL database they go through the local journal
(`controller.records.spool`): fsynced locally before the call returns, written to the server by
a writer thread, so a session never waits on the network and an outage never stops it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from controller.records.database import Database, RecordsError
from controller.records.sessions import SessionLog
from controller.records.spool import Spool, SpoolActive, default_spool_dir
from controller.records.telemetry import Telemetry

_T = TypeVar("_T")


class SessionWrites:
    """The session path's writes of one store."""

    def __init__(self, db: Database, sessions: SessionLog, samples: Telemetry,
                 spool_dir: Path | None) -> None:
        self._db = db
        self._sessions = sessions
        self._samples = samples
        self.spool: Spool | None = None
        if db.shared:
            # One folder per database (its identity, not the URL that reached it): a journal
            # is only ever written into the database it was written for.
            with db.read("read the database's identity") as conn:
                identity = str(conn.execute("SELECT id FROM database_identity").fetchone()[0])
            self.spool = Spool(db, (spool_dir or default_spool_dir()) / identity, self._apply)
            self.spool.adopt_orphans()

    def waiting(self) -> int:
        return 0 if self.spool is None else self.spool.waiting()

    def out_of_reach(self) -> bool:
        return self.spool is not None and self.spool.active

    def refuse_while_spooling(self) -> None:
        """New sessions wait while records go to the spool."""
        if self.spool is not None and self.spool.active:
            raise SpoolActive(self._db.path, "new sessions wait until the records database can "
                                             f"be reached again ({self.spool.waiting()} "
                                             "record(s) wait in the local spool "
                                             f"{self.spool.path})", unreachable=True)

    # -- the writes ------------------------------------------------------------------------

    def identity(self, session_id: str, identity: Mapping[str, Any]) -> None:
        self._do("identity", {"session_id": session_id, "identity": dict(identity)},
                 lambda: self._sessions.set_identity(session_id, identity), None)

    def event(self, session_id: str, kind: str, detail: Mapping[str, Any] | None, t_s: float,
              delivered_s: float | None, dose: Mapping[str, Any] | None) -> int:
        """The event's seq, or 0 when it was spooled."""
        return self._do(
            "event", {"session_id": session_id, "kind": kind, "detail": dict(detail or {}),
                      "t_s": t_s, "delivered_s": delivered_s,
                      "dose": None if dose is None else dict(dose)},
            lambda: self._sessions.add_event(session_id, kind, detail, t_s, delivered_s, dose),
            0)

    def close_session(self, session_id: str, outcome: str, reason: str,
                      stop_source: str | None, delivered_s: float,
                      dose: Mapping[str, Any] | None, device_elapsed_s: float | None) -> None:
        self._do("close", {"session_id": session_id, "outcome": outcome, "reason": reason,
                           "stop_source": stop_source, "delivered_s": delivered_s,
                           "dose": None if dose is None else dict(dose),
                           "device_elapsed_s": device_elapsed_s},
                 lambda: self._sessions.close(session_id, outcome, reason, stop_source,
                                              delivered_s, dose, device_elapsed_s), None)

    def audit(self, actor: str, action: str, subject: str,
              detail: Mapping[str, Any] | None) -> int:
        """The entry's id, or 0 when it was spooled."""
        if detail and "rows" in detail:
            raise ValueError("audit detail key 'rows' is reserved for the records' row hashes")
        return self._direct("audit", {"actor": actor, "action": action, "subject": subject,
                                      "detail": dict(detail or {})},
                            lambda: self._db.audit(actor, action, subject, detail), 0)

    def flush(self) -> None:
        """Write buffered telemetry now (journal it, on a shared database)."""
        if self.spool is not None:
            self._spool_samples()
            return
        self._samples.flush()

    def settle(self) -> None:
        """Before a read of this store's own records: let its journal reach the database."""
        if self.spool is not None:
            self.spool.settle()

    def close(self) -> None:
        """Let the journal reach the database; what cannot stays on disk for the next store."""
        if self.spool is not None:
            self.spool.close()

    # -- the spool -------------------------------------------------------------------------

    def _do(self, op: str, args: Mapping[str, Any], write: Callable[[], _T], default: _T) -> _T:
        """On a shared database, journal the write (the writer thread applies it); on the
        embedded file, write it now."""
        if self.spool is None:
            return write()
        self._spool_samples()  # telemetry first: it was taken before this write
        self.spool.put(op, args)
        return default

    def _direct(self, op: str, args: Mapping[str, Any], write: Callable[[], _T],
                default: _T) -> _T:
        """Write now (the caller wants the result), or journal it while the shared database
        is out of reach."""
        spool = self.spool
        if spool is not None and spool.active:
            spool.put(op, args)
            return default
        try:
            return write()
        except RecordsError as exc:
            if spool is None or not exc.unreachable:
                raise
            spool.put(op, args)
            return default

    def _spool_samples(self) -> None:
        assert self.spool is not None
        batch = self._samples.take_pending()
        if batch:
            self.spool.put("samples", {"rows": batch})

    def _apply(self, op: str, args: Mapping[str, Any]) -> None:
        """Write one spooled entry (the spool's replay, inside its transaction)."""
        a = dict(args)
        if op == "samples":
            self._samples.write_batch([(s[0], s[1], s[2], s[3], s[4]) for s in a["rows"]])
        elif op == "event":
            self._sessions.add_event(a["session_id"], a["kind"], a["detail"], a["t_s"],
                                     a["delivered_s"], a["dose"], drain=False)
        elif op == "identity":
            self._sessions.set_identity(a["session_id"], a["identity"])
        elif op == "close":
            self._sessions.close(a["session_id"], a["outcome"], a["reason"], a["stop_source"],
                                 a["delivered_s"], a["dose"], a["device_elapsed_s"],
                                 drain=False)
        elif op == "audit":
            self._db.audit(a["actor"], a["action"], a["subject"], a["detail"])
        else:
            raise ValueError(f"unknown spooled write {op!r}")
