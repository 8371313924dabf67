"""Bad requests to a real `modctl serve`: every answer is JSON with a sentence, 4xx for bad
input (never a 500, never a traceback), whatever the body; fuzzed with hypothesis."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.service.http_errors import MAX_BODY_BYTES
from tests.support.service import Client, Room, open_room

pytestmark = pytest.mark.slow

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
# Bodies shaped like a session request, with wrong or extreme values in each field.
START_LIKE = st.fixed_dictionaries(
    {"device": st.sampled_from(["heat-1", "", "x" * 100]) | st.integers() | st.none()},
    optional={"duration": JSON | st.sampled_from(["0", "-1s", "1e308", "nan", "99999h", "1m"]),
              "settings": st.dictionaries(st.text(max_size=20), JSON, max_size=5)
              | st.just({"temperature_c": "nan"}) | st.just({"temperature_c": 1e308}),
              "patient": JSON, "clear_fault": JSON})


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    room = open_room(tmp_path_factory.mktemp("room"), "hc-200")
    yield room
    room.close()


@pytest.fixture(scope="module")
def alice(room: Room) -> Client:
    return room.login("alice")


def refused(status: int, got: dict[str, Any]) -> None:
    assert 400 <= status < 500, (status, got)
    assert isinstance(got.get("error"), str) and got["error"], got
    assert "Traceback" not in json.dumps(got)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=JSON | START_LIKE)
def test_fuzzed_session_requests_get_a_sentence(alice: Client, room: Room, body: object) -> None:
    status, got = alice.call("POST", "/api/sessions", body)
    if status == 201:          # a valid request slipped through: stop it, it is real
        alice.ok("POST", f"/api/sessions/{got['id']}/estop")
        return
    refused(status, got)
    assert not room.output_on("heat-1")


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=JSON)
def test_fuzzed_login_bodies_get_a_sentence(room: Room, body: object) -> None:
    status, got = room.service.client().call("POST", "/api/login", body)
    refused(status, got)


@pytest.mark.parametrize("raw,needle", [
    (b"{", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b'{"device": "heat-1", "duration": 2, "settings": {}, "extra": 1}', "unknown field 'extra'"),
    (b'{"duration": 2}', "'device' is required"),
    (b"[]", "valid dictionary"),
])
def test_malformed_bodies(alice: Client, raw: bytes, needle: str) -> None:
    status, got = alice.call("POST", "/api/sessions", raw=raw)
    refused(status, got)
    assert status == 422 and needle in got["error"], got


def test_a_huge_body_is_refused_before_it_is_read(alice: Client) -> None:
    status, got = alice.call("POST", "/api/sessions", raw=b"x" * (MAX_BODY_BYTES + 1))
    assert status == 413 and str(MAX_BODY_BYTES) in got["error"]


def test_a_huge_chunked_body_is_refused(room: Room, alice: Client) -> None:
    where = urlsplit(room.service.base)
    chunk = b"x" * 8192
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(b"POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nAuthorization: Bearer " + alice.token.encode() +
                     b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass                    # the server may answer and close before the end
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_unknown_endpoints_and_methods(alice: Client) -> None:
    status, got = alice.call("GET", "/api/nothing-here")
    assert status == 404 and "no such endpoint" in got["error"]
    status, got = alice.call("DELETE", "/api/devices")
    assert status == 405 and "DELETE" in got["error"]
    status, got = alice.call("GET", "/api/sessions?limit=100000")
    assert status == 422 and "limit" in got["error"]


def test_openapi_is_served(room: Room) -> None:
    status, got = room.service.client().call("GET", "/openapi.json")
    assert status == 200 and "/api/sessions" in got["paths"]
