"""Patient history over a records database filled through RecordStore's public API."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from controller.records import history
from controller.records.history import (
    export_patient_json,
    history_csv,
    history_from_sessions,
    history_json,
    patient_history,
    session_modality,
    session_samples,
)
from controller.records.store import RecordStore

PROFILE_OF = {"thermal": "hc-200", "ultrasound": "us-300", "tens": "es-4"}
# The reference doses of docs/design.md §3.4, one session each.
HEAT_44 = {"cem43_min": 2.0, "output_s": 60.0, "max_pad_temp_c": 44.0, "min_pad_temp_c": 43.8}
HEAT_41 = {"cem43_min": 1.25, "output_s": 1200.0, "max_pad_temp_c": 41.0}
US_CONT = {"energy_j": 2250.0, "nominal_energy_j": 2250.0, "treatment_s": 300.0, "hold_s": 0.0}
US_DUTY = {"energy_j": 450.0, "treatment_s": 300.0, "hold_s": 4.0}
TENS_25 = {"stimulation_s": 1200.0, "max_amplitude_ma": 25.0, "max_charge_per_phase_uc": 5.0,
           "max_current_density_rms_ma_cm2": 0.2}
TENS_30 = {"stimulation_s": 600.0, "max_amplitude_ma": 30.0, "max_charge_per_phase_uc": 6.0}


def record_session(store: RecordStore, patient: str | None, modality: str | None,
                   dose: Mapping[str, Any] | None, *, delivered_s: float = 60.0,
                   outcome: str = "completed", planned_s: float = 60.0,
                   samples: list[tuple[float, dict[str, Any]]] | None = None,
                   regimes: tuple[str, ...] = (), close: bool = True,
                   values: Mapping[str, Any] | None = None) -> str:
    """One session through the public API, with distinct start times (ids sort by ms)."""
    time.sleep(0.002)
    rx: dict[str, Any] = {"values": dict(values or {}), "duration_s": planned_s,
                          "regimes": list(regimes)}
    if modality is not None:
        rx["modality"] = modality
    sid = store.open_session(
        profile=PROFILE_OF.get(modality or "", "x-1"), port="/dev/pts/9",
        identity={"model": "SIM"}, operator="carol", patient=patient, prescription=rx,
        planned_s=planned_s)
    store.add_event(sid, "command", {"op": "start", "planned_s": planned_s}, t_s=0.01)
    for t_s, data in samples or []:
        store.add_sample(sid, data, t_s=t_s, delivered_s=t_s, dose=dose)
    if close:
        store.add_event(sid, "decision", {"outcome": outcome}, t_s=delivered_s)
        store.close_session(sid, outcome, "planned duration delivered" if outcome ==
                            "completed" else "pad over temperature", "controller",
                            delivered_s, dose)
    return sid


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    with RecordStore(tmp_path / "records.sqlite3") as s:
        yield s


@pytest.fixture
def filled(store: RecordStore) -> dict[str, str]:
    """P-1: heat, ultrasound, TENS, heat (cold regime), ultrasound (fault), TENS; P-2: TENS."""
    ids = {
        "heat1": record_session(store, "P-1", "thermal", HEAT_44),
        "us1": record_session(store, "P-1", "ultrasound", US_CONT, delivered_s=300.0),
        "tens1": record_session(store, "P-1", "tens", TENS_25, delivered_s=1200.0),
        "other": record_session(store, "P-2", "tens", TENS_25, delivered_s=1200.0),
        "anon": record_session(store, None, "thermal", HEAT_44),
        "heat2": record_session(store, "P-1", "thermal", HEAT_41, delivered_s=1200.0,
                                regimes=("cold",)),
        "us2": record_session(store, "P-1", "ultrasound", US_DUTY, delivered_s=300.0,
                              outcome="fault"),
        "tens2": record_session(store, "P-1", "tens", TENS_30, delivered_s=600.0),
    }
    return ids


def test_entries_are_the_patients_sessions_oldest_first(store: RecordStore,
                                                        filled: dict[str, str]) -> None:
    h = patient_history(store, "P-1")
    assert h.patient == "P-1"
    assert [e.session_id for e in h.entries] == [filled[k] for k in (
        "heat1", "us1", "tens1", "heat2", "us2", "tens2")]
    assert [e.modality for e in h.entries] == ["thermal", "ultrasound", "tens"] * 2
    first = h.entries[0]
    assert first.profile == "hc-200" and first.operator == "carol"
    assert first.status == "closed" and first.outcome == "completed"
    assert first.delivered_s == 60.0 and first.planned_s == 60.0
    assert first.started_at <= h.entries[1].started_at
    assert h.entries[3].regimes == ("cold",)


def test_each_entry_holds_its_modalitys_dose_figures(store: RecordStore,
                                                     filled: dict[str, str]) -> None:
    by_id = {e.session_id: e for e in patient_history(store, "P-1").entries}
    assert by_id[filled["heat1"]].figures == {"cem43_min": 2.0}
    assert by_id[filled["us1"]].figures == {"energy_j": 2250.0, "treatment_s": 300.0}
    assert by_id[filled["tens1"]].figures == {
        "stimulation_s": 1200.0, "max_amplitude_ma": 25.0, "max_charge_per_phase_uc": 5.0}


def test_totals_per_modality(store: RecordStore, filled: dict[str, str]) -> None:
    totals = {t.modality: t for t in patient_history(store, "P-1").totals}
    assert list(totals) == ["thermal", "ultrasound", "tens"]
    heat, us, tens = totals["thermal"], totals["ultrasound"], totals["tens"]
    assert heat.sessions == 2 and heat.delivered_s == pytest.approx(1260.0)
    assert heat.figures == {"cem43_min": pytest.approx(3.25)}  # 2.0 (44 °C) + 1.25 (41 °C)
    assert us.figures == {"energy_j": pytest.approx(2700.0), "treatment_s": pytest.approx(600.0)}
    assert us.outcomes == {"completed": 1, "fault": 1}
    # Times add up; peaks take the highest.
    assert tens.figures == {"stimulation_s": pytest.approx(1800.0), "max_amplitude_ma": 30.0,
                            "max_charge_per_phase_uc": 6.0}
    assert tens.first_started_at < tens.last_started_at


def test_a_patient_without_sessions(store: RecordStore, filled: dict[str, str]) -> None:
    h = patient_history(store, "nobody")
    assert h.entries == () and h.totals == ()
    assert json.loads(history_json(h)) == {"patient": "nobody", "session_count": 0,
                                           "sessions": [], "totals": {}}
    assert history_csv(h).splitlines() == [",".join(history.CSV_COLUMNS)]


def test_more_sessions_than_a_listing_shows(store: RecordStore) -> None:
    count = 60  # records list shows 50 by default; a history has them all
    for _ in range(count):
        record_session(store, "P-9", "tens", TENS_25, delivered_s=10.0)
    h = patient_history(store, "P-9")
    assert len(h.entries) == count and h.totals[0].sessions == count
    assert h.totals[0].figures["stimulation_s"] == pytest.approx(count * 1200.0)


def test_open_and_undosed_sessions(store: RecordStore) -> None:
    """A session still open (or interrupted before anything was recorded) has no delivered
    time: it counts as a session but adds nothing."""
    record_session(store, "P-3", "thermal", HEAT_44)
    record_session(store, "P-3", "thermal", None, close=False)
    record_session(store, "P-3", "thermal", None, outcome="rejected", delivered_s=0.0)
    h = patient_history(store, "P-3")
    assert [e.delivered_s for e in h.entries] == [60.0, None, 0.0]
    assert [e.figures for e in h.entries] == [{"cem43_min": 2.0}, {}, {}]
    (heat,) = h.totals
    assert heat.sessions == 3 and heat.delivered_s == 60.0
    assert heat.outcomes == {"completed": 1, "open": 1, "rejected": 1}


def test_modality_comes_from_the_prescription_else_the_dose() -> None:
    assert session_modality({"modality": "tens"}, US_CONT) == "tens"
    assert session_modality({}, US_CONT) == "ultrasound"
    assert session_modality(None, HEAT_41) == "thermal"
    assert session_modality({"values": {}}, {"odd": 1.0}) == "unknown"


def test_records_without_a_modality_are_still_summed(store: RecordStore) -> None:
    record_session(store, "P-4", None, US_CONT, delivered_s=300.0)
    record_session(store, "P-4", None, {"odd": 1.0})
    h = patient_history(store, "P-4")
    assert [t.modality for t in h.totals] == ["ultrasound", "unknown"]
    assert h.totals[0].figures["energy_j"] == 2250.0
    assert h.totals[1].figures == {}


def test_non_numbers_in_a_dose_are_left_out() -> None:
    session = {"id": "S1", "started_at": "2025-01-01T10:00:00.000+00:00",
               "prescription": {"modality": "tens"}, "planned_s": 10.0, "delivered_s": None,
               "dose": {"stimulation_s": "n/a", "max_amplitude_ma": True,
                        "max_charge_per_phase_uc": float("nan")}}
    h = history_from_sessions("P-5", [session])
    assert h.entries[0].figures == {} and h.entries[0].delivered_s is None
    assert h.totals[0].figures == {} and h.totals[0].delivered_s == 0.0


def test_history_json(store: RecordStore, filled: dict[str, str]) -> None:
    data = json.loads(history_json(patient_history(store, "P-1")))
    assert data["patient"] == "P-1" and data["session_count"] == 6
    assert data["sessions"][0]["session_id"] == filled["heat1"]
    assert data["sessions"][0]["dose"] == {"cem43_min": 2.0}
    assert data["totals"]["ultrasound"]["dose"]["energy_j"] == pytest.approx(2700.0)
    assert data["totals"]["tens"]["sessions"] == 2


def test_history_entries_carry_patient_operator_times_and_device(store: RecordStore) -> None:
    sid = record_session(store, "P-7", "ultrasound", US_CONT, close=False)
    store.set_session_identity(sid, {"model": "US-300", "serial": "=SN1", "firmware": 2})
    store.close_session(sid, "completed", "done", "controller", 300.0, US_CONT)
    entry = json.loads(history_json(patient_history(store, "P-7")))["sessions"][0]
    assert entry["patient"] == "P-7" and entry["operator"] == "carol"
    assert entry["started_at"] < entry["ended_at"]
    assert entry["device_serial"] == "=SN1"
    assert entry["device"] == {"model": "US-300", "serial": "=SN1", "firmware": "2"}
    row = next(csv.DictReader(io.StringIO(history_csv(patient_history(store, "P-7")))))
    assert row["device_serial"] == "'=SN1"  # a typed-looking cell never runs as a formula


def test_history_csv_rows_then_totals(store: RecordStore, filled: dict[str, str]) -> None:
    rows = list(csv.DictReader(io.StringIO(history_csv(patient_history(store, "P-1")))))
    assert [r["row"] for r in rows] == ["session"] * 6 + ["total"] * 3
    assert {r["patient"] for r in rows} == {"P-1"}
    first = rows[0]
    assert first["session_id"] == filled["heat1"] and first["modality"] == "thermal"
    assert first["cem43_min"] == "2.0" and first["energy_j"] == ""
    us_total = next(r for r in rows if r["row"] == "total" and r["modality"] == "ultrasound")
    assert us_total["sessions"] == "2" and float(us_total["energy_j"]) == pytest.approx(2700.0)
    assert us_total["session_id"] == ""
    tens_total = rows[-1]
    assert tens_total["max_amplitude_ma"] == "30.0"
    assert float(tens_total["stimulation_s"]) == pytest.approx(1800.0)


def test_history_csv_neutralises_formula_cells(store: RecordStore) -> None:
    # Patient ids are looked up leniently and operators are typed: a spreadsheet must never
    # run a cell as a formula (OWASP CSV injection), and a CR/LF must never start a new row.
    patient = "=HYPERLINK(\"http://x\")"
    sid = store.open_session(profile="+hc-200", port="/dev/pts/9", identity={},
                             operator="@carol\r\nrow,forged", patient=patient,
                             prescription={"modality": "thermal"}, planned_s=60.0)
    store.close_session(sid, "completed", "done", "controller", 60.0, {"cem43_min": 1.0})
    text = history_csv(patient_history(store, patient))
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [r["row"] for r in rows] == ["session", "total"]
    assert {r["patient"] for r in rows} == {"'" + patient}
    assert rows[0]["operator"] == "'@carol\r\nrow,forged"
    assert rows[0]["profile"] == "'+hc-200"
    assert rows[0]["cem43_min"] == "1.0"  # numbers stay numbers
    for row in rows:
        assert not any(str(v).startswith(("=", "+", "-", "@")) for v in row.values())


def test_per_patient_export_adds_the_history(store: RecordStore,
                                             filled: dict[str, str]) -> None:
    data = json.loads(export_patient_json(store, "P-1"))
    assert data["patient"] == "P-1"
    # What RecordStore.export gives is all still there ...
    plain = json.loads(store.export("json", patient="P-1"))
    assert data["schema_version"] == plain["schema_version"]
    assert data["sessions"] == plain["sessions"]
    assert len(data["sessions"][0]["events"]) == 2
    # ... with the history of the same sessions beside it.
    assert [s["session_id"] for s in data["history"]["sessions"]] == \
        [s["id"] for s in data["sessions"]]
    assert data["history"]["totals"]["thermal"]["dose"]["cem43_min"] == pytest.approx(3.25)


def test_session_samples_in_time_order(store: RecordStore) -> None:
    sid = record_session(store, "P-6", "thermal", HEAT_44, close=False)
    other = record_session(store, "P-6", "thermal", HEAT_44, samples=[(0.1, {"x": 1})])
    for t in (0.4, 0.2, 0.6):
        store.add_sample(sid, {"temperature_c": 30.0 + t}, t_s=t, delivered_s=t,
                         dose={"cem43_min": t})
    # Still buffered in the store: session_samples flushes first.
    samples = session_samples(store, sid)
    assert [s.t_s for s in samples] == [0.2, 0.4, 0.6]
    assert samples[0].data == {"temperature_c": 30.2}
    assert samples[0].delivered_s == 0.2 and samples[0].dose == {"cem43_min": 0.2}
    assert [s.data for s in session_samples(store, other)] == [{"x": 1}]
    assert session_samples(store, "NO-SUCH-SESSION") == []
