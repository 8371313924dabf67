"""The clinic service's user accounts: name, role, password hash, disabled or not.

Only storage lives here; the rules (name form, password length, hashing) are
`controller.service.accounts`. Names compare without case (the column is ``COLLATE NOCASE``)
and are never reused: an account is disabled, never deleted, since the audit trail names it.

Every write is audited in its own transaction with the row's reference (table, key and the
SHA-256 of the row, as `controller.records.integrity` keeps them for the other tables). The audit
detail never holds the password hash itself: a row's SHA-256 cannot be checked against a guessed
password without the hash's random salt, which stays in the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.records import integrity
from controller.records.database import Database, append_audit, now_iso
from controller.records.sql import Connection, Row


class UserTableError(Exception):
    """A change to an account is refused (the name is taken, unknown, or disabled)."""


@dataclass(frozen=True)
class UserRow:
    name: str
    role: str
    password_hash: str
    disabled: bool
    created_by: str
    created_at: str
    changed_by: str
    changed_at: str


# Names compare without case (ASCII), on both backends.
_BY_NAME = "SELECT * FROM users WHERE lower(name) = lower(?)"


def _row(r: Row) -> UserRow:
    return UserRow(name=r["name"], role=r["role"], password_hash=r["password_hash"],
                   disabled=bool(r["disabled"]), created_by=r["created_by"],
                   created_at=r["created_at"], changed_by=r["changed_by"],
                   changed_at=r["changed_at"])


def _after(previous: str) -> str:
    """The time stamp of a change now, later than `previous` even within its millisecond or
    after the clock was set back: a login made before a change must see a different time."""
    now = datetime.now(UTC)
    floor = datetime.fromisoformat(previous) + timedelta(milliseconds=1)
    return max(now, floor).isoformat(timespec="milliseconds")


def _ref(conn: Connection, name: str) -> dict[str, Any]:
    row = conn.execute(_BY_NAME, (name,)).fetchone()
    return {"table": "users", "key": row["name"],
            "sha256": integrity.row_hash(conn, "users", row)}


class UserTable:
    """The `users` table, written through `db` (composed into `RecordStore`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_user(self, name: str, role: str, password_hash: str, actor: str) -> UserRow:
        with self._db.write("add an account") as conn:
            old = conn.execute(_BY_NAME, (name,)).fetchone()
            if old is not None:
                state = " (disabled; names are never reused)" if old["disabled"] else ""
                raise UserTableError(f"user '{old['name']}' already exists{state}")
            now = now_iso()
            conn.execute("INSERT INTO users (name, role, password_hash, disabled, created_by,"
                         " created_at, changed_by, changed_at) VALUES (?, ?, ?, 0, ?, ?, ?, ?)",
                         (name, role, password_hash, actor, now, actor, now))
            append_audit(conn, actor, "user.add", f"user/{name}", {"role": role},
                         [_ref(conn, name)])
            return self._get(conn, name)

    def disable_user(self, name: str, actor: str) -> UserRow:
        with self._db.write("disable an account") as conn:
            row = self._existing(conn, name)
            conn.execute("UPDATE users SET disabled = 1, changed_by = ?, changed_at = ?"
                         " WHERE name = ?", (actor, _after(row.changed_at), row.name))
            append_audit(conn, actor, "user.disable", f"user/{row.name}", {"role": row.role},
                         [_ref(conn, row.name)])
            return self._get(conn, row.name)

    def set_user_password(self, name: str, password_hash: str, actor: str, *,
                          rehash: bool = False) -> UserRow:
        """A new password (audited "user.passwd"), or the same one hashed again with the
        hasher's current parameters (`rehash`, audited "user.rehash": not a change the
        account's holder made, so its last-change time stays and its logins go on)."""
        with self._db.write("change a password") as conn:
            row = self._existing(conn, name)
            if rehash:
                conn.execute("UPDATE users SET password_hash = ? WHERE name = ?",
                             (password_hash, row.name))
            else:
                conn.execute("UPDATE users SET password_hash = ?, changed_by = ?,"
                             " changed_at = ? WHERE name = ?",
                             (password_hash, actor, _after(row.changed_at), row.name))
            append_audit(conn, actor, "user.rehash" if rehash else "user.passwd",
                         f"user/{row.name}", {}, [_ref(conn, row.name)])
            return self._get(conn, row.name)

    def users(self) -> list[UserRow]:
        with self._db.read("list accounts") as conn:
            rows = conn.execute("SELECT * FROM users ORDER BY lower(name), name").fetchall()
        return [_row(r) for r in rows]

    def user(self, name: str) -> UserRow | None:
        """The account of that name, in any case; disabled ones included."""
        with self._db.read("read an account") as conn:
            row = conn.execute(_BY_NAME, (name,)).fetchone()
        return None if row is None else _row(row)

    @staticmethod
    def _get(conn: Connection, name: str) -> UserRow:
        return _row(conn.execute(_BY_NAME, (name,)).fetchone())

    @staticmethod
    def _existing(conn: Connection, name: str) -> UserRow:
        r = conn.execute(_BY_NAME, (name,)).fetchone()
        if r is None:
            raise UserTableError(f"user '{name}' does not exist")
        row = _row(r)
        if row.disabled:
            raise UserTableError(f"user '{row.name}' is disabled")
        return row
