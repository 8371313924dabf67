"""The live display of a session and the long-wait line, rendered into a fake terminal: what a
technician sees, in colour only where a terminal can show it (issue 15)."""

from __future__ import annotations

import io
import re

import pytest

from controller.cli.live_display import (
    RED,
    RESET,
    LiveDisplay,
    SessionFacts,
    WaitLine,
    clinical_figure,
    clock_text,
    summary_lines,
)
from controller.session.report import SessionReport, Snapshot

ANSI = re.compile(r"\x1b\[[0-9;]*m")
THERMAL_RX = {"modality": "thermal", "values": {"temperature_c": 40.0}, "duration_s": 600.0,
              "regimes": ["heat"]}


class Terminal(io.StringIO):
    """A stream that says it is a terminal, with UTF-8 like a modern one."""

    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


class Pipe(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return False


def snap(state: str = "delivering", remaining: float | None = 252.0, **telemetry: object
         ) -> Snapshot:
    return Snapshot(state=state, remaining_s=remaining, delivered_s=600.0 - (remaining or 0),
                    telemetry={"temperature_c": 38.74, **telemetry},  # type: ignore[dict-item]
                    dose={"cem43_min": 0.5234, "output_s": 348.0})


def display(stream: io.StringIO, columns: int = 100) -> LiveDisplay:
    return LiveDisplay(SessionFacts("HC-200", "thermal", THERMAL_RX, "/dev/pts/5"), stream,
                       columns=columns, clock=lambda: 0.0)


def report(outcome: str = "completed", confirmed: bool | None = True) -> SessionReport:
    return SessionReport(
        session_id="01ABC", outcome=outcome, reason="planned duration delivered",
        profile="hc-200", device={}, prescription=THERMAL_RX, planned_s=600.0,
        delivered_s=600.0 if outcome == "completed" else 12.5,
        stop_source="controller" if confirmed else "device_watchdog",
        dose={"cem43_min": 4.24e-08, "max_pad_temp_c": 40.12, "output_s": 600.0},
        stop_confirmed=confirmed, output_started=True)


def test_header_and_status_say_what_runs_and_how_to_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Terminal()
    live = display(out)
    live.show(snap())
    header, status = out.getvalue().split("\n")
    assert header == "HC-200 heat therapy · set 40 °C for 10:00 · Ctrl-C stop · Ctrl-\\ e-stop"
    assert status.startswith("\rdelivering · pad 38.74 °C · [")
    assert "] 04:12 left · dose 0.52 CEM43 min" in status
    bar = status[status.index("[") + 1:status.index("]")]
    assert bar.count("█") == round(0.58 * len(bar))        # 348 of 600 s done


def test_the_end_replaces_the_status_with_the_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = Terminal()
    live = display(out)
    live.show(snap(remaining=0.2))
    live.finish(report())
    last = out.getvalue().split("\r")[-1]
    assert last.rstrip() == "Completed as planned: 10 min of 10 min delivered"
    assert last.endswith("\n") and "left" not in last      # no lingering "remaining 0.2 s"


def test_alarms_in_colour_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    out = Terminal()
    display(out).show(snap(pad_connected=False, trip_high=True))
    status = out.getvalue().split("\n")[1]
    assert f"{RED}! over-temperature trip; pad disconnected{RESET}" in status


@pytest.mark.parametrize("stream, no_color", [(Terminal, "1"), (Pipe, None)])
def test_plain_with_no_color_or_piped(stream: type[io.StringIO], no_color: str | None,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    out = stream()
    live = display(out)
    live.show(snap(trip_high=True))
    live.finish(report("fault", confirmed=False))
    text = out.getvalue()
    assert "! over-temperature trip" in text
    assert not ANSI.search(text), repr(text)


def test_the_line_fits_a_narrow_terminal_and_keeps_its_alarm() -> None:
    out = Terminal()
    display(out, columns=66).show(snap(trip_high=True))
    status = ANSI.sub("", out.getvalue().split("\n")[1]).lstrip("\r")
    assert len(status) <= 65
    assert "over-temperature trip" in status and "04:12 left" in status


def test_waiting_states_say_what_is_waited_for() -> None:
    out = Terminal()
    display(out).show(snap(state="identifying", remaining=None))
    assert "waiting: identifying the device on /dev/pts/5 (0 s)" in out.getvalue()


def test_summary_in_sentences_with_clinical_numbers() -> None:
    lines = summary_lines(report("fault", confirmed=False), with_reason=False)
    assert lines[0] == "session 01ABC: fault - stopped by a fault"
    assert "the device did NOT confirm its output off" in lines[1]
    assert "thermal dose (CEM43) < 0.001 min" in lines[2]
    assert "highest pad temperature 40.12 °C" in lines[2]
    text = "\n".join(lines)
    for python in ("None", "True", "False", "e-08"):
        assert python not in text


@pytest.mark.parametrize("key, value, shown", [
    ("cem43_min", 4.24e-08, "< 0.001"), ("cem43_min", 0.5234, "0.52"),
    ("cem43_min", 123.4, "120"), ("cem43_min", 0.0, "0"), ("energy_j", 2249.96, "2250"),
    ("energy_j", 9.04, "9"), ("energy_density_j_cm2", 1.84, "1.8"),
])
def test_clinical_rounding(key: str, value: float, shown: str) -> None:
    assert clinical_figure(key, value) == shown


def test_clock_text_rounds_up() -> None:
    assert [clock_text(s) for s in (0, 0.2, 59.1, 600, 3725)] == \
        ["00:00", "00:01", "01:00", "10:00", "1:02:05"]


def test_a_long_wait_shows_its_progress_and_ends_at_the_next_line() -> None:
    out = Terminal()
    wait = WaitLine(out, "degC", limit_s=900.0)
    wait.said("As found 1/2: the pad should be on the reference source at 40 degC; "
              "waiting for the device reading to settle")
    for _ in range(4):
        wait.waited(0.5, 38.61)
    assert "still waiting for the device reading to settle: 00:02 (gives up at 15:00); " \
           "the device reads 38.61 degC" in out.getvalue()
    wait.said("next")
    assert out.getvalue().endswith("\n")


def test_a_long_wait_in_a_log_is_a_line_now_and_then() -> None:
    out = Pipe()
    wait = WaitLine(out, "W")
    for _ in range(130):
        wait.waited(0.5, 2.0)                                # 65 s
    lines = out.getvalue().splitlines()
    assert [line.split(": ")[1].split(";")[0] for line in lines] == ["00:30", "01:00"]
