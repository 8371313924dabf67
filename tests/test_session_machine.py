"""The session state machine: its shape, its rules, and the committed diagram."""

from __future__ import annotations

from pathlib import Path

import pytest
from transitions import MachineError

from controller.cli.diagram_cmd import document
from controller.session.machine import (
    ACTIVE_OUTPUT,
    STATES,
    TERMINAL,
    TRANSITIONS,
    SessionState,
    build_machine,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "session-states.md"


def machine() -> SessionState:
    model = SessionState()
    build_machine(model)
    return model


def test_committed_diagram_matches_the_code() -> None:
    assert DOC.read_text() == document(), "regenerate: modctl diagram --doc > " + str(DOC)


def test_states_are_the_designed_ones() -> None:
    assert set(STATES) == {"connecting", "identifying", "arming", "ramping", "delivering",
                           "holding", "stopping", "completed", "aborted", "fault", "rejected"}


def test_no_auto_transitions_no_jump_to_a_state_by_name() -> None:
    model = machine()
    assert not hasattr(model, "to_delivering")
    with pytest.raises(MachineError):
        model.fire("output_started")   # not from connecting


def test_every_way_out_of_an_output_goes_through_stopping() -> None:
    for t in TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        if set(sources) & set(ACTIVE_OUTPUT) and t["dest"] not in ACTIVE_OUTPUT:
            assert t["dest"] == "stopping", t


def test_terminal_states_have_no_way_out() -> None:
    for t in TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        assert not set(sources) & set(TERMINAL), t


@pytest.mark.parametrize(("outcome", "final"), [("completed", "completed"),
                                                 ("aborted", "aborted"), ("fault", "fault"),
                                                 ("", "fault")])
def test_stopping_ends_in_the_decided_outcome(outcome: str, final: str) -> None:
    model = machine()
    for trigger in ("connected", "identified", "output_started", "ramp_complete",
                    "end_output"):
        model.fire(trigger)
    model.outcome = outcome
    model.fire("stop_done")
    assert model.state == final


def test_contact_hold_round_trip() -> None:
    model = machine()
    for trigger in ("connected", "identified", "output_started", "ramp_complete",
                    "contact_lost"):
        model.fire(trigger)
    assert model.state == "holding"
    model.fire("contact_restored")
    assert model.state == "delivering"


def test_a_failure_before_output_still_goes_through_stopping() -> None:
    model = machine()
    model.fire("connected")
    model.fire("fail")
    assert model.state == "stopping"
