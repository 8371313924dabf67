"""Stops through the clinic service reach a device answering at the slow end of its manual
(the US-300 may take 50 ms a reply) within the one exchange on the wire, late in a session,
for a stop request and for the room's e-stop: the same bound as the command line's Ctrl-C
(tests/test_stop_slow_devices.py), plus the request's own trip."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.session_helpers import history
from tests.support.service import SETTINGS, Room, open_room, wait_for
from tests.test_session_signals import OPERATOR_STOP_S
from tests.test_stop_slow_devices import SLOW_REPLY_MS

pytestmark = pytest.mark.slow

# The HTTP request on loopback and the token check, on top of the command line's bound.
REQUEST_S = 0.05
RUN_BEFORE_STOP_S = 3.0


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    room = open_room(tmp_path_factory.mktemp("room"), "us-300",
                     delay_ms=SLOW_REPLY_MS["us-300"])
    yield room
    room.close()


@pytest.mark.parametrize("path", ["/api/sessions/{id}/stop", "/api/estop"])
def test_a_stop_request_reaches_a_slow_device_within_one_reply(room: Room, path: str) -> None:
    alice = room.login("alice")
    device = room.sims["us-1"]
    assert wait_for(lambda: alice.ok("GET", "/api/devices/us-1")["state"] == "idle", 15)
    before = len(history(device))
    sid = alice.ok("POST", "/api/sessions", {"device": "us-1", "duration": "60s",
                                             "settings": SETTINGS["us-1"]})["id"]
    assert room.output_on("us-1")
    time.sleep(RUN_BEFORE_STOP_S)          # wake-ups and polls pile up on a slow link
    sent = time.monotonic()
    alice.ok("POST", path.format(id=sid))
    off = [c for c in history(device)[before:] if not c.on]
    assert off, "device output never stopped"
    late = off[0].t - sent
    bound = OPERATOR_STOP_S + 2 * SLOW_REPLY_MS["us-300"] / 1000 + REQUEST_S
    assert late < bound, f"{late:.3f} s"
    # The stop answered 202 (posted) or 200 (confirmed): wait for the session's end.
    assert wait_for(lambda: "stop_confirmed" in alice.ok("GET", f"/api/sessions/{sid}"), 5)
    report = alice.ok("GET", f"/api/sessions/{sid}")
    assert report["stop_confirmed"] is True and report["stop_source"] == "operator"
