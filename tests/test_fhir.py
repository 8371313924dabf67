"""`records export --format fhir`: a FHIR R4 Bundle of a mixed clinic day, every resource
validated by `fhir.resources` (its R4B models: Procedure, Device, Observation and Bundle are
the same as R4's), one bundle round-tripped, the codes and references checked."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from controller.cli import records_cmd
from controller.records.fhir import SNOMED, THERAPY_CODES, fhir_bundle
from controller.records.store import RecordStore
from tests.test_history import HEAT_44, TENS_25, US_CONT, record_session

SYSTEM = "urn:oid:1.2.276.0.76.4.17"
UCUM = "http://unitsofmeasure.org"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="modctl")
    records_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["records", *argv])
    status: int = args.run(args)
    return status


@pytest.fixture
def day(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """`a_mixed_day` in an SQLite file."""
    path = tmp_path / "records.sqlite3"
    with RecordStore(path) as store:
        ids = a_mixed_day(store)
    yield path, ids


def a_mixed_day(store: RecordStore) -> dict[str, str]:
    """A mixed clinic day: heat with notes, cold, ultrasound, TENS, one stopped by the
    patient, one refused, and a session of another patient."""
    ids = {"heat": record_session(store, "P-0042", "thermal", HEAT_44, close=False,
                                  values={"temperature_c": 44.0})}
    store.set_session_identity(ids["heat"], {"model": "18499", "serial": "HC-1001",
                                             "firmware": "100"})
    store.close_session(ids["heat"], "completed", "planned duration delivered",
                        "controller", 60.0, HEAT_44)
    store.add_note(ids["heat"], actor="carol", body_site="left knee",
                   skin_before="intact", skin_after="mild redness", pain_before=6,
                   pain_after=3, text="Tolerated well.")
    ids["cold"] = record_session(store, "P-0042", "thermal",
                                 {"min_pad_temp_c": 12.2, "output_s": 600.0},
                                 regimes=("cold",), values={"temperature_c": 12.0})
    ids["us"] = record_session(store, "P-0042", "ultrasound", {**US_CONT, "era_cm2": 5.0},
                               delivered_s=300.0)
    ids["tens"] = record_session(store, "P-0107", "tens", TENS_25, delivered_s=1200.0)
    ids["aborted"] = record_session(store, "P-0042", "tens", TENS_25, outcome="aborted")
    ids["rejected"] = record_session(store, "P-0042", "ultrasound", None,
                                     outcome="rejected", delivered_s=0.0)
    return ids


@pytest.fixture
def clinic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roles = tmp_path / "roles.yaml"
    roles.write_text(f"clinic:\n  name: Riverside\n  patient_id_system: \"{SYSTEM}\"\n",
                     encoding="utf-8")
    roles.chmod(0o644)
    monkeypatch.setenv("MODCTL_ROLES", str(roles))


def export(db: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert run("export", "--format", "fhir", *extra, "--db", str(db)) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_every_resource_of_a_mixed_day_validates(day: tuple[Path, dict[str, str]],
                                                 clinic: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = day
    bundle = export(db, capsys)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert kinds == {"Procedure", "Observation", "Device"}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        assert model.id == resource["id"]
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
    Bundle.model_validate(bundle)


def test_a_mixed_day_on_postgresql_validates(pg_url: str, clinic: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The same export from the database several rooms share."""
    with RecordStore(pg_url) as store:
        ids = a_mixed_day(store)
    assert run("export", "--format", "fhir", "--db", pg_url) == 0
    bundle = json.loads(capsys.readouterr().out)
    Bundle.model_validate(bundle)
    for resource in resources(bundle, "Procedure"):
        get_fhir_model_class("Procedure").model_validate(resource)
    assert len(resources(bundle, "Procedure")) == len(ids)


def test_one_bundle_round_trips(day: tuple[Path, dict[str, str]], clinic: None,
                                capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = day
    bundle = export(db, capsys)
    first = Bundle.model_validate(bundle)
    text = first.model_dump_json(by_alias=True, exclude_none=True)
    second = Bundle.model_validate_json(text)
    assert second.model_dump() == first.model_dump()
    back = json.loads(text)
    assert same(back, bundle)  # nothing lost or changed; instants may be written differently


def same(got: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(
            same(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(
            same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)", want):
        return datetime.fromisoformat(got.replace("Z", "+00:00")) == \
            datetime.fromisoformat(want)
    return bool(got == want)


def test_procedures_say_what_was_done_to_whom(day: tuple[Path, dict[str, str]], clinic: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    db, ids = day
    bundle = export(db, capsys)
    procs = {p["identifier"][0]["value"]: p for p in resources(bundle, "Procedure")}
    assert set(procs) == set(ids.values())
    heat = procs[ids["heat"]]
    assert heat["status"] == "completed"
    assert heat["code"]["coding"] == [{"system": SNOMED, "code": THERAPY_CODES["heat"][0],
                                       "display": THERAPY_CODES["heat"][1]}]
    assert heat["code"]["text"] == "Heat therapy"
    assert heat["subject"] == {"identifier": {"system": SYSTEM, "value": "P-0042"}}
    assert heat["performer"][0]["actor"]["display"] == "carol"
    assert heat["performedPeriod"]["start"] < heat["performedPeriod"]["end"]
    assert heat["bodySite"] == [{"text": "left knee"}]
    assert [n["text"] for n in heat["note"]] == [
        "Skin check before: intact", "Skin check after: mild redness", "Tolerated well."]
    assert procs[ids["cold"]]["code"]["coding"][0]["code"] == THERAPY_CODES["cold"][0]
    assert procs[ids["us"]]["code"]["coding"][0]["code"] == THERAPY_CODES["ultrasound"][0]
    assert procs[ids["tens"]]["code"]["coding"][0]["code"] == THERAPY_CODES["tens"][0]
    assert procs[ids["aborted"]]["status"] == "stopped"
    assert procs[ids["aborted"]]["statusReason"] == {"text": "pad over temperature"}
    assert procs[ids["rejected"]]["status"] == "not-done"
    # No names anywhere: patients are their pseudonymous ids in the clinic's system.
    subjects = {json.dumps(r["subject"], sort_keys=True)
                for r in resources(bundle, "Procedure") + resources(bundle, "Observation")}
    assert subjects == {json.dumps({"identifier": {"system": SYSTEM, "value": p}},
                                   sort_keys=True) for p in ("P-0042", "P-0107")}


def test_devices_and_observations(day: tuple[Path, dict[str, str]], clinic: None,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    db, ids = day
    bundle = export(db, capsys)
    devices = {d["id"]: d for d in resources(bundle, "Device")}
    heat = next(p for p in resources(bundle, "Procedure")
                if p["identifier"][0]["value"] == ids["heat"])
    device = devices[heat["focalDevice"][0]["manipulated"]["reference"].removeprefix(
        "urn:uuid:")]
    assert device["serialNumber"] == "HC-1001"
    assert device["manufacturer"] == "Generic Therapy Devices"
    assert device["deviceName"] == [{"name": "HC-200", "type": "model-name"}]
    assert device["version"] == [{"type": {"text": "firmware"}, "value": "100"}]
    observations = resources(bundle, "Observation")
    refs = {f"urn:uuid:{p['id']}" for p in resources(bundle, "Procedure")}
    assert all(o["partOf"][0]["reference"] in refs for o in observations)
    quantities = {(o["code"]["coding"][0]["code"], o["valueQuantity"]["code"]):
                  o["valueQuantity"]["value"] for o in observations
                  if o["partOf"][0]["reference"] == f"urn:uuid:{heat['id']}"}
    assert quantities[("cem43_min", "min")] == 2.0
    assert quantities[("max_pad_temp_c", "Cel")] == 44.0
    assert quantities[("72514-3", "{score}")] in (6, 3)
    assert all(o["valueQuantity"]["system"] == UCUM for o in observations)
    us_codes = {o["code"]["coding"][0]["code"]: o["valueQuantity"] for o in observations
                if o["code"]["coding"][0]["code"].startswith("energy")}
    assert us_codes["energy_j"]["code"] == "J" and us_codes["energy_j"]["value"] == 2250
    assert us_codes["energy_density_j_cm2"] == {"value": 450, "unit": "J/cm²",
                                                "system": UCUM, "code": "J/cm2"}
    tens = {o["code"]["coding"][0]["code"]: o["valueQuantity"]["code"] for o in observations}
    assert tens["max_charge_per_phase_uc"] == "uC"
    assert tens["max_current_density_rms_ma_cm2"] == "mA/cm2"
    pain = [o for o in observations if o["code"]["coding"][0]["system"] == "http://loinc.org"]
    assert sorted(o["valueQuantity"]["value"] for o in pain) == [3, 6]
    assert {o["code"]["text"] for o in pain} == {"Pain before the treatment (0-10)",
                                                 "Pain after the treatment (0-10)"}


def test_patient_and_since_filters(day: tuple[Path, dict[str, str]], clinic: None,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    db, ids = day
    only = export(db, capsys, "--patient", "P-0107")
    assert [p["identifier"][0]["value"] for p in resources(only, "Procedure")] == [ids["tens"]]
    assert len(resources(only, "Device")) == 1
    today = datetime.now().astimezone().date()
    assert len(resources(export(db, capsys, "--since", today.isoformat()),
                         "Procedure")) == len(ids)
    later = today.replace(year=today.year + 1)
    assert resources(export(db, capsys, "--since", later.isoformat()), "Procedure") == []
    with pytest.raises(SystemExit) as info:
        run("export", "--format", "fhir", "--since", "yesterday", "--db", str(db))
    assert info.value.code == 2
    assert "not a day: give YYYY-MM-DD" in capsys.readouterr().err


def test_ids_are_stable_across_exports(day: tuple[Path, dict[str, str]], clinic: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = day
    first = [e["fullUrl"] for e in export(db, capsys)["entry"]]
    assert first == [e["fullUrl"] for e in export(db, capsys)["entry"]]
    assert len(set(first)) == len(first)


def test_default_patient_system_and_unrecorded_patients(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODCTL_ROLES", "")
    with RecordStore(tmp_path / "records.sqlite3") as store:
        sid = record_session(store, None, "thermal", HEAT_44)
        bundle = fhir_bundle(store.sessions_oldest_first(), {}, patient_system="urn:modctl:patient")
    [proc] = resources(bundle, "Procedure")
    assert proc["subject"] == {"display": "patient not recorded"}
    assert proc["identifier"][0]["value"] == sid
    Bundle.model_validate(bundle)


def test_a_bad_patient_system_in_the_roles_file_is_refused(
        day: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = day
    roles = tmp_path / "roles.yaml"
    roles.write_text("clinic:\n  patient_id_system: not a uri\n", encoding="utf-8")
    roles.chmod(0o644)
    monkeypatch.setenv("MODCTL_ROLES", str(roles))
    assert run("export", "--format", "fhir", "--db", str(db)) == 1
    err = capsys.readouterr().err
    assert "clinic.patient_id_system" in err and len(err.splitlines()) == 1
