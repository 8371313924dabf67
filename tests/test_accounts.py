"""Service accounts: names, roles, Argon2id hashes, disabling, the audit trail, the schema step."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from controller.records import store as records
from controller.records.store import RecordStore
from controller.service.accounts import (
    PASSWORD_MIN,
    Account,
    AccountConflict,
    AccountError,
    Accounts,
)

GOOD = "correct horse battery"
OTHER = "staple paper clip lamp"


class CountingHasher(PasswordHasher):
    """Argon2id at the cheapest parameters (tests only), counting verifications."""

    def __init__(self, time_cost: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=8, parallelism=1)
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # type: ignore[override]
        self.verified += 1
        return super().verify(hash, password)


def audit_rows(store: RecordStore) -> list[dict[str, str]]:
    with store._read("test") as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY id")]


def assert_no_secret(store: RecordStore, *secrets: str) -> None:
    """No audit entry holds a password or a password hash."""
    with store._read("test") as conn:
        hashes = [r[0] for r in conn.execute("SELECT password_hash FROM users")]
    for row in audit_rows(store):
        text = json.dumps(row)
        assert "$argon2" not in text
        for secret in (*secrets, *hashes):
            assert secret not in text


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "records.sqlite3"


@pytest.fixture
def store(db: Path) -> Iterator[RecordStore]:
    with RecordStore(db) as s:
        yield s


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def accounts(store: RecordStore, hasher: CountingHasher) -> Accounts:
    return Accounts(store, hasher)


def stored_hash(store: RecordStore, name: str) -> str:
    row = store.user(name)
    assert row is not None
    return row.password_hash


# -- adding, names, roles, passwords ---------------------------------------------------------

def test_an_account_is_added_with_an_argon2id_hash_and_audited(
        accounts: Accounts, store: RecordStore) -> None:
    ada = accounts.add("ada", "admin", GOOD, "root")
    assert (ada.name, ada.role, ada.disabled) == ("ada", "admin", False)
    assert ada.created == ada.changed and ada.created.endswith("+00:00")
    digest = stored_hash(store, "ada")
    assert digest.startswith("$argon2id$") and GOOD not in digest
    (entry,) = audit_rows(store)
    assert (entry["actor"], entry["action"], entry["subject"]) == ("root", "user.add", "user/ada")
    assert json.loads(entry["detail"])["role"] == "admin"
    assert_no_secret(store, GOOD)
    assert store.verify_audit().ok


@pytest.mark.parametrize("name", ["", "a" * 65, "al ice", "al/ice", "álice", "bob\n", "x:y"])
def test_a_bad_name_is_refused_naming_the_field(accounts: Accounts, name: str) -> None:
    with pytest.raises(AccountError, match=r"^user name .*: use 1-64 letters, digits"):
        accounts.add(name, "clinician", GOOD, "root")
    assert accounts.list() == []


def test_names_of_64_plain_characters_are_fine(accounts: Accounts) -> None:
    name = "A-b_c.9" + "z" * 57
    assert accounts.add(name, "technician", GOOD, "root").name == name


def test_a_bad_role_is_refused(accounts: Accounts) -> None:
    with pytest.raises(AccountError, match=r"^role 'nurse': use one of clinician, technician"):
        accounts.add("nina", "nurse", GOOD, "root")


def test_a_password_needs_the_minimum_length(accounts: Accounts, store: RecordStore) -> None:
    short = "x" * (PASSWORD_MIN - 1)
    with pytest.raises(AccountError, match=rf"^password: too short \(11 characters\); use at "
                                           rf"least {PASSWORD_MIN}"):
        accounts.add("bob", "clinician", short, "root")
    assert accounts.get("bob") is None and audit_rows(store) == []
    accounts.add("bob", "clinician", "x" * PASSWORD_MIN, "root")
    with pytest.raises(AccountError, match=r"^password: too long"):
        accounts.add("bob2", "clinician", "x" * 1025, "root")
    with pytest.raises(AccountError, match=r"^password: contains characters"):
        accounts.add("bob3", "clinician", "a lone \ud800 surrogate", "root")


def test_a_name_is_taken_whatever_its_case_and_never_reused(accounts: Accounts,
                                                            store: RecordStore) -> None:
    accounts.add("Alice", "clinician", GOOD, "root")
    with pytest.raises(AccountConflict, match=r"^user 'Alice' already exists$"):
        accounts.add("alice", "admin", GOOD, "root")
    accounts.disable("ALICE", "root")
    with pytest.raises(AccountConflict, match=r"already exists \(disabled; names are never"):
        accounts.add("alice", "clinician", GOOD, "root")
    got = accounts.get("aLiCe")
    assert got is not None and got.name == "Alice"
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"), \
            sqlite3.connect(store.path) as conn:
        conn.execute("DELETE FROM users")


def test_list_and_get(accounts: Accounts) -> None:
    for name, role in (("tom", "technician"), ("ada", "admin"), ("bob", "clinician")):
        accounts.add(name, role, GOOD, "root")
    assert [(a.name, a.role) for a in accounts.list()] == [
        ("ada", "admin"), ("bob", "clinician"), ("tom", "technician")]
    assert accounts.get("nobody") is None and accounts.get("no body") is None


def test_may_admin_everything_others_their_role_disabled_nothing() -> None:
    def account(role: str, disabled: bool = False) -> Account:
        return Account("x", role, disabled, "t", "t")  # type: ignore[arg-type]

    assert all(account("admin").may(r) for r in ("clinician", "technician", "admin"))
    assert account("clinician").may("clinician") and not account("clinician").may("technician")
    assert not account("technician").may("admin")
    assert not account("admin", disabled=True).may("admin")


# -- disabling and passwords -----------------------------------------------------------------

def test_disable(accounts: Accounts, store: RecordStore) -> None:
    accounts.add("bob", "clinician", GOOD, "root")
    bob = accounts.disable("bob", "ada")
    assert bob.disabled and bob.changed > bob.created
    assert accounts.verify("bob", GOOD) is None
    with pytest.raises(AccountConflict, match=r"^user 'bob' is disabled$"):
        accounts.disable("bob", "ada")
    with pytest.raises(AccountConflict, match=r"^user 'zed' does not exist$"):
        accounts.disable("zed", "ada")
    with pytest.raises(AccountConflict, match="is disabled"):
        accounts.set_password("bob", OTHER, "ada")
    assert [(e["actor"], e["action"]) for e in audit_rows(store)] == [
        ("root", "user.add"), ("ada", "user.disable")]
    assert store.verify_audit().ok


def test_set_password(accounts: Accounts, store: RecordStore) -> None:
    before = accounts.add("bob", "clinician", GOOD, "root")
    accounts.set_password("BOB", OTHER, "bob")
    assert accounts.verify("bob", GOOD) is None
    after = accounts.verify("bob", OTHER)
    assert after is not None and after.changed > before.changed
    with pytest.raises(AccountConflict, match=r"^user 'zed' does not exist$"):
        accounts.set_password("zed", OTHER, "root")
    with pytest.raises(AccountError, match=r"^password: too short"):
        accounts.set_password("bob", "short", "bob")
    assert [(e["actor"], e["action"], e["subject"]) for e in audit_rows(store)] == [
        ("root", "user.add", "user/bob"), ("bob", "user.passwd", "user/bob")]
    assert_no_secret(store, GOOD, OTHER)


# -- verify ----------------------------------------------------------------------------------

def test_verify_runs_one_hash_check_whatever_the_case(accounts: Accounts,
                                                     hasher: CountingHasher) -> None:
    accounts.add("bob", "clinician", GOOD, "root")
    accounts.add("eve", "clinician", GOOD, "root")
    accounts.disable("eve", "root")
    for name, password, expect in (("bob", GOOD, True), ("bob", OTHER, False),
                                   ("nobody", GOOD, False), ("eve", GOOD, False),
                                   ("not a name!", GOOD, False), ("bob", "x" * 5000, False),
                                   ("bob", "\udcff" * 20, False)):
        hasher.verified = 0
        got = accounts.verify(name, password)
        assert (got is not None) is expect, (name, password)
        assert hasher.verified == 1, (name, "a hash check must run for every answer")
    got = accounts.verify("BOB", GOOD)
    assert got is not None and got.name == "bob"


def test_a_damaged_stored_hash_fails_the_login_without_an_error(accounts: Accounts,
                                                               store: RecordStore) -> None:
    accounts.add("bob", "clinician", GOOD, "root")
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE users SET password_hash = 'not a hash'")
    assert accounts.verify("bob", GOOD) is None


def test_default_parameters_and_rehash_of_an_older_hash(store: RecordStore) -> None:
    """The one test at argon2-cffi's default parameters (about 0.1 s a hash here)."""
    cheap = Accounts(store, CountingHasher())
    before = cheap.add("bob", "clinician", GOOD, "root")
    assert "$m=8,t=1,p=1$" in stored_hash(store, "bob")
    default = Accounts(store)
    assert default.verify("bob", OTHER) is None
    assert "$m=8,t=1,p=1$" in stored_hash(store, "bob")  # a wrong password changes nothing
    after = default.verify("bob", GOOD)
    assert after is not None and after.changed == before.changed  # not a change by its holder
    defaults = PasswordHasher()
    digest = stored_hash(store, "bob")
    assert digest.startswith(f"$argon2id$v=19$m={defaults.memory_cost},t={defaults.time_cost},"
                             f"p={defaults.parallelism}$")
    assert not defaults.check_needs_rehash(digest)
    assert default.verify("bob", GOOD) is not None
    assert [(e["actor"], e["action"]) for e in audit_rows(store)] == [
        ("root", "user.add"), ("modctl", "user.rehash")]  # once only
    ada = default.add("ada", "admin", OTHER, "root")
    assert ada.role == "admin" and stored_hash(store, "ada").startswith(digest[:30])
    assert_no_secret(store, GOOD, OTHER)
    assert store.verify_audit().ok


# -- the schema step -------------------------------------------------------------------------

def test_a_schema_3_database_gets_the_users_table(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (3)")
    for step in records.MIGRATIONS[:3]:
        for statement in step:
            conn.execute(statement)
    conn.close()
    with RecordStore(db) as s:
        s.add_device("heat-1", "hc-200", "/dev/pts/1", "tom")
        accounts = Accounts(s, CountingHasher())
        accounts.add("ada", "admin", GOOD, "root")
        assert accounts.verify("ada", GOOD) is not None
        assert s.verify_audit().ok
    version = sqlite3.connect(db).execute("SELECT version FROM schema_version").fetchone()[0]
    assert version == records.SCHEMA_VERSION == 6


def test_a_role_edited_by_hand_is_found_by_the_audit_check(accounts: Accounts,
                                                           store: RecordStore, db: Path) -> None:
    accounts.add("bob", "clinician", "a long enough password", "ada")
    accounts.disable("bob", "ada")
    assert store.verify_audit().ok
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE users SET role = 'admin', disabled = 0 WHERE name = 'bob'")
    result = store.verify_audit()
    assert not result.ok and result.table == "users" and result.key == "bob"
