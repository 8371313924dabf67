"""Session records: a session's row from open to close, its events, and reading them back.

Every `add_event` is its own committed transaction (durable on return); the telemetry waiting in
the buffer and the event's audit entry ride along in it, at no extra fsync. Closing a session
writes the last telemetry the same way. A session left open by a controller that died (its owner
lock is free) is marked interrupted, never resumed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from controller.records import integrity
from controller.records.database import (
    SYSTEM_ACTOR,
    Database,
    RecordsError,
    append_audit,
    next_audit_id,
    now_iso,
)
from controller.records.sql import Connection, Row
from controller.records.telemetry import Telemetry

EVENT_KINDS = ("state", "command", "reply", "decision", "fault", "note")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_dumps = integrity.dumps  # default=str: an odd value in a detail must never cost an event


def new_session_id() -> str:
    """ULID: 48-bit millisecond wall time + 80 random bits, so ids sort by start time."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


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


class SessionLog:
    """Sessions and their events. Drains `telemetry` into its own transactions."""

    def __init__(self, db: Database, telemetry: Telemetry) -> None:
        self._db = db
        self._telemetry = telemetry
        self._t0: dict[str, float] = {}  # monotonic start of the sessions opened here

    # -- writes ----------------------------------------------------------------------------

    def open(self, *, profile: str, port: str, identity: Mapping[str, Any], operator: str,
             patient: str | None, prescription: Mapping[str, Any], planned_s: float,
             profile_path: str, profile_sha256: str) -> str:
        session_id = new_session_id()
        with self._db.guard("hold its owner lock"):
            self._db.hold_owner_lock()
        with self._db.write("open a session") as conn:
            conn.execute(
                "INSERT INTO sessions (id, profile, port, identity, operator, patient,"
                " prescription, planned_s, started_at, status, owner, profile_path,"
                " profile_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
                (session_id, profile, port, _dumps(identity), operator, patient,
                 _dumps(prescription), planned_s, now_iso(), self._db.token, profile_path,
                 profile_sha256))
            append_audit(conn, operator, "session.open", session_id,
                         {"profile": profile, "port": port, "patient": patient,
                          "planned_s": planned_s, "profile_path": profile_path,
                          "profile_sha256": profile_sha256},
                         [integrity.ref(conn, "sessions", session_id)])
        self._t0[session_id] = time.monotonic()
        return session_id

    def set_identity(self, session_id: str, identity: Mapping[str, Any]) -> None:
        with self._db.write("record the device identity") as conn:
            row = self._open_row(conn, session_id)
            conn.execute("UPDATE sessions SET identity = ? WHERE id = ?",
                         (_dumps(identity), session_id))
            append_audit(conn, row["operator"], "session.identity", session_id,
                         {"identity": dict(identity)},
                         [integrity.ref(conn, "sessions", session_id)])

    def _open_row(self, conn: Connection, session_id: str) -> Row:
        row = conn.execute("SELECT status, operator FROM sessions WHERE id = ?",
                           (session_id,)).fetchone()
        if row is None or row["status"] != "open":
            state = "unknown" if row is None else row["status"]
            raise RecordsError(self._db.path, f"session {session_id} is {state}, not open")
        return row

    def close(self, session_id: str, outcome: str, reason: str, stop_source: str | None,
              delivered_s: float, dose: Mapping[str, Any] | None,
              device_elapsed_s: float | None, *, drain: bool = True) -> None:
        """`drain=False`: leave the telemetry buffer alone (a journaled close: the journal
        carries its own samples, and the buffer's are not covered by its ledger)."""
        with self._db.write("close a session") as conn:
            entry_id = next_audit_id(conn)
            refs = self._telemetry.drain(conn, entry_id) if drain else []
            row = self._open_row(conn, session_id)
            conn.execute(
                "UPDATE sessions SET status = 'closed', outcome = ?, reason = ?,"
                " stop_source = ?, delivered_s = ?, dose = ?, ended_at = ?,"
                " device_elapsed_s = ? WHERE id = ?",
                (outcome, reason, stop_source, delivered_s,
                 None if dose is None else _dumps(dose), now_iso(), device_elapsed_s,
                 session_id))
            refs.append(integrity.ref(conn, "sessions", session_id))
            append_audit(conn, row["operator"], "session.close", session_id,
                         {"outcome": outcome, "reason": reason, "stop_source": stop_source,
                          "delivered_s": delivered_s, "device_elapsed_s": device_elapsed_s,
                          "dose": dose},
                         refs, entry_id)
        self._t0.pop(session_id, None)

    def mark_interrupted(self) -> list[SessionRow]:
        marked: list[str] = []
        with self._db.write("mark interrupted sessions") as conn:
            for row in conn.execute("SELECT id, owner, started_at FROM sessions"
                                    " WHERE status = 'open'").fetchall():
                if self._db.owner_alive(row["owner"]):
                    continue
                sid = row["id"]
                delivered = _latest(conn, sid, "delivered_s")
                dose = _latest(conn, sid, "dose")
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
                detail = {"state": "interrupted", "found_at": now_iso(),
                          "delivered_s": delivered, "device_elapsed_s": device_elapsed}
                seq = _insert_event(conn, sid, last[0] or 0.0, "state", detail, delivered, dose)
                append_audit(conn, SYSTEM_ACTOR, "session.interrupted", sid,
                             {**detail, "dose": _loads(dose)},
                             [integrity.ref(conn, "sessions", sid),
                              integrity.event_ref(conn, sid, seq)])
                marked.append(sid)
        with self._db.read("read sessions") as conn:
            return [_session(conn, sid) for sid in marked]

    def offset(self, session_id: str, t_s: float | None) -> float:
        """`t_s`, or monotonic seconds since the session was opened in this store."""
        if t_s is not None:
            return t_s
        if session_id not in self._t0:
            raise ValueError(f"t_s is required for session {session_id} (opened elsewhere)")
        return time.monotonic() - self._t0[session_id]

    def add_event(self, session_id: str, kind: str, detail: Mapping[str, Any] | None,
                  t_s: float | None, delivered_s: float | None,
                  dose: Mapping[str, Any] | None, *, drain: bool = True) -> int:
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind {kind!r} is not one of {', '.join(EVENT_KINDS)}")
        t = self.offset(session_id, t_s)
        with self._db.write("record an event") as conn:
            entry_id = next_audit_id(conn)
            refs = self._telemetry.drain(conn, entry_id) if drain else []
            seq = _insert_event(conn, session_id, t, kind, detail or {}, delivered_s,
                                None if dose is None else _dumps(dose))
            refs.append(integrity.event_ref(conn, session_id, seq))
            append_audit(conn, SYSTEM_ACTOR, "event.add", session_id, {"kind": kind}, refs,
                         entry_id)
            return seq

    # -- reads -----------------------------------------------------------------------------

    def newest_first(self, limit: int | None, patient: str | None,
                     profile: str | None) -> list[SessionRow]:
        with self._db.read("list sessions") as conn:
            rows = conn.execute(
                "SELECT * FROM sessions WHERE (?1 IS NULL OR patient = ?1)"
                " AND (?2 IS NULL OR profile = ?2) ORDER BY started_at DESC, id DESC"
                + ("" if limit is None else f" LIMIT {int(limit)}"),
                (patient, profile)).fetchall()
        return [_row(r) for r in rows]

    def get(self, session_id: str) -> SessionRow | None:
        with self._db.read("read a session") as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM sessions WHERE id = ?1 OR (length(?1) >= 4 AND id LIKE ?1 || '%')"
                " ORDER BY id = ?1 DESC LIMIT 2", (session_id.upper(),))]
            if len(ids) == 2 and ids[0] != session_id.upper():
                raise RecordsError(self._db.path, f"session id prefix {session_id} is ambiguous")
            return _session(conn, ids[0]) if ids else None

    def oldest_first(self, patient: str | None) -> list[SessionRow]:
        """Every session (of one patient, unless None) with its events, in one snapshot."""
        with self._db.read("export sessions") as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM sessions WHERE ?1 IS NULL OR patient = ?1"
                " ORDER BY started_at, id", (patient,))]
            return [_session(conn, sid) for sid in ids]


def _insert_event(conn: Connection, sid: str, t_s: float, kind: str,
                  detail: Mapping[str, Any], delivered_s: float | None,
                  dose: str | None) -> int:
    seq = int(conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events"
                           " WHERE session_id = ?", (sid,)).fetchone()[0])
    conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (sid, seq, t_s, now_iso(), kind, _dumps(detail), delivered_s, dose))
    return seq


def _latest(conn: Connection, sid: str, column: str) -> Any:
    row = conn.execute(
        f"SELECT {column} FROM (SELECT t_s, {column} FROM events WHERE session_id = ?1"
        f" UNION ALL SELECT t_s, {column} FROM samples WHERE session_id = ?1) AS latest"
        f" WHERE {column} IS NOT NULL ORDER BY t_s DESC LIMIT 1", (sid,)).fetchone()
    return None if row is None else row[0]


def _row(r: Row, events: tuple[EventRow, ...] = ()) -> SessionRow:
    return SessionRow(
        id=r["id"], profile=r["profile"], port=r["port"], identity=_loads(r["identity"]),
        operator=r["operator"], patient=r["patient"],
        prescription=_loads(r["prescription"]), planned_s=r["planned_s"],
        started_at=r["started_at"], status=r["status"], outcome=r["outcome"],
        reason=r["reason"], stop_source=r["stop_source"], delivered_s=r["delivered_s"],
        dose=_loads(r["dose"]), ended_at=r["ended_at"], events=events,
        profile_path=r["profile_path"], profile_sha256=r["profile_sha256"],
        device_elapsed_s=r["device_elapsed_s"])


def _session(conn: Connection, sid: str) -> SessionRow:
    events = tuple(
        EventRow(e["seq"], e["t_s"], e["at"], e["kind"], _loads(e["detail"]),
                 e["delivered_s"], _loads(e["dose"]))
        for e in conn.execute("SELECT * FROM events WHERE session_id = ? ORDER BY seq",
                              (sid,)))
    row = conn.execute("SELECT * FROM sessions WHERE id = ?", (sid,)).fetchone()
    return _row(row, events)
