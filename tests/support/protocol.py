"""`expected_protocol`: an engine must write exactly these requests and gets these replies.

Modelled on PyMeasure's `expected_protocol`: the test lists the conversation as
(request, reply) byte pairs, taken from the device's manual; the engine gets a
port that checks each write against the next request byte for byte, answers
with the paired reply (b"" for silence: the engine then times out, in virtual
time), and at the end every pair must have been used.

    with expected_protocol(lambda port: ModbusEngine(port, HC_MAP, 0.05, 2), [
        (bytes.fromhex("01 04 00 00 00 01 31 CA"), bytes.fromhex("01 04 02 01 74 B8 87")),
    ]) as engine:
        assert engine.read(["pad_temp"]) == {"pad_temp": 37.2}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from protocols.transport import Transport
from tests.support.ports import ScriptedPort

Pair = tuple[bytes, bytes]
E = TypeVar("E")


class ExpectedPort(ScriptedPort):
    """A ScriptedPort whose device is the list of expected (request, reply) pairs."""

    def __init__(self, pairs: Sequence[Pair]) -> None:
        super().__init__(self._answer, max_writes=len(pairs) + 1)
        self.pairs = list(pairs)
        self.used = 0

    def _answer(self, data: bytes) -> bytes:
        n = self.used
        assert n < len(self.pairs), (
            f"unexpected write after all {len(self.pairs)} expected requests: {data.hex(' ')}")
        request, reply = self.pairs[n]
        assert data == request, (
            f"request {n + 1} of {len(self.pairs)}: expected {request.hex(' ')}, "
            f"got {data.hex(' ')}")
        self.used += 1
        return reply

    def assert_all_used(self) -> None:
        left = self.pairs[self.used:]
        assert not left, (f"{len(left)} expected request(s) never sent, the first: "
                          f"{left[0][0].hex(' ')}")


@contextmanager
def expected_protocol(make_engine: Callable[[Transport], E],
                      pairs: Sequence[Pair]) -> Iterator[E]:
    """The engine `make_engine(port)` on an ExpectedPort; checks at exit that all pairs were used.

    A test that expects the block to raise (a refusal, a timeout) still has every
    pair checked: put `pytest.raises` inside the `with`.
    """
    port = ExpectedPort(pairs)
    with port:
        engine = make_engine(port)
        yield engine
    port.assert_all_used()
