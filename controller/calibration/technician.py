"""Who supplies the reference readings: the technician at prompts, or a readings file.

The procedures ask a `Technician` for the reference at each point; they never know which
kind it is, except that an unattended one cannot be waited for (`unattended`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from controller.calibration.plan import (
    PHASE_TEXT,
    CalibrationPlan,
    ModalityShape,
    Phase,
    PointSpec,
    channel_text,
)
from controller.profiles.numbers import NumberError, parse_decimal

Ask = Callable[[str], str]
Say = Callable[[str], None]
# A typing slip is forgiven this many times per question before the run is abandoned:
# enough for a fumble, few enough that a script feeding wrong answers stops soon.
MAX_TRIES = 3
ABORT_WORDS = frozenset({"abort", "quit", "q"})


class CalibrationAborted(Exception):
    """The technician stopped the procedure (typed abort, end of input, Ctrl-C)."""


@dataclass(frozen=True)
class PointRequest:
    """One reading the procedure needs, with everything a prompt or a lookup needs."""

    phase: Phase
    index: int
    count: int
    channel: int | None
    spec: PointSpec
    shape: ModalityShape
    instruction: str
    """What to do before reading, in the technician's words."""
    device_value: float | None = None
    """The device's own measurement at this point, when it has one before the reference."""

    @property
    def title(self) -> str:
        return (f"{channel_text(self.channel)}{PHASE_TEXT[self.phase]} point "
                f"{self.index + 1} of {self.count}")


@dataclass(frozen=True)
class Reference:
    value: float
    source: Literal["technician", "file", "device"]


class Technician(Protocol):
    unattended: bool

    def reference(self, request: PointRequest) -> Reference: ...


class PromptTechnician:
    """Asks at a prompt (`ask` is `input` on a terminal; tests inject their own)."""

    unattended = False

    def __init__(self, ask: Ask, say: Say, *, device_may_answer: bool = False) -> None:
        self.ask = ask
        self.say = say
        self.device_may_answer = device_may_answer

    def reference(self, request: PointRequest) -> Reference:
        shape = request.shape
        self.say(f"{request.title}: {request.instruction}")
        offer = request.device_value if self.device_may_answer else None
        hint = f" [Enter: the device's own {offer:g}]" if offer is not None else ""
        prompt = f"  {shape.reading} in {shape.unit}{hint} (or 'abort'): "
        for _ in range(MAX_TRIES):
            text = self._answer(prompt)
            if not text and offer is not None:
                return Reference(offer, "device")
            value = _number(text)
            if value is not None:
                return Reference(value, "technician")
            self.say(f"  '{text}' is not a number: type the reading in {shape.unit}, "
                     "e.g. 41.97, or 'abort'")
        raise CalibrationAborted(f"no usable {shape.reading} after {MAX_TRIES} tries")

    def text(self, prompt: str) -> str:
        """A non-empty free-text answer (instrument name, id)."""
        for _ in range(MAX_TRIES):
            text = self._answer(prompt)
            if text:
                return text
            self.say("  an answer is needed here (or 'abort')")
        raise CalibrationAborted(f"no answer to '{prompt.strip()}' after {MAX_TRIES} tries")

    def _answer(self, prompt: str) -> str:
        try:
            text = self.ask(prompt).strip()
        except EOFError:
            raise CalibrationAborted("no answer (end of input)") from None
        if text.lower() in ABORT_WORDS:
            raise CalibrationAborted("abandoned by the technician")
        return text


class FileTechnician:
    """Answers from a readings file (or the device's own measurement when the plan says so)."""

    unattended = True

    def __init__(self, plan: CalibrationPlan, say: Say) -> None:
        self.plan = plan
        self.say = say

    def reference(self, request: PointRequest) -> Reference:
        self.say(f"{request.title}: {request.instruction}")
        if self.plan.reference_source == "device":
            if request.device_value is None:
                raise CalibrationAborted(f"{request.title}: the device gave no measurement")
            return Reference(request.device_value, "device")
        if request.spec.reference is None:   # load_readings refuses such a plan
            raise CalibrationAborted(f"{request.title}: the readings file has no reference")
        return Reference(request.spec.reference, "file")


def _number(text: str) -> float | None:
    # A decimal comma (41,97) is how many technicians write; only when it is unambiguous.
    if text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")
    try:   # ASCII decimal only, as every typed value (controller/profiles/numbers.py)
        return parse_decimal(text.strip(), "reading")
    except NumberError:
        return None
