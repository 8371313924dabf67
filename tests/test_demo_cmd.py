"""`modctl demo` (issue 15): it leaves no temporary folder behind, or keeps its files where
`--keep DIR` says; it writes the HTML report of each session; it ends with a paragraph on what
was shown and what to try next. Sessions shortened to a second to keep the test quick."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from controller.cli import demo_cmd
from controller.cli.main import main
from controller.records.store import RecordStore

SHORT_S = 1.0


@pytest.fixture(autouse=True)
def short_sessions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(demo_cmd, "DEMO_DURATION_S", SHORT_S)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))   # where mkdtemp would leave it
    return scratch


def test_the_demo_cleans_up_and_says_what_to_try_next(short_sessions: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert list(short_sessions.iterdir()) == []              # no modctl-demo-* left
    assert out.count(": completed - planned duration delivered") == 3
    assert out.count("  report: written (") == 3
    closing = out.rstrip().splitlines()[-1]
    assert closing.startswith("All 3 demo sessions completed (")
    assert "now removed: `modctl demo --keep DIR` keeps them" in closing
    assert "Next: run `modctl simulate hc-200`" in closing


def test_keep_holds_the_records_and_a_report_per_session(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    keep = tmp_path / "kept"
    assert main(["demo", "--keep", str(keep)]) == 0
    out = capsys.readouterr().out
    reports = sorted(keep.glob("session-*.html"))
    assert len(reports) == 3
    for report in reports:
        assert f"  report: {report}" in out
        html = report.read_text()
        assert "<html" in html.lower() and "Completed as planned" in html
    with RecordStore(keep / demo_cmd.RECORDS_FILE) as store:
        sessions = store.list_sessions(10)
    assert sorted(f"session-{s.profile}-{s.id}.html" for s in sessions) == \
        [r.name for r in reports]
    assert f"are kept in {keep}" in out.rstrip().splitlines()[-1]
