"""Logins to the clinic service: tokens, the failed-login limits, and the login itself.

Pure logic (no HTTP here); every clock is an injected monotonic one.

- `TokenBook`: bearer tokens (`secrets.token_urlsafe(32)`), each with a CSRF value. Only a
  token's SHA-256 is kept, as the key: the tokens themselves are never held, so a memory dump
  or a debug print of the book shows none. A token ends after `idle_s` unused, at logout, or
  when its account is disabled or changed (`Authenticator.current`).
- `LoginLimiter`: failed logins counted per account name and per client address; past the
  limit, that name or address is locked for a while. Attempts still being checked count
  too, so parallel guesses cannot outrun the limit while Argon2 works.
- `Authenticator`: the login (one message for an unknown name, a disabled account and a
  wrong password), logout, and the current login of a token. Logins, failed logins and
  lockouts are audited; refusals during a lockout are not (no password is checked then, and an
  attacker could otherwise fill the audit trail).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from controller.records.database import SYSTEM_ACTOR
from controller.records.store import RecordStore
from controller.service.accounts import Account, Accounts

Clock = Callable[[], float]

# A login lasts a clinic day while it is used; a console left alone overnight asks again.
DEFAULT_IDLE_S = 12 * 3600
# 32 random bytes (256 bits), as the secrets module recommends for tokens.
TOKEN_BYTES = 32
WRONG_LOGIN = "wrong user name or password"
# Actor of a failed login's audit entry: who typed it is not known.
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Limit:
    """`failures` failed logins within `window_s` lock for `lock_s`."""

    failures: int
    window_s: float
    lock_s: float


# Per account name: 5 tries cover a few typos; at 5 guesses per 10 minutes a 12-character
# password is not guessed. An attacker can lock a name out this way, but only for 5 minutes.
ACCOUNT_LIMIT = Limit(failures=5, window_s=300.0, lock_s=300.0)
# Per client address: a clinic's computers may share one address (NAT), so several people's
# typos add up here; it stops one machine trying many names.
ADDRESS_LIMIT = Limit(failures=20, window_s=300.0, lock_s=300.0)
# Names and addresses tracked at most: random names must not grow memory without bound. Past it,
# the least recently failed entries without a lock or an attempt under way are forgotten.
MAX_TRACKED = 10_000
# What to tell a client whose attempt waits only for others still being checked (Argon2 takes
# about 0.1 s each).
IN_FLIGHT_RETRY_S = 1.0


# -- tokens ------------------------------------------------------------------------------------

@dataclass
class Login:
    token: str
    csrf: str
    account: Account
    issued: float
    last_used: float

    def csrf_matches(self, value: str) -> bool:
        """Whether `value` is this login's CSRF value (compared in constant time)."""
        return hmac.compare_digest(self.csrf.encode(), value.encode("utf-8", "surrogatepass"))


@dataclass
class _Entry:
    csrf: str
    account: Account
    issued: float
    last_used: float


def _key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenBook:
    """Logins by token; safe to share between threads."""

    def __init__(self, idle_s: float = DEFAULT_IDLE_S, clock: Clock = time.monotonic) -> None:
        if not idle_s > 0:
            raise ValueError(f"idle_s: {idle_s!r} is not a positive number of seconds")
        self.idle_s = idle_s
        self._clock = clock
        self._logins: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def issue(self, account: Account) -> Login:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        csrf = secrets.token_urlsafe(TOKEN_BYTES)
        with self._lock:
            now = self._clock()
            self._drop_expired(now)  # logins nobody ends are not kept for ever
            self._logins[_key(token)] = _Entry(csrf, account, now, now)
        return Login(token, csrf, account, now, now)

    def check(self, token: str) -> Login | None:
        """The token's login, now marked used; None when unknown or idle too long (it is
        then forgotten)."""
        key = _key(token)
        with self._lock:
            entry = self._logins.get(key)
            if entry is None:
                return None
            now = self._clock()
            if now - entry.last_used > self.idle_s:
                del self._logins[key]
                return None
            entry.last_used = now
            return Login(token, entry.csrf, entry.account, entry.issued, now)

    def revoke(self, token: str) -> None:
        with self._lock:
            self._logins.pop(_key(token), None)

    def revoke_account(self, name: str) -> None:
        """End every login of that account (names compare without case)."""
        folded = name.casefold()
        with self._lock:
            for key in [k for k, e in self._logins.items()
                        if e.account.name.casefold() == folded]:
                del self._logins[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._logins)

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, e in self._logins.items() if now - e.last_used > self.idle_s]:
            del self._logins[key]


# -- failed-login limits -----------------------------------------------------------------------

@dataclass
class _Count:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = -math.inf
    in_flight: int = 0


class LoginLimiter:
    """Failed logins per account name (without case) and per client address; safe to share
    between threads. An attempt is `begin`-ed, then ends `failed`, `succeeded` or `cancel`-ed
    (failed and succeeded also work without a begin)."""

    def __init__(self, account: Limit = ACCOUNT_LIMIT, address: Limit = ADDRESS_LIMIT,
                 clock: Clock = time.monotonic, max_tracked: int = MAX_TRACKED) -> None:
        self._limits = {"account": account, "address": address}
        self._counts: dict[str, OrderedDict[str, _Count]] = {
            "account": OrderedDict(), "address": OrderedDict()}
        self._clock = clock
        self._max = max_tracked
        self._lock = threading.Lock()

    def retry_after(self, username: str, address: str) -> float | None:
        """Seconds until an attempt for this name from this address may be made; None: now."""
        with self._lock:
            return self._wait(self._keys(username, address), self._clock())

    def locks(self, username: str, address: str) -> dict[str, float]:
        """The locks in force ("account", "address") and their seconds left."""
        with self._lock:
            now = self._clock()
            out = {}
            for scope, key in self._keys(username, address):
                count = self._counts[scope].get(key)
                if count is not None and count.locked_until > now:
                    out[scope] = count.locked_until - now
            return out

    def begin(self, username: str, address: str) -> float | None:
        """Admit an attempt (None) and count it until it ends, or say how long to wait."""
        with self._lock:
            keys = self._keys(username, address)
            wait = self._wait(keys, self._clock())
            if wait is None:
                for scope, key in keys:
                    self._count(scope, key).in_flight += 1
            return wait

    def failed(self, username: str, address: str) -> tuple[str, ...]:
        """Count a failed attempt; returns the scopes ("account", "address") it locked."""
        with self._lock:
            now = self._clock()
            locked = []
            for scope, key in self._keys(username, address):
                count = self._count(scope, key)
                self._end(count)
                limit = self._limits[scope]
                self._forget_old(count, now, limit)
                count.failures.append(now)
                if len(count.failures) >= limit.failures and count.locked_until <= now:
                    count.locked_until = now + limit.lock_s
                    count.failures.clear()
                    locked.append(scope)
                self._counts[scope].move_to_end(key)
            self._prune(now)
            return tuple(locked)

    def succeeded(self, username: str, address: str) -> None:
        """The account's failures are forgotten. The address keeps its count: a valid login
        between guesses must not reset the limit on a machine trying many names."""
        with self._lock:
            for scope, key in self._keys(username, address):
                count = self._counts[scope].get(key)
                if count is not None:
                    self._end(count)
                    if scope == "account":
                        count.failures.clear()

    def cancel(self, username: str, address: str) -> None:
        """End an attempt that could not be checked (the records failed): it counts nothing."""
        with self._lock:
            for scope, key in self._keys(username, address):
                count = self._counts[scope].get(key)
                if count is not None:
                    self._end(count)

    def tracked(self) -> int:
        """Names and addresses currently tracked."""
        with self._lock:
            return sum(len(c) for c in self._counts.values())

    # -- inside the lock -------------------------------------------------------------------

    @staticmethod
    def _keys(username: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("account", username.casefold()), ("address", address)

    def _count(self, scope: str, key: str) -> _Count:
        table = self._counts[scope]
        count = table.get(key)
        if count is None:
            count = table[key] = _Count()
        return count

    @staticmethod
    def _end(count: _Count) -> None:
        count.in_flight = max(0, count.in_flight - 1)

    @staticmethod
    def _forget_old(count: _Count, now: float, limit: Limit) -> None:
        while count.failures and now - count.failures[0] >= limit.window_s:
            count.failures.popleft()

    def _wait(self, keys: tuple[tuple[str, str], ...], now: float) -> float | None:
        waits = []
        for scope, key in keys:
            count = self._counts[scope].get(key)
            if count is None:
                continue
            if count.locked_until > now:
                waits.append(count.locked_until - now)
                continue
            limit = self._limits[scope]
            self._forget_old(count, now, limit)
            if len(count.failures) + count.in_flight >= limit.failures:
                waits.append(IN_FLIGHT_RETRY_S)  # the budget is held by attempts under way
        return max(waits) if waits else None

    def _prune(self, now: float) -> None:
        for scope, table in self._counts.items():
            if len(table) <= self._max:
                continue
            limit = self._limits[scope]
            for key in list(table):  # least recently failed first
                count = table[key]
                self._forget_old(count, now, limit)
                if not count.failures and count.locked_until <= now and not count.in_flight:
                    del table[key]
            for key in list(table):
                if len(table) <= self._max:
                    break
                if table[key].locked_until <= now and not table[key].in_flight:
                    del table[key]


# -- logins ------------------------------------------------------------------------------------

class LoginRefused(Exception):
    """A login is refused: `message` for the user; `retry_after` seconds for a lockout."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def too_many(wait: float) -> str:
    return f"too many failed logins; try again in {math.ceil(wait)} s"


class Authenticator:
    """Logins against `accounts`, audited in `store`. Safe to share between threads."""

    def __init__(self, accounts: Accounts, store: RecordStore, tokens: TokenBook,
                 limiter: LoginLimiter) -> None:
        self.accounts = accounts
        self.store = store
        self.tokens = tokens
        self.limiter = limiter

    def login(self, username: str, password: str, address: str) -> Login:
        """A new login, or LoginRefused: the same message whether the name is unknown, the
        account disabled or the password wrong. Raises RecordsError when the records cannot
        be read or the audit entry written (then no login is issued)."""
        wait = self.limiter.begin(username, address)
        if wait is not None:
            raise LoginRefused(too_many(wait), wait)
        try:
            account = self.accounts.verify(username, password)
        except BaseException:
            self.limiter.cancel(username, address)
            raise
        if account is None:
            self._refuse(username, address)
        self.limiter.succeeded(username, address)
        self.store.audit(account.name, "user.login", f"user/{account.name}",
                         {"address": address})
        return self.tokens.issue(account)

    def _refuse(self, username: str, address: str) -> NoReturn:
        locked = self.limiter.failed(username, address)
        known = self.accounts.get(username)
        # A name nobody has is not written down: people type their password there by mistake.
        subject = f"user/{known.name}" if known is not None else "user/?"
        reason = ("unknown user" if known is None
                  else "account disabled" if known.disabled else "wrong password")
        self.store.audit(ANONYMOUS, "user.login.failed", subject,
                         {"address": address, "reason": reason})
        if not locked:
            raise LoginRefused(WRONG_LOGIN)
        locks = self.limiter.locks(username, address)
        wait = max(locks.values(), default=max(ACCOUNT_LIMIT.lock_s, ADDRESS_LIMIT.lock_s))
        self.store.audit(SYSTEM_ACTOR, "user.login.locked", subject,
                         {"address": address, "locked": list(locked),
                          "lock_s": math.ceil(wait)})
        raise LoginRefused(too_many(wait), wait)

    def logout(self, token: str) -> None:
        login = self.tokens.check(token)
        self.tokens.revoke(token)
        if login is not None:
            self.store.audit(login.account.name, "user.logout",
                             f"user/{login.account.name}", {})

    def current(self, token: str) -> Login | None:
        """The token's login while it is valid and its account unchanged and enabled; a token
        whose account was disabled or had its password changed since is ended."""
        login = self.tokens.check(token)
        if login is None:
            return None
        account = self.accounts.get(login.account.name)
        if account is None or account.disabled or account.changed != login.account.changed:
            self.tokens.revoke(token)
            return None
        return login
