"""Clinical notes on sessions: the store's `add_note`/`notes`, their checks, the audit chain,
schema step 5 on an older database, and `modctl records note`."""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.cli import records_cmd
from controller.records import store as records
from controller.records.notes_table import NOTE_TEXT_MAX
from controller.records.store import NoteError, RecordStore
from tests.test_history import HEAT_44, record_session


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="modctl")
    records_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["records", *argv])
    status: int = args.run(args)
    return status


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "records.sqlite3"


@pytest.fixture
def store(db: Path) -> Iterator[RecordStore]:
    with RecordStore(db) as s:
        yield s


@pytest.fixture
def sid(store: RecordStore) -> str:
    return record_session(store, "P-1", "thermal", HEAT_44)


def test_a_note_is_kept_with_every_field(store: RecordStore, sid: str) -> None:
    note = store.add_note(sid, actor="carol", body_site=" left knee ", skin_before="intact",
                          skin_after="mild redness", pain_before=6, pain_after=3,
                          text="Tolerated well.\nContinue.")
    assert note.session_id == sid and note.actor == "carol"
    assert (note.body_site, note.skin_before, note.skin_after) == (
        "left knee", "intact", "mild redness")
    assert (note.pain_before, note.pain_after) == (6, 3)
    assert note.text == "Tolerated well.\nContinue." and note.recorded_at
    second = store.add_note(sid[:8], actor="dana", pain_after=2)  # a prefix is enough
    assert [n.id for n in store.notes(sid)] == [note.id, second.id]
    assert second.body_site is None and second.text == ""


@pytest.mark.parametrize(("field", "value", "words"), [
    ("pain_before", 11, "pain_before: 11 is out of range"),
    ("pain_after", -1, "pain_after: -1 is out of range"),
    ("pain_before", 4.5, "pain_before: 4.5 is not a pain score"),
    ("pain_after", True, "pain_after: True is not a pain score"),
    ("pain_before", "7", "pain_before: '7' is not a pain score"),
    ("body_site", "x" * 81, "body_site: at most 80 characters"),
    ("skin_after", "red\x1b[2J", "skin_after: control characters are not allowed"),
    ("text", "t" * (NOTE_TEXT_MAX + 1), f"text: at most {NOTE_TEXT_MAX} characters"),
])
def test_bad_values_are_refused_naming_the_field(store: RecordStore, sid: str, field: str,
                                                 value: object, words: str) -> None:
    with pytest.raises(NoteError) as info:
        store.add_note(sid, actor="carol", **{field: value})  # type: ignore[arg-type]
    assert words in str(info.value)
    assert store.notes(sid) == []


def test_empty_notes_unknown_sessions_and_no_actor_are_refused(store: RecordStore,
                                                                sid: str) -> None:
    with pytest.raises(NoteError, match="the note is empty"):
        store.add_note(sid, actor="carol", text="   ")
    with pytest.raises(NoteError, match="no session NOPE1234"):
        store.add_note("NOPE1234", actor="carol", pain_before=1)
    with pytest.raises(NoteError, match="not a session id"):
        store.add_note("01%", actor="carol", pain_before=1)   # no LIKE wildcards
    with pytest.raises(NoteError, match="actor"):
        store.add_note(sid, actor=" ", pain_before=1)
    assert store.notes(sid) == []


def test_notes_are_on_the_audit_chain_and_append_only(store: RecordStore, sid: str) -> None:
    note = store.add_note(sid, actor="carol", pain_before=5, text="ok")
    result = store.verify_audit()
    assert result.ok, result.reason
    conn = store._conn()
    last = conn.execute("SELECT actor, action, subject, detail FROM audit ORDER BY id DESC"
                        " LIMIT 1").fetchone()
    assert (last["actor"], last["action"], last["subject"]) == ("carol", "session.note", sid)
    detail = json.loads(last["detail"])
    assert detail["fields"] == ["pain_before", "text"] and "ok" not in json.dumps(detail)
    assert detail["rows"][0]["table"] == "session_notes"
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE session_notes SET pain_before = 0 WHERE id = ?", (note.id,))
    # A note forged past modctl (triggers dropped) is caught by verify.
    conn.execute("DROP TRIGGER session_notes_no_update")
    conn.execute("UPDATE session_notes SET pain_before = 0 WHERE id = ?", (note.id,))
    broken = store.verify_audit()
    assert not broken.ok and broken.table == "session_notes" and broken.key == str(note.id)


def test_a_schema_4_database_gets_the_notes_table(db: Path) -> None:
    with RecordStore(db) as s:
        sid = record_session(s, "P-1", "thermal", HEAT_44)
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE session_notes")
    for statement in ("ALTER TABLE devices DROP COLUMN room", "DROP TABLE rooms",  # step 6
                      "DROP TABLE spool_replayed", "DROP TRIGGER audit_high_bump",
                      "DROP TABLE audit_high"):
        conn.execute(statement)
    conn.execute("UPDATE schema_version SET version = 4")
    conn.commit()
    conn.close()
    with RecordStore(db) as s:
        note = s.add_note(sid, actor="carol", pain_after=1)
        assert s.notes(sid) == [note]
        assert s.verify_audit().ok
    version = sqlite3.connect(db).execute("SELECT version FROM schema_version").fetchone()[0]
    assert version == records.SCHEMA_VERSION == 6


def test_records_note_command(db: Path, sid: str, store: RecordStore,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run("note", sid[:10], "--body-site", "right shoulder", "--skin-before", "intact",
               "--pain-before", "7", "--pain-after", "4", "--text", "warm, comfortable",
               "--operator", "carol", "--db", str(db)) == 0
    out = capsys.readouterr().out
    assert f"recorded on session {sid} by carol" in out and "pain 7 → 4 (0-10)" in out
    [note] = store.notes(sid)
    assert (note.body_site, note.pain_before, note.pain_after, note.actor) == (
        "right shoulder", 7, 4, "carol")
    assert run("show", sid, "--db", str(db)) == 0
    shown = capsys.readouterr().out
    assert "notes (1)" in shown and "right shoulder; skin before: intact" in shown


def test_records_note_refusals_are_one_line(db: Path, sid: str, store: RecordStore,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("11", "-1", "٣", "4.5"):
        with pytest.raises(SystemExit) as info:
            run("note", sid, "--pain-before", bad, "--db", str(db))
        assert info.value.code == 2
        assert "is not a pain score: give a whole number from 0 to 10" in \
            capsys.readouterr().err
    assert run("note", sid, "--db", str(db)) == 2
    assert "the note is empty" in capsys.readouterr().err
    assert run("note", sid, "--body-site", "x" * 100, "--db", str(db)) == 2
    err = capsys.readouterr().err
    assert err.startswith("modctl: --body-site: at most 80 characters") and \
        len(err.splitlines()) == 1
    assert run("note", "ZZZZZZZZ", "--text", "x", "--db", str(db)) == 1
    assert "no session ZZZZZZZZ" in capsys.readouterr().err
    assert store.notes(sid) == []


def test_records_note_needs_the_clinician_role(db: Path, sid: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    roles = tmp_path / "roles.yaml"
    roles.write_text("operators:\n  carol: [clinician]\n  tom: [technician]\n",
                     encoding="utf-8")
    roles.chmod(0o644)
    monkeypatch.setenv("MODCTL_ROLES", str(roles))
    assert run("note", sid, "--text", "x", "--operator", "tom", "--db", str(db)) == 3
    assert "the clinician role is needed" in capsys.readouterr().err
    assert run("note", sid, "--text", "x", "--operator", "carol", "--db", str(db)) == 0
