"""Clinical notes on a session: body site, skin check before and after, pain score before and
after (0-10), free text.

Written by the clinician after (or during) a treatment, from the CLI (`modctl records note`) or
the console. Notes are append-only: a correction is a new note, and every note is shown, in
order. Each write is audited in its own transaction with the row's reference (table, key and
SHA-256, as `controller.records.integrity` keeps them); the audit detail names the fields given,
not their text.

Values are checked here, so every caller gets the same refusals (`NoteError`, one sentence
naming the field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.records import integrity
from controller.records.database import Database, append_audit, now_iso
from controller.records.sql import Connection, Row

PAIN_MIN = 0
PAIN_MAX = 10
# A body site is a few words ("left shoulder, posterior"); a skin check one sentence; the free
# text a paragraph. The bounds keep a pasted document out of the record and off the report.
BODY_SITE_MAX = 80
SKIN_CHECK_MAX = 200
NOTE_TEXT_MAX = 2000
# A session id prefix shorter than this could match many sessions (as `records show`).
MIN_PREFIX = 4
NOTE_FIELDS = ("body_site", "skin_before", "skin_after", "pain_before", "pain_after", "text")
_TEXT_LIMITS = {"body_site": BODY_SITE_MAX, "skin_before": SKIN_CHECK_MAX,
                "skin_after": SKIN_CHECK_MAX, "text": NOTE_TEXT_MAX}


class NoteError(ValueError):
    """A note that cannot be recorded; the message names the field and says why."""


@dataclass(frozen=True)
class NoteRow:
    id: int
    session_id: str
    body_site: str | None
    skin_before: str | None
    skin_after: str | None
    pain_before: int | None
    pain_after: int | None
    text: str
    actor: str
    recorded_at: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "session_id": self.session_id, "body_site": self.body_site,
                "skin_before": self.skin_before, "skin_after": self.skin_after,
                "pain_before": self.pain_before, "pain_after": self.pain_after,
                "text": self.text, "actor": self.actor, "recorded_at": self.recorded_at}


def _row(r: Row) -> NoteRow:
    return NoteRow(id=int(r["id"]), session_id=r["session_id"], body_site=r["body_site"],
                   skin_before=r["skin_before"], skin_after=r["skin_after"],
                   pain_before=r["pain_before"], pain_after=r["pain_after"], text=r["text"],
                   actor=r["actor"], recorded_at=r["recorded_at"])


def check_text(field: str, value: str | None) -> str | None:
    """`value` stripped, or None when empty; NoteError when it is too long or holds control
    characters (the free text may hold line breaks and tabs)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise NoteError(f"{field}: give text, not {type(value).__name__}")
    text = value.strip()
    allowed = "\n\t" if field == "text" else ""
    if any((ord(c) < 32 and c not in allowed) or ord(c) == 127 for c in text):
        raise NoteError(f"{field}: control characters are not allowed"
                        + (" (line breaks are)" if allowed else ""))
    limit = _TEXT_LIMITS[field]
    if len(text) > limit:
        raise NoteError(f"{field}: at most {limit} characters (got {len(text)})")
    return text or None


def check_pain(field: str, value: object) -> int | None:
    """A pain score: a whole number from 0 to 10 (a numeric rating scale), or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise NoteError(f"{field}: {value!r} is not a pain score: give a whole number from "
                        f"{PAIN_MIN} to {PAIN_MAX}")
    if not PAIN_MIN <= value <= PAIN_MAX:
        raise NoteError(f"{field}: {value} is out of range: give a whole number from "
                        f"{PAIN_MIN} to {PAIN_MAX}")
    return value


class NoteTable:
    """The `session_notes` table, written through `db` (composed into `RecordStore`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_note(self, session_id: str, *, actor: str, body_site: str | None = None,
                 skin_before: str | None = None, skin_after: str | None = None,
                 pain_before: int | None = None, pain_after: int | None = None,
                 text: str = "") -> NoteRow:
        """Record one note on a session (a unique id prefix is enough); NoteError names the
        first value refused, or says that nothing was given."""
        values: dict[str, Any] = {
            "body_site": check_text("body_site", body_site),
            "skin_before": check_text("skin_before", skin_before),
            "skin_after": check_text("skin_after", skin_after),
            "pain_before": check_pain("pain_before", pain_before),
            "pain_after": check_pain("pain_after", pain_after),
            "text": check_text("text", text) or ""}
        given = [name for name in NOTE_FIELDS if values[name] not in (None, "")]
        if not given:
            raise NoteError("the note is empty: give a body site, a skin check, a pain score "
                            "or text")
        who = (actor or "").strip()
        if not who:
            raise NoteError("actor: say who records the note")
        with self._db.write("record a clinical note") as conn:
            sid = self._session_id(conn, session_id)
            cursor = conn.execute(
                "INSERT INTO session_notes (session_id, body_site, skin_before, skin_after,"
                " pain_before, pain_after, text, actor, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (sid, values["body_site"], values["skin_before"], values["skin_after"],
                 values["pain_before"], values["pain_after"], values["text"], who, now_iso()))
            note_id = int(cursor.fetchone()[0])
            append_audit(conn, who, "session.note", sid, {"note": note_id, "fields": given},
                         [integrity.ref(conn, "session_notes", note_id)])
            row = conn.execute("SELECT * FROM session_notes WHERE id = ?", (note_id,)).fetchone()
            return _row(row)

    def notes(self, session_id: str) -> list[NoteRow]:
        """A session's notes, oldest first (the full session id)."""
        with self._db.read("read clinical notes") as conn:
            rows = conn.execute("SELECT * FROM session_notes WHERE session_id = ? ORDER BY id",
                                (session_id,)).fetchall()
        return [_row(r) for r in rows]

    def _session_id(self, conn: Connection, session_id: str) -> str:
        wanted = (session_id or "").strip().upper()
        if not wanted.isascii() or not wanted.isalnum():  # LIKE would read % and _ as wildcards
            raise NoteError(f"session_id: {session_id!r} is not a session id")
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM sessions WHERE id = ?1 OR (length(?1) >= ?2 AND id LIKE ?1 || '%')"
            " ORDER BY id = ?1 DESC LIMIT 2", (wanted, MIN_PREFIX))]
        if not ids:
            raise NoteError(f"session_id: no session {session_id} in {self._db.path}")
        if len(ids) == 2 and ids[0] != wanted:
            raise NoteError(f"session_id: the prefix {session_id} matches more than one "
                            "session: give more of the id")
        return str(ids[0])
