"""Rules about the patient that every route to an output obeys: `session run`, `plan run`,
`book add` and `book start` call these same functions.

- The patient id is pseudonymous (never a name): `check_patient_id`.
- Two treatments of one modality for one patient are at least the clinic's minimum interval
  apart (`clinic.min_interval_hours` in the roles file): `interval_conflict` reads the patient's
  recorded sessions, whatever route started them. The steps of one plan are one treatment: the
  plan is checked once, before its first step, and its own steps never block each other (their
  doses share one session budget instead: `controller.modality.dose_budget`).

Looking records up (`records patient ID`, `book list --patient ID`) stays lenient: any text is
accepted there, so sessions recorded before this rule (when `session run` took any text) can
still be found.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from controller.clinic.clock import show
from controller.profiles.loader import ProfileError, resolve_profile
from controller.records.history import UNKNOWN_MODALITY, session_modality
from controller.records.store import RecordStore, SessionRow

# Pseudonymous patient ids only: letters and digits in dash-separated groups, with at least one
# digit, 3-32 characters (P-0042, 2026-117, KX7Q). "Anna-Berg" has no digit: it looks like a name.
# ASCII only: [A-Za-z0-9], not \w or \d, which match every script.
PATIENT_ID = re.compile(r"(?=.*[0-9])[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")
PATIENT_ID_LENGTH = (3, 32)
# How many of the patient's most recent sessions the interval check reads.
SESSION_LOOKBACK = 200


class PatientIdError(ValueError):
    """A patient id that is not pseudonymous (a usage error); the message names the option."""


def check_patient_id(text: str, option: str = "--patient") -> str:
    """The id without surrounding spaces; PatientIdError when it could be a name."""
    low, high = PATIENT_ID_LENGTH
    value = text.strip()
    if not PATIENT_ID.fullmatch(value) or not low <= len(value) <= high:
        raise PatientIdError(
            f"{option} '{text}' is not a pseudonymous patient id: use {low}-{high} letters and "
            "digits in groups joined by '-', with at least one digit (like P-0042); never a "
            "patient's name")
    return value


def interval_conflict(store: RecordStore, patient: str, modality: str, start: datetime,
                      end: datetime, min_interval_s: float) -> str | None:
    """Why a treatment of `modality` from `start` to `end` is too close to one of the patient's
    recorded sessions of the same modality (any route), or None.

    A recorded session counts when its output started (not refused, something delivered, or
    still open); it is too close when it ends less than `min_interval_s` before `start`, or
    begins less than that after `end`.
    """
    gap = timedelta(seconds=min_interval_s)
    modalities: dict[str, str] = {}
    for s in store.list_sessions(SESSION_LOOKBACK, patient=patient):
        if s.outcome == "rejected" or (s.delivered_s is not None and s.delivered_s <= 0):
            continue
        if _modality(s, modalities) != modality:
            continue
        s_start, s_end = session_window(s)
        if s_start < end + gap and s_end > start - gap:
            ended = "ended" if s.ended_at else "running, planned to end"
            return (f"patient {patient} had a {modality} session at {show(s_start)} "
                    f"(session {s.id}, {ended} {show(s_end)}); the clinic's minimum interval "
                    f"between two {modality} treatments is {min_interval_s / 3600:g} h: the "
                    f"next may start from {show(s_end + gap)}")
    return None


def session_window(s: SessionRow) -> tuple[datetime, datetime]:
    """When a recorded session started and ended (an open one: its planned end)."""
    start = datetime.fromisoformat(s.started_at)
    if s.ended_at:
        return start, datetime.fromisoformat(s.ended_at)
    return start, start + timedelta(seconds=s.planned_s)


def _modality(s: SessionRow, cache: dict[str, str]) -> str:
    """The session's modality: as its prescription recorded it, else from its profile."""
    named = session_modality(s.prescription, s.dose)
    if named != UNKNOWN_MODALITY:
        return named
    if s.profile not in cache:
        try:
            cache[s.profile] = resolve_profile(s.profile).profile.modality
        except ProfileError:
            cache[s.profile] = UNKNOWN_MODALITY
    return cache[s.profile]
