"""Typed numbers are ASCII decimal only (issue 10 §7): one grammar everywhere.

Python's float()/int() accept "٤٠", full-width "４０" and surrounding spaces; a value
that reaches a patient must be exactly what was typed and what the record shows.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.modality.prescription import (
    DurationError,
    PrescriptionRejected,
    SettingsError,
    build_prescription,
    parse_duration,
    parse_settings,
)
from controller.plans.plan import PlanError, load_plan
from controller.profiles.loader import resolve_profile
from controller.profiles.numbers import NumberError, parse_decimal, parse_integer

HC = resolve_profile("hc-200").profile
ES = resolve_profile("es-4").profile

# Decimal digits of every script except ASCII: what float() silently accepts.
OTHER_DIGITS = st.characters(categories=["Nd"]).filter(lambda c: not "0" <= c <= "9")


@st.composite
def foreign_number(draw: st.DrawFn) -> str:
    """A number with at least one non-ASCII digit (float() would read it)."""
    ascii_part = draw(st.text("0123456789", max_size=3))
    foreign = draw(st.lists(OTHER_DIGITS, min_size=1, max_size=3))
    digits = list(ascii_part) + foreign
    return "".join(draw(st.permutations(digits)))


@given(foreign_number())
def test_other_scripts_digits_are_refused_everywhere(text: str) -> None:
    float(text)   # the premise: Python itself would accept it
    with pytest.raises(NumberError, match="only the ASCII digits"):
        parse_decimal(text, "x")
    with pytest.raises(NumberError):
        parse_integer(text, "x")
    with pytest.raises(DurationError):
        parse_duration(text)
    with pytest.raises(PrescriptionRejected) as exc:
        build_prescription(HC, {"temperature_c": text}, 300)
    assert exc.value.messages() == [
        f"temperature_c={text} is not a number (only the ASCII digits 0-9 are accepted)"]


@given(st.integers(0, 10**6), st.sampled_from([" ", "\t", "\u00a0", "\u2003", "\n"]),
       st.booleans())
def test_spaces_around_a_value_are_refused(n: int, space: str, before: bool) -> None:
    text = f"{space}{n}" if before else f"{n}{space}"
    with pytest.raises(NumberError, match="spaces"):
        parse_decimal(text, "x")
    with pytest.raises(DurationError):
        parse_duration(text)


@given(st.decimals(min_value=-10**6, max_value=10**6, places=3, allow_nan=False))
def test_plain_decimals_read_exactly_as_float_would(value: object) -> None:
    text = str(value)
    assert parse_decimal(text, "x") == float(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400", "1e3", "", " 40", "40 ",
                                  "+-4", "--4", "4.4.4", "1,5", "0x10", "４０", "٤٠", "40\n",
                                  "1_000", "Infinity", "+"])
def test_refused_forms(text: str) -> None:
    with pytest.raises(NumberError) as exc:
        parse_decimal(text, "v")
    assert str(exc.value).startswith("v is not a number")


@pytest.mark.parametrize(("text", "value"), [("40", 40.0), ("+40", 40.0), ("-3.5", -3.5),
                                             (".5", 0.5), ("5.", 5.0), ("007", 7.0)])
def test_accepted_forms(text: str, value: float) -> None:
    assert parse_decimal(text, "v") == value


def test_integers_say_whole_number_for_a_decimal() -> None:
    assert parse_integer("-12", "n") == -12
    with pytest.raises(NumberError, match="n is not a whole number"):
        parse_integer("12.0", "n")
    with pytest.raises(NumberError, match="only the ASCII digits"):
        parse_integer("１２", "n")


def test_full_width_and_arabic_indic_in_settings_and_integer_parameters() -> None:
    assert unicodedata.digit("٤") == 4
    with pytest.raises(PrescriptionRejected) as exc:
        build_prescription(ES, {"amplitude_ma": "10", "frequency_hz": "１００"}, 300)
    assert exc.value.messages() == [
        "frequency_hz=１００ is not an integer (only the ASCII digits 0-9 are accepted)"]
    with pytest.raises(SettingsError):
        parse_settings(["temperature_c= 40"])


def test_durations_with_units_take_ascii_digits_only() -> None:
    assert parse_duration("1m30s") == 90.0
    for text in ("٥m", "1m３0s", "５", " 90s", "90s "):
        with pytest.raises(DurationError):
            parse_duration(text)


@pytest.mark.parametrize(("field", "value"), [
    ("set", "{temperature_c: '٤٠'}"), ("set", "{temperature_c: ' 40'}"),
    ("duration", "'١٠m'"), ("duration", "'10m '")])
def test_plan_values_are_read_with_the_same_grammar(tmp_path: object, field: str,
                                                   value: str) -> None:
    from pathlib import Path
    assert isinstance(tmp_path, Path)
    set_text = value if field == "set" else "{temperature_c: 40}"
    duration = value if field == "duration" else "10m"
    path = tmp_path / "plan.yaml"
    path.write_text(f"""plan_format: 1
name: ascii only
devices:
  heat: {{profile: hc-200}}
steps:
  - name: warm
    device: heat
    duration: {duration}
    set: {set_text}
""", encoding="utf-8")
    with pytest.raises(PlanError) as exc:
        load_plan(str(path))
    assert "ASCII digits" in str(exc.value) or "spaces" in str(exc.value), str(exc.value)
