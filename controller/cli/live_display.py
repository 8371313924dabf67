"""A running session on a terminal, and the words for how a session ended.

The live display is two lines: a header written once (device, therapy, setpoint, duration,
how to stop) and a status line rewritten in place (state, measured value, progress bar,
mm:ss remaining, dose so far, alarms). When the session ends the status line is replaced by
one line stating the outcome. Colour only on a terminal, never with NO_COLOR or TERM=dumb.

The summary printed after a session (`summary_lines`) and the display share the clinical
wording of the records (controller.records.clinical, dose_text): a technician reads the same
words on screen and in the report.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from controller.records.clinical import (
    OUTCOME_WORDS,
    STOP_SOURCE_WORDS,
    duration_text,
    therapy_name,
    unit_for,
    with_unit,
)
from controller.records.dose_text import DECIMALS, SMALLEST_SHOWN, clinical_number, dose_lines
from controller.records.history import format_number, number
from controller.session.report import SessionReport, Snapshot

# Per modality: the prescribed parameter shown as the setpoint, the telemetry measured
# against it, and its label; extra telemetry shown beside it.
MAIN_QUANTITY = {
    "thermal": ("temperature_c", "temperature_c", "pad"),
    "ultrasound": ("intensity_w_cm2", "intensity_w_cm2", "intensity"),
    "tens": ("amplitude_ma", "amplitude_ma", "amplitude"),
}
EXTRA_QUANTITY = {"ultrasound": ("power_w", "power")}
# Per therapy (records.clinical.therapy_kind): the dose figure shown while it runs.
DOSE_SO_FAR = {"heat": "cem43_min", "ultrasound": "energy_j",
               "tens": "max_charge_per_phase_uc"}
STOP_HINT = "Ctrl-C stop · Ctrl-\\ e-stop"
# What the session is doing or waiting for, by state (the others are shown as they are).
STATE_WORDS = {
    "idle": "starting", "connecting": "opening the port", "identifying":
    "identifying the device", "arming": "arming the device's watchdog and timer",
    "ramping": "ramping up", "delivering": "delivering", "holding": "HOLDING",
    "stopping": "stopping the output", "ended": "ended",
}
WAITING_STATES = frozenset({"idle", "connecting", "identifying", "arming"})
# Telemetry that is an alarm when true (or, for the `*_connected` ones, when false).
ALARM_FLAGS = {
    "trip_high": "over-temperature trip", "trip_low": "under-temperature trip",
    "sensor_fault": "sensor fault", "watchdog_expired": "device watchdog expired",
    "timer_expired": "device timer expired", "estop_latched": "e-stop latched",
    "patient_stop": "patient stop pressed",
}
ALARM_WHEN_FALSE = {"pad_connected": "pad disconnected"}
HOLD_ALARM = "no contact: output held"
# Progress bar width bounds (characters) and the terminal width assumed when unknown.
BAR_MIN, BAR_MAX = 6, 24
DEFAULT_COLUMNS = 80
# SGR colour codes.
RED, GREEN, YELLOW, BOLD, RESET = "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[1m", "\x1b[0m"
OUTCOME_COLOUR = {"completed": GREEN, "aborted": YELLOW, "fault": RED, "rejected": RED}


def colour_wanted(stream: TextIO) -> bool:
    """Colour on a terminal only: not when piped, with NO_COLOR set (no-color.org) or on a
    dumb terminal."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _unicode_ok(stream: TextIO) -> bool:
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return encoding in ("utf8", "utf16", "utf32")


def clinical_figure(key: str, value: float) -> str:
    """A dose figure as a clinician reads it, by the same rules as the session report
    (`records.dose_text`): CEM43 minutes to 2 significant figures ("< 0.001" for the
    vanishing doses of a few seconds near body temperature), J to 1 decimal, the rest to 4
    significant figures."""
    if key.startswith("cem43"):
        if 0 < abs(value) < SMALLEST_SHOWN:
            return f"< {SMALLEST_SHOWN:g}"
        return clinical_number("cem43_min", value)
    if unit_for(key) == "J" and key not in DECIMALS:
        return clinical_number("energy_j", value)
    return clinical_number(key, value)


def dose_text(prescription: Mapping[str, Any] | None, dose: Mapping[str, Any] | None) -> str:
    """`thermal dose (CEM43) 0.52 min, highest pad temperature 40.1 °C, output time 10 s`."""
    parts = []
    for line in dose_lines(prescription, dose, others=False):
        value = duration_text(line.value) if line.unit == "s" else \
            f"{clinical_figure(line.key, line.value)} {line.unit}".rstrip()
        parts.append(f"{line.label[:1].lower()}{line.label[1:]} {value}")
    return ", ".join(parts)


def clock_text(seconds: float) -> str:
    """`04:12`, `1:02:03`: time remaining, rounded up (never `00:00` while time is left)."""
    whole = max(0, math.ceil(seconds - 1e-9))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def outcome_line(report: SessionReport) -> str:
    """`Completed as planned: 10 s of 10 s delivered`: how it ended, in one line."""
    words = OUTCOME_WORDS.get(report.outcome, report.outcome)
    if report.outcome == "rejected":
        return words
    return (f"{words}: {duration_text(report.delivered_s)} of "
            f"{duration_text(report.planned_s)} delivered")


def stop_text(report: SessionReport) -> str:
    """Who ended the output and whether the device confirmed it off, as a sentence."""
    if report.outcome == "rejected" or not report.output_started:
        return "no output was started"
    source = report.stop_source
    who = STOP_SOURCE_WORDS.get(source, f"the {source.replace('_', ' ')}") if source else \
        "the controller"
    confirmed = {True: "the device confirmed its output off",
                 False: "the device did NOT confirm its output off: check it before the "
                        "next treatment",
                 None: "no stop confirmation was recorded"}[report.stop_confirmed]
    return f"output ended by {who}; {confirmed}"


def summary_lines(report: SessionReport, with_reason: bool = True) -> list[str]:
    """The summary after a session: outcome and reason (without it, the outcome in words:
    the caller tells the reason elsewhere), delivered time, who stopped it, the dose."""
    sid = report.session_id or "(not recorded)"
    why = report.reason if with_reason else \
        OUTCOME_WORDS.get(report.outcome, report.outcome).lower()
    lines = [f"session {sid}: {report.outcome} - {why}"]
    if report.outcome != "rejected":
        lines.append(f"  delivered {duration_text(report.delivered_s)} of "
                     f"{duration_text(report.planned_s)} planned; {stop_text(report)}")
        dose = dose_text(report.prescription, report.dose)
        if dose:
            lines.append(f"  dose: {dose}")
    return lines


@dataclass(frozen=True)
class SessionFacts:
    """What the display knows before the first snapshot: the device and the prescription."""

    model: str
    modality: str
    prescription: Mapping[str, Any]
    """`Prescription.record()`: modality, values, regimes, duration_s."""
    port: str = ""


class LiveDisplay:
    """Writes the header once, then rewrites the status line; `finish` states the outcome."""

    def __init__(self, facts: SessionFacts, stream: TextIO, *, colour: bool | None = None,
                 columns: int | None = None, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.facts = facts
        self.stream = stream
        self.colour = colour_wanted(stream) if colour is None else colour
        self._columns = columns
        self._clock = clock
        self._started = clock()
        self._fancy = _unicode_ok(stream)
        self._sep = " · " if self._fancy else " | "
        self._header_done = False
        self._width = 0
        values = facts.prescription.get("values") or {}
        self._planned = float(facts.prescription.get("duration_s") or 0.0)
        self._therapy = therapy_name(facts.prescription)
        param, self._measured, self._label = MAIN_QUANTITY.get(facts.modality, ("", "", ""))
        self._setpoint = values.get(param) if param else None
        self._unit = unit_for(param) if param else ""

    # -- header and status ----------------------------------------------------------------
    def header(self) -> str:
        parts = [f"{self.facts.model} {self._therapy.lower()}"]
        if number(self._setpoint) is not None:
            parts.append(f"set {with_unit(self._setpoint, self._unit)} for "
                         f"{clock_text(self._planned)}")
        parts.append(STOP_HINT if self._fancy else "Ctrl-C stop, Ctrl-\\ e-stop")
        return self._sep.join(parts)

    def status(self, snap: Snapshot) -> str:
        """The status line for `snap`, fitted to the terminal width (colour codes included)."""
        state = snap["state"]
        alarms = self._alarms(snap)
        if state in WAITING_STATES:
            where = f" on {self.facts.port}" if self.facts.port and state != "arming" else ""
            waited = self._clock() - self._started
            text = f"waiting: {STATE_WORDS[state]}{where} ({waited:.0f} s)"
            return self._fit([text], alarms, None)
        parts = [STATE_WORDS.get(state, state)]
        measured = number(snap["telemetry"].get(self._measured))
        if measured is not None:
            parts.append(f"{self._label} {with_unit(round(measured, 2), self._unit)}")
        extra = EXTRA_QUANTITY.get(self.facts.modality)
        value = number(snap["telemetry"].get(extra[0])) if extra is not None else None
        if extra is not None and value is not None:
            parts.append(f"{extra[1]} {with_unit(round(value, 2), unit_for(extra[0]))}")
        remaining = snap["remaining_s"]
        done = 1.0 - remaining / self._planned if remaining is not None and self._planned else \
            snap["delivered_s"] / self._planned if self._planned else 0.0
        tail = f"{clock_text(remaining)} left" if remaining is not None else "--:-- left"
        dose = self._dose(snap["dose"])
        return self._fit(parts, alarms, (min(max(done, 0.0), 1.0), tail, dose))

    def show(self, snap: Snapshot) -> None:
        if not self._header_done:
            self.stream.write(self.header() + "\n")
            self._header_done = True
        self._rewrite(self.status(snap))

    def finish(self, report: SessionReport) -> None:
        """Replace the status line with the outcome (coloured by outcome on a terminal)."""
        line = outcome_line(report)
        if self.colour:
            line = f"{BOLD}{OUTCOME_COLOUR.get(report.outcome, '')}{line}{RESET}"
        self._rewrite(line)
        self.stream.write("\n")
        self.stream.flush()
        self._width = 0

    def close(self) -> None:
        """End the status line without an outcome (the display was cut short)."""
        if self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0

    # -- parts -----------------------------------------------------------------------------
    def _alarms(self, snap: Snapshot) -> list[str]:
        t = snap["telemetry"]
        found = [words for name, words in ALARM_FLAGS.items() if t.get(name) is True]
        found += [words for name, words in ALARM_WHEN_FALSE.items() if t.get(name) is False]
        code = number(t.get("fault_code"))
        if code:
            found.append(f"device fault {code:g}")
        if snap["state"] == "holding":
            found.append(HOLD_ALARM)
        return found

    def _dose(self, dose: Mapping[str, float]) -> str:
        kind = "cold" if "cold" in (self.facts.prescription.get("regimes") or ()) else None
        key = None if kind == "cold" else DOSE_SO_FAR.get(
            "heat" if self.facts.modality == "thermal" else self.facts.modality)
        value = number(dose.get(key)) if key else None
        if key is None or value is None:
            return ""
        label = {"cem43_min": "dose", "energy_j": "energy", "max_charge_per_phase_uc":
                 "charge/phase"}[key]
        unit = "CEM43 min" if key == "cem43_min" else unit_for(key)
        return f"{label} {clinical_figure(key, value)} {unit}"

    def _fit(self, parts: list[str], alarms: list[str],
             progress: tuple[float, str, str] | None) -> str:
        """Join the parts to fit the terminal: the bar shrinks first, then the dose goes,
        then the bar; alarms always stay (second, in red on a colour terminal)."""
        columns = (self._columns or shutil.get_terminal_size((DEFAULT_COLUMNS, 24)).columns) - 1
        alarm = ("! " + "; ".join(alarms)) if alarms else ""
        head = [parts[0], alarm, *parts[1:]] if alarm else list(parts)

        def joined(bar_width: int, with_dose: bool) -> str:
            pieces = list(head)
            if progress is not None:
                done, tail, dose = progress
                pieces.append(f"{self._bar(done, bar_width)} {tail}" if bar_width else tail)
                if dose and with_dose:
                    pieces.append(dose)
            return self._sep.join(pieces)

        text = joined(BAR_MAX, True)
        if len(text) > columns:
            text = joined(max(BAR_MIN, BAR_MAX - (len(text) - columns)), True)
        if len(text) > columns:
            text = joined(BAR_MIN, False)
        if len(text) > columns:
            text = joined(0, False)
        text = text[:columns]
        if alarm and self.colour and alarm in text:
            text = text.replace(alarm, f"{BOLD}{RED}{alarm}{RESET}", 1)
        return text

    def _bar(self, done: float, width: int) -> str:
        filled = round(done * width)
        full, empty = ("█", "░") if self._fancy else ("#", "-")
        return f"[{full * filled}{empty * (width - filled)}]"

    def _rewrite(self, line: str) -> None:
        visible = _visible_length(line)
        pad = max(0, self._width - visible)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width = visible


def _visible_length(text: str) -> int:
    for code in (RED, GREEN, YELLOW, BOLD, RESET):
        text = text.replace(code, "")
    return len(text)


# -- long waits outside a session (calibration settling) ---------------------------------------

# A pause is shown once the procedure has waited this long since it last said anything.
WAIT_SHOWN_AFTER_S = 2.0
# Not on a terminal (a CI log): one line this often instead of a line rewritten in place.
WAIT_LOGGED_EVERY_S = 30.0
WAITING_FOR = "waiting for "


class WaitLine:
    """Shows how long a procedure has been waiting, for what, and the device's latest
    reading: rewritten in place on a terminal, a line every WAIT_LOGGED_EVERY_S otherwise.
    `said` (every line the procedure prints goes through it) ends the wait."""

    def __init__(self, stream: TextIO, unit: str, limit_s: float | None = None) -> None:
        self.stream = stream
        self.unit = unit
        self.limit_s = limit_s
        self.tty = bool(getattr(stream, "isatty", None) and stream.isatty())
        self.what = "the device"
        self.waited_s = 0.0
        self._logged_at = 0.0
        self._width = 0

    def said(self, text: str) -> None:
        """A line the procedure printed: ends the wait; names what the next one is for."""
        self.end()
        self.waited_s = self._logged_at = 0.0
        at = text.find(WAITING_FOR)
        if at >= 0:
            self.what = text[at + len(WAITING_FOR):].rstrip(".") or self.what

    def waited(self, seconds: float, reading: float | None) -> None:
        self.waited_s += seconds
        if self.waited_s < WAIT_SHOWN_AFTER_S:
            return
        limit = f" (gives up at {clock_text(self.limit_s)})" if self.limit_s else ""
        now = f"; the device reads {format_number(round(reading, 2))} {self.unit}" \
            if reading is not None else ""
        line = f"  still waiting for {self.what}: {clock_text(self.waited_s)}{limit}{now}"
        if self.tty:
            self.stream.write("\r" + line + " " * max(0, self._width - len(line)))
            self._width = len(line)
        elif self.waited_s - self._logged_at >= WAIT_LOGGED_EVERY_S:
            self.stream.write(line + "\n")
            self._logged_at = self.waited_s
        self.stream.flush()

    def end(self) -> None:
        if self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
