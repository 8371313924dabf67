"""The clinic service's user accounts: names, roles, Argon2id password hashes.

Accounts live in the records database (`controller.records.user_table`); every change is on
the audit chain, never with the password or its hash. Names are 1-64 letters, digits, '.', '_'
or '-' and compare without case. An account is disabled, never deleted (the audit trail names
it), and a name is never reused.

`verify` answers in the same time whether the name is unknown, the account disabled or the
password wrong: it always runs one Argon2 verification, against a dummy hash when there is no
account, so response times do not tell which names exist.
"""

from __future__ import annotations

import builtins
import re
import secrets
import threading
from dataclasses import dataclass
from typing import cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from controller.clinic.roles import ADMIN, ROLES, Role
from controller.records.database import SYSTEM_ACTOR
from controller.records.store import RecordStore
from controller.records.user_table import UserRow, UserTableError

__all__ = ["NAME_PATTERN", "PASSWORD_MAX", "PASSWORD_MIN", "ROLES", "Account", "AccountConflict",
           "AccountError", "Accounts", "Role", "check_name", "check_password", "check_role"]

# Names are typed at a login form and the command line, and printed in columns and the audit.
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
# NIST SP 800-63B asks for at least 8; 12 makes a guessed password unlikely within the login
# rate limits for the life of the service, and still fits a pass phrase of three words.
PASSWORD_MIN = 12
# Bounds the work one login request can cause; far longer than any pass phrase.
PASSWORD_MAX = 1024


class AccountError(Exception):
    """A value is wrong or a change is refused; the message is a sentence naming the field."""


class AccountConflict(AccountError):
    """Refused by the accounts as they are: the name is taken, unknown, or disabled."""


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    disabled: bool
    created: str
    """When the account was added (UTC, ISO 8601)."""
    changed: str
    """Its last change (added, password changed, disabled); a login issued before it ends."""

    def may(self, role: Role) -> bool:
        """Whether this account may act as `role`: its own role, or anything for an admin; a
        disabled account may do nothing."""
        return not self.disabled and (self.role == role or self.role == ADMIN)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        shown = name if len(name) <= 70 else name[:64] + "..."
        raise AccountError(f"user name {shown!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def check_role(role: str) -> Role:
    if role in ROLES:
        return cast(Role, role)
    raise AccountError(f"role {role!r}: use one of {', '.join(ROLES)}")


def check_password(password: str) -> str:
    if len(password) < PASSWORD_MIN:
        raise AccountError(f"password: too short ({len(password)} characters); use at least "
                           f"{PASSWORD_MIN}")
    if len(password) > PASSWORD_MAX:
        raise AccountError(f"password: too long ({len(password)} characters); use at most "
                           f"{PASSWORD_MAX}")
    if not _encodable(password):
        raise AccountError("password: contains characters that are not valid text (lone "
                           "surrogates); type it again")
    return password


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _account(row: UserRow) -> Account:
    return Account(name=row.name, role=check_role(row.role), disabled=row.disabled,
                   created=row.created_at, changed=row.changed_at)


class Accounts:
    """The accounts in `store`. `hasher`: Argon2id with argon2-cffi's default parameters
    unless given (tests pass a cheap one). Safe to share between threads."""

    def __init__(self, store: RecordStore, hasher: PasswordHasher | None = None) -> None:
        self._store = store
        self._hasher = hasher or PasswordHasher()
        self._dummy: str | None = None
        self._dummy_lock = threading.Lock()

    def check_new(self, name: str, role: str) -> None:
        """AccountError unless an account `name` with `role` may be added (the password
        aside): a caller checks before asking for a password."""
        check_name(name)
        check_role(role)
        old = self._store.user(name)
        if old is not None:
            raise AccountConflict(f"user '{old.name}' already exists"
                                  + (" (disabled; names are never reused)" if old.disabled
                                     else ""))

    def check_changeable(self, name: str) -> Account:
        """The account `name` when it exists and is enabled, else AccountError."""
        check_name(name)
        row = self._store.user(name)
        if row is None:
            raise AccountConflict(f"user '{name}' does not exist")
        if row.disabled:
            raise AccountConflict(f"user '{row.name}' is disabled")
        return _account(row)

    def add(self, name: str, role: str, password: str, actor: str) -> Account:
        self.check_new(name, role)  # before the costly hash; the table checks again as it writes
        checked = check_role(role)
        check_password(password)
        digest = self._hasher.hash(password)
        try:
            return _account(self._store.add_user(name, checked, digest, actor))
        except UserTableError as exc:
            raise AccountConflict(str(exc)) from None

    def list(self) -> builtins.list[Account]:
        """Every account, disabled ones included, by name."""
        return [_account(r) for r in self._store.users()]

    def get(self, name: str) -> Account | None:
        """The account of that name (in any case), disabled or not; None when there is none."""
        if not NAME_PATTERN.fullmatch(name):
            return None
        row = self._store.user(name)
        return None if row is None else _account(row)

    def disable(self, name: str, actor: str) -> Account:
        """Disable the account: it can no longer log in, and its logins end."""
        check_name(name)
        try:
            return _account(self._store.disable_user(name, actor))
        except UserTableError as exc:
            raise AccountConflict(str(exc)) from None

    def set_password(self, name: str, password: str, actor: str) -> None:
        """A new password for an enabled account; logins issued before it end."""
        check_password(password)
        account = self.check_changeable(name)  # before the costly hash; the table checks again
        digest = self._hasher.hash(password)
        try:
            self._store.set_user_password(account.name, digest, actor)
        except UserTableError as exc:
            raise AccountConflict(str(exc)) from None

    def verify(self, name: str, password: str) -> Account | None:
        """The account when `password` is its password and it is enabled; None otherwise.

        One Argon2 verification runs whatever the case (a dummy hash stands in for an
        unknown name), so the time taken does not tell which names exist. A hash made with
        older parameters than the hasher's is replaced (audited "user.rehash")."""
        dummy = self._dummy_hash()
        row = self._store.user(name) if NAME_PATTERN.fullmatch(name) else None
        usable = len(password) <= PASSWORD_MAX and _encodable(password)
        ok = self._check(row.password_hash if row is not None else dummy,
                         password if usable else "-")
        if row is None or row.disabled or not ok or not usable:
            return None
        if self._hasher.check_needs_rehash(row.password_hash):
            try:
                row = self._store.set_user_password(row.name, self._hasher.hash(password),
                                                    SYSTEM_ACTOR, rehash=True)
            except UserTableError:  # disabled meanwhile
                return None
        return _account(row)

    def _check(self, digest: str, password: str) -> bool:
        try:
            return self._hasher.verify(digest, password)
        except (VerificationError, InvalidHashError):
            return False

    def _dummy_hash(self) -> str:
        """A hash of a random password, made on first use with this hasher's parameters."""
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
            return self._dummy
