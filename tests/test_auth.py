"""Logins: tokens and their idle expiry, failed-login limits, the audited login itself."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.records.store import RecordsError, RecordStore
from controller.service.accounts import Account, Accounts
from controller.service.auth import (
    ACCOUNT_LIMIT,
    ADDRESS_LIMIT,
    DEFAULT_IDLE_S,
    IN_FLIGHT_RETRY_S,
    WRONG_LOGIN,
    Authenticator,
    Limit,
    LoginLimiter,
    LoginRefused,
    TokenBook,
)
from tests.test_accounts import GOOD, OTHER, CountingHasher, assert_no_secret, audit_rows

ADA = Account("ada", "admin", False, "2030-01-01T00:00:00.000+00:00",
              "2030-01-01T00:00:00.000+00:00")
HERE = "10.0.0.5"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- tokens ----------------------------------------------------------------------------------

def test_a_token_is_random_and_only_its_sha256_is_kept(clock: FakeClock) -> None:
    book = TokenBook(clock=clock)
    login = book.issue(ADA)
    other = book.issue(ADA)
    assert len(login.token) == 43 and login.token != other.token  # 32 bytes, base64url
    assert login.csrf != login.token and len(login.csrf) == 43
    assert set(book._logins) == {hashlib.sha256(t.encode()).hexdigest()
                                 for t in (login.token, other.token)}
    assert all(login.token not in repr(e) for e in book._logins.values())
    got = book.check(login.token)
    assert got is not None and (got.token, got.csrf, got.account) == (login.token, login.csrf,
                                                                     ADA)
    assert got.csrf_matches(login.csrf) and not got.csrf_matches(other.csrf)
    assert not got.csrf_matches("") and not got.csrf_matches("\udcff")
    assert book.check("made-up") is None and book.check("") is None


def test_a_token_expires_after_idle_s_unused(clock: FakeClock) -> None:
    book = TokenBook(idle_s=100, clock=clock)
    login = book.issue(ADA)
    for _ in range(5):  # used within the idle time, it lives on
        clock.advance(99)
        got = book.check(login.token)
        assert got is not None and got.last_used == clock.t and got.issued == login.issued
    clock.advance(100.5)
    assert book.check(login.token) is None
    assert len(book) == 0
    clock.advance(-100.5)
    assert book.check(login.token) is None  # it was forgotten, not just refused


def test_expired_logins_are_dropped_when_others_are_issued(clock: FakeClock) -> None:
    book = TokenBook(idle_s=10, clock=clock)
    for _ in range(3):
        book.issue(ADA)
    clock.advance(11)
    book.issue(ADA)
    assert len(book) == 1


def test_revoke_and_revoke_account(clock: FakeClock) -> None:
    book = TokenBook(clock=clock)
    bob = Account("Bob", "clinician", False, "t", "t")
    a, b1, b2 = book.issue(ADA), book.issue(bob), book.issue(bob)
    book.revoke(b1.token)
    book.revoke("unknown")
    assert book.check(b1.token) is None and book.check(b2.token) is not None
    book.revoke_account("bob")
    assert book.check(b2.token) is None and book.check(a.token) is not None


def test_idle_time_must_be_positive() -> None:
    assert DEFAULT_IDLE_S == 12 * 3600
    with pytest.raises(ValueError, match="idle_s"):
        TokenBook(idle_s=0)


# -- the failed-login limiter ----------------------------------------------------------------

def test_five_failures_lock_the_account_for_five_minutes(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock=clock)
    for _ in range(ACCOUNT_LIMIT.failures - 1):
        assert limiter.failed("bob", HERE) == ()
        assert limiter.retry_after("bob", HERE) is None
    assert limiter.failed("BOB", HERE) == ("account",)  # names count without case
    assert limiter.retry_after("bob", "10.9.9.9") == ACCOUNT_LIMIT.lock_s
    assert limiter.retry_after("alice", HERE) is None  # the address is not locked
    clock.advance(ACCOUNT_LIMIT.lock_s - 1)
    assert limiter.retry_after("bob", HERE) == pytest.approx(1)
    clock.advance(1)
    assert limiter.retry_after("bob", HERE) is None
    assert limiter.failed("bob", HERE) == ()  # a fresh count after the lock


def test_failures_older_than_the_window_are_forgotten(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock=clock)
    for _ in range(4):
        limiter.failed("bob", HERE)
    clock.advance(ACCOUNT_LIMIT.window_s)
    assert limiter.failed("bob", HERE) == ()
    assert limiter.retry_after("bob", HERE) is None


def test_success_clears_the_account_count_not_the_address_count(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock=clock)
    for i in range(ADDRESS_LIMIT.failures - 1):
        limiter.failed("bob" if i < 4 else f"user{i}", HERE)
    limiter.succeeded("bob", HERE)
    for _ in range(4):
        assert limiter.failed("bob", "10.0.0.6") == ()
    assert limiter.failed("carol", HERE) == ("address",)
    assert limiter.retry_after("anyone", HERE) == ADDRESS_LIMIT.lock_s
    assert limiter.locks("bob", HERE) == {"address": ADDRESS_LIMIT.lock_s}


def test_attempts_under_way_count_against_the_limit(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock=clock)
    for _ in range(ACCOUNT_LIMIT.failures):
        assert limiter.begin("bob", HERE) is None
    assert limiter.begin("bob", HERE) == IN_FLIGHT_RETRY_S
    limiter.cancel("bob", HERE)
    assert limiter.begin("bob", HERE) is None
    limiter.succeeded("bob", HERE)
    assert limiter.retry_after("bob", HERE) is None


def test_the_limiter_forgets_the_oldest_past_its_size(clock: FakeClock) -> None:
    limiter = LoginLimiter(account=Limit(3, 300, 300), clock=clock, max_tracked=10)
    for _ in range(3):
        limiter.failed("target", "10.1.1.1")
    for i in range(200):
        limiter.failed(f"random{i}", f"10.2.{i // 250}.{i % 250}")
    assert limiter.tracked() <= 20
    assert limiter.retry_after("target", HERE) == pytest.approx(300)  # locks are kept


# -- logins ----------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    with RecordStore(tmp_path / "records.sqlite3") as s:
        yield s


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def accounts(store: RecordStore, hasher: CountingHasher) -> Accounts:
    accounts = Accounts(store, hasher)
    accounts.add("ada", "admin", GOOD, "root")
    accounts.add("bob", "clinician", GOOD, "root")
    return accounts


@pytest.fixture
def authn(accounts: Accounts, store: RecordStore, clock: FakeClock) -> Authenticator:
    return Authenticator(accounts, store, TokenBook(idle_s=600, clock=clock),
                         LoginLimiter(clock=clock))


def new_entries(store: RecordStore, since: int) -> list[tuple[str, str, str, dict[str, object]]]:
    return [(e["actor"], e["action"], e["subject"], json.loads(e["detail"]))
            for e in audit_rows(store)[since:]]


def test_a_login_is_audited_and_current_until_logout(authn: Authenticator,
                                                     store: RecordStore) -> None:
    login = authn.login("ADA", GOOD, HERE)
    assert login.account.name == "ada" and login.account.role == "admin"
    assert authn.current(login.token) is not None
    authn.logout(login.token)
    assert authn.current(login.token) is None
    authn.logout(login.token)  # twice: nothing more
    assert new_entries(store, 2) == [("ada", "user.login", "user/ada", {"address": HERE}),
                                     ("ada", "user.logout", "user/ada", {})]
    assert store.verify_audit().ok


def test_unknown_disabled_and_wrong_get_the_same_answer(authn: Authenticator,
                                                        accounts: Accounts,
                                                        store: RecordStore,
                                                        hasher: CountingHasher) -> None:
    accounts.add("eve", "clinician", GOOD, "root")
    accounts.disable("eve", "root")
    start = len(audit_rows(store))
    typed_as_name = "my-Secret-pass.word"  # a password typed in the name field by mistake
    messages = []
    for name, password, address in (("bob", OTHER, "10.0.0.1"), (typed_as_name, GOOD, "10.0.0.2"),
                                    ("eve", GOOD, "10.0.0.3")):
        hasher.verified = 0
        with pytest.raises(LoginRefused) as info:
            authn.login(name, password, address)
        assert info.value.retry_after is None
        messages.append(info.value.message)
        assert hasher.verified == 1, "an unknown name costs a hash check too"
    assert messages == [WRONG_LOGIN] * 3
    assert new_entries(store, start) == [
        ("anonymous", "user.login.failed", "user/bob",
         {"address": "10.0.0.1", "reason": "wrong password"}),
        ("anonymous", "user.login.failed", "user/?",
         {"address": "10.0.0.2", "reason": "unknown user"}),
        ("anonymous", "user.login.failed", "user/eve",
         {"address": "10.0.0.3", "reason": "account disabled"})]
    assert_no_secret(store, GOOD, OTHER, typed_as_name)


def test_five_wrong_passwords_lock_the_account(authn: Authenticator, store: RecordStore,
                                               hasher: CountingHasher,
                                               clock: FakeClock) -> None:
    for i in range(4):
        with pytest.raises(LoginRefused, match=WRONG_LOGIN):
            authn.login("bob", f"wrong password {i}", HERE)
    with pytest.raises(LoginRefused) as info:
        authn.login("bob", "wrong password 4", HERE)
    assert info.value.retry_after == 300
    assert info.value.message == "too many failed logins; try again in 300 s"
    assert new_entries(store, -1) == [("modctl", "user.login.locked", "user/bob",
                                       {"address": HERE, "locked": ["account"], "lock_s": 300})]
    entries, hasher.verified = len(audit_rows(store)), 0
    clock.advance(100)
    with pytest.raises(LoginRefused, match="try again in 200 s") as info:
        authn.login("bob", GOOD, "10.7.7.7")  # the right password, from elsewhere: still locked
    assert info.value.retry_after == 200
    assert hasher.verified == 0 and len(audit_rows(store)) == entries  # nothing checked/written
    assert authn.login("ada", GOOD, HERE).account.name == "ada"  # others are not locked out
    clock.advance(200)
    assert authn.login("bob", GOOD, HERE).account.name == "bob"
    assert_no_secret(store, GOOD, *(f"wrong password {i}" for i in range(5)))
    assert store.verify_audit().ok


def test_parallel_guesses_cannot_outrun_the_limit(authn: Authenticator,
                                                  hasher: CountingHasher) -> None:
    slow = hasher.verify

    def verify(hash: str | bytes, password: str | bytes) -> bool:
        time.sleep(0.05)  # a hash check takes time: guesses pile up meanwhile
        return slow(hash, password)

    hasher.verify = verify  # type: ignore[method-assign]
    hasher.verified = 0
    barrier = threading.Barrier(12)
    refused: list[LoginRefused] = []

    def guess(i: int) -> None:
        barrier.wait()
        try:
            authn.login("bob", f"guess number {i}", HERE)
        except LoginRefused as exc:
            refused.append(exc)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refused) == 12
    assert hasher.verified == ACCOUNT_LIMIT.failures


def test_a_records_failure_during_the_check_counts_nothing(authn: Authenticator,
                                                           accounts: Accounts,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           store: RecordStore) -> None:
    def broken(name: str, password: str) -> None:
        raise RecordsError(store.path, "cannot read an account: the disk is full")

    with monkeypatch.context() as m:
        m.setattr(accounts, "verify", broken)
        for _ in range(10):
            with pytest.raises(RecordsError):
                authn.login("bob", GOOD, HERE)
    assert authn.login("bob", GOOD, HERE).account.name == "bob"


def test_current_ends_when_the_account_is_disabled_or_its_password_changed(
        authn: Authenticator, accounts: Accounts) -> None:
    bob = authn.login("bob", GOOD, HERE)
    ada = authn.login("ada", GOOD, HERE)
    accounts.set_password("bob", OTHER, "bob")
    assert authn.current(bob.token) is None
    assert authn.tokens.check(bob.token) is None  # ended, not only refused
    bob = authn.login("bob", OTHER, HERE)
    assert authn.current(bob.token) is not None
    accounts.disable("bob", "ada")
    assert authn.current(bob.token) is None
    assert authn.current(ada.token) is not None


def test_current_ends_after_the_idle_time(authn: Authenticator, clock: FakeClock) -> None:
    login = authn.login("bob", GOOD, HERE)
    clock.advance(599)
    assert authn.current(login.token) is not None
    clock.advance(601)
    assert authn.current(login.token) is None


def test_a_rehash_at_login_keeps_the_login(store: RecordStore, clock: FakeClock) -> None:
    Accounts(store, CountingHasher()).add("bob", "clinician", GOOD, "root")
    newer = CountingHasher(time_cost=2)  # other parameters: the stored hash needs a rehash
    authn = Authenticator(Accounts(store, newer), store, TokenBook(clock=clock),
                          LoginLimiter(clock=clock))
    login = authn.login("bob", GOOD, HERE)
    assert authn.current(login.token) is not None
    assert "user.rehash" in [e["action"] for e in audit_rows(store)]

