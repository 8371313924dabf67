"""Accounts over HTTP: login and logout, tokens and cookies, CSRF, rate limits, and every
endpoint with every role (a real `modctl serve` on a loopback port)."""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.service import PASSWORD, Client, Room, open_room

pytestmark = pytest.mark.slow

ROLES = ("clinician", "technician", "admin")
USERS = {"clinician": "alice", "technician": "tom", "admin": "ada"}
ANYONE = frozenset(ROLES)

# (method, path, body, roles allowed). Bodies are valid where they can be, so an allowed
# role gets past the role check (a 2xx, or a 4xx that is not 401/403); state-changing
# calls that would leave something running use a device that refuses them harmlessly.
ENDPOINTS: list[tuple[str, str, object, frozenset[str]]] = [
    ("GET", "/api/me", None, ANYONE),
    ("GET", "/api/devices", None, ANYONE),
    ("GET", "/api/devices/heat-1", None, ANYONE),
    ("GET", "/api/sessions", None, ANYONE),
    ("GET", "/api/sessions/NOSUCH", None, ANYONE),
    ("GET", "/api/bookings", None, ANYONE),
    ("GET", "/api/bookings/99999", None, ANYONE),
    ("GET", "/api/plans", None, ANYONE),
    ("GET", "/api/calibration", None, ANYONE),
    ("GET", "/api/records/verify", None, ANYONE),
    ("GET", "/api/patients/P-0001/history", None, ANYONE),
    ("POST", "/api/sessions", {"device": "heat-1", "duration": "2s",
                               "settings": {"temperature_c": 99}},
     frozenset({"clinician", "admin"})),
    ("GET", "/api/devices/heat-1/form", None, ANYONE),
    ("GET", "/api/alarms", None, ANYONE),
    ("GET", "/api/rooms", None, ANYONE),
    ("POST", "/api/alarms/99999/ack", None, ANYONE),
    ("GET", "/api/sessions/NOSUCH/report", None, ANYONE),
    ("GET", "/api/sessions/NOSUCH/notes", None, ANYONE),
    ("POST", "/api/sessions/NOSUCH/notes", {"text": "x"}, frozenset({"clinician", "admin"})),
    ("POST", "/api/plans/run", {"plan": "no-such-plan", "devices": {}},
     frozenset({"clinician", "admin"})),
    ("GET", "/api/plans/runs", None, ANYONE),
    ("GET", "/api/plans/runs/NOSUCH", None, ANYONE),
    ("POST", "/api/plans/runs/NOSUCH/stop", None, ANYONE),
    ("POST", "/api/plans/runs/NOSUCH/estop", None, ANYONE),
    ("POST", "/api/bookings/99999/start", None, frozenset({"clinician", "admin"})),
    ("POST", "/api/sessions/NOSUCH/stop", None, ANYONE),
    ("POST", "/api/sessions/NOSUCH/estop", None, ANYONE),
    ("POST", "/api/estop", None, ANYONE),
    ("POST", "/api/devices", {"name": "x", "profile": "no-such-profile", "port": "/dev/null"},
     frozenset({"technician", "admin"})),
    ("POST", "/api/devices/NOSUCH/release", None, frozenset({"technician", "admin"})),
    ("POST", "/api/devices/NOSUCH/hold", None, frozenset({"technician", "admin"})),
    ("GET", "/api/users", None, frozenset({"admin"})),
    ("POST", "/api/users", {"name": "x", "role": "nurse", "password": "p"},
     frozenset({"admin"})),
    ("POST", "/api/users/NOSUCH/disable", None, frozenset({"admin"})),
]


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    room = open_room(tmp_path_factory.mktemp("room"), "hc-200")
    yield room
    room.close()


@pytest.fixture(scope="module")
def by_role(room: Room) -> dict[str, Client]:
    """One login per role for the endpoint table (a login verifies an Argon2id hash: ~0.25 s,
    60 of them would be 15 s of the module; the tests of logins log in for themselves)."""
    return {role: room.login(USERS[role]) for role in ROLES}


@pytest.mark.parametrize("method,path,body,allowed", ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_every_endpoint_with_every_role(room: Room, by_role: dict[str, Client], method: str,
                                        path: str, body: object,
                                        allowed: frozenset[str]) -> None:
    status, got = room.service.client().call(method, path, body)
    assert status == 401 and "log in" in got["error"]
    for role in ROLES:
        status, got = by_role[role].call(method, path, body)
        if role in allowed:
            assert status not in (401, 403), (role, got)
        else:
            assert status == 403, (role, got)
            assert role in got["error"] and " may " in got["error"]
            assert "only a " in got["error"] or "only an admin" in got["error"]


def test_login_logout_and_the_token(room: Room) -> None:
    client = room.service.client()
    status, got = client.call("POST", "/api/login", {"username": "alice", "password": "nope"})
    assert status == 401 and got["error"] == "wrong user name or password"
    status, got = client.call("POST", "/api/login", {"username": "nobody", "password": "x"})
    assert status == 401 and got["error"] == "wrong user name or password"
    alice = client.login("alice")
    me = alice.ok("GET", "/api/me")
    assert me["user"]["name"] == "alice" and me["user"]["role"] == "clinician"
    assert alice.ok("POST", "/api/logout") == {"ok": True}
    status, got = alice.call("GET", "/api/me")
    assert status == 401


def test_the_recorded_operator_is_the_account_never_a_typed_name(room: Room) -> None:
    alice = room.login("alice")
    status, got = alice.call("POST", "/api/sessions", {
        "device": "heat-1", "duration": "1s", "settings": {"temperature_c": 40},
        "operator": "mallory"})
    assert status == 422 and "unknown field 'operator'" in got["error"]


def test_a_cookie_login_needs_the_csrf_header_for_changes(room: Room) -> None:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    base = room.service.base

    def call(method: str, path: str, body: object = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(base + path, method=method, headers=headers or {},
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Content-Type", "application/json")
        try:
            with opener.open(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, got = call("POST", "/api/login", {"username": "tom", "password": PASSWORD})
    assert status == 200
    cookies = {c.name: c for c in jar}
    assert cookies["modctl_token"].has_nonstandard_attr("HttpOnly")
    assert cookies["modctl_token"].get_nonstandard_attr("SameSite") == "strict"
    assert call("GET", "/api/me")[0] == 200               # reads need no CSRF token
    status, refused = call("POST", "/api/estop")
    assert status == 403 and "X-CSRF-Token" in refused["error"]
    status, _ = call("POST", "/api/estop", headers={"X-CSRF-Token": "guess"})
    assert status == 403
    status, _ = call("POST", "/api/estop", headers={"Origin": "http://evil.example"})
    assert status == 403
    assert call("POST", "/api/estop", headers={"X-CSRF-Token": got["csrf"]})[0] == 200
    assert call("POST", "/api/estop", headers={"Origin": base})[0] == 200


def test_failed_logins_are_rate_limited_per_account(room: Room) -> None:
    client = room.service.client()
    statuses = [client.call("POST", "/api/login", {"username": "bob", "password": "wrong"})[0]
                for _ in range(6)]
    # The fifth failure in the window locks the account (its answer says so already).
    assert statuses[:4] == [401] * 4 and statuses[4:] == [429, 429]
    status, got = client.call("POST", "/api/login", {"username": "bob", "password": PASSWORD})
    assert status == 429 and got["retry_after_s"] > 0 and "try again" in got["error"]
    assert client.login("alice").token         # another account is not locked


def test_admins_manage_accounts_and_a_disabled_account_is_logged_out(room: Room) -> None:
    ada = room.login("ada")
    made = ada.ok("POST", "/api/users", {"name": "carol", "role": "clinician",
                                         "password": "a long enough password"})
    assert made["name"] == "carol" and made["role"] == "clinician"
    status, got = ada.call("POST", "/api/users", {"name": "carol", "role": "clinician",
                                                  "password": "a long enough password"})
    assert status == 409
    status, got = ada.call("POST", "/api/users", {"name": "dave", "role": "clinician",
                                                  "password": "short"})
    assert status == 422 and "password" in got["error"]
    carol = Client(room.service.base).login("carol", "a long enough password")
    assert carol.ok("GET", "/api/me")["user"]["name"] == "carol"
    ada.ok("POST", "/api/users/carol/disable")
    assert carol.call("GET", "/api/me")[0] == 401
    status, _ = carol.call("POST", "/api/login", {"username": "carol",
                                                  "password": "a long enough password"})
    assert status == 401
    names = {u["name"]: u for u in ada.ok("GET", "/api/users")["users"]}
    assert names["carol"]["disabled"] is True


def test_the_role_table_covers_every_endpoint(room: Room) -> None:
    paths = room.service.client().ok("GET", "/openapi.json")["paths"]
    missing = []
    for path, methods in paths.items():
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
        for method in methods:
            if path in ("/api/login", "/api/logout", "/api/events") \
                    or not path.startswith("/api/"):
                continue      # logins are tested above; the stream below (it never ends)
            if not any(m == method.upper() and pattern.match(p) for m, p, _, _ in ENDPOINTS):
                missing.append(f"{method.upper()} {path}")
    assert not missing, missing


def test_the_live_stream_needs_a_login(room: Room) -> None:
    status, got = room.service.client().call("GET", "/api/events")
    assert status == 401 and "log in" in got["error"]
