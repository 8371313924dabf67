"""A PostgreSQL database for the tests: a fresh schema per test in the server's `test` database.

The server is the one CI runs beside the tests (127.0.0.1:5432, trust authentication), or the
one `MODCTL_TEST_PG` names. A developer without one gets a skip with the reason; `.ci/run` sets
`MODCTL_REQUIRE_PG=1`, which turns a missing server into a failure instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

PG_ENV = "MODCTL_TEST_PG"
REQUIRE_ENV = "MODCTL_REQUIRE_PG"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get(PG_ENV, DEFAULT_URL)


def _admin() -> object:
    """A connection to the server, or a skip (a failure under `.ci/run`) saying why not."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pytest.fail("psycopg is not installed")
    try:
        conn = psycopg.connect(server_url(), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"no PostgreSQL server at {server_url()} ({str(exc).strip()[:200]})"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(reason)
        pytest.skip(reason)
    # The booking exclusion constraint needs btree_gist; installed once, in `public`, so the
    # per-test schemas (dropped after each test) never take it with them.
    conn.execute("CREATE EXTENSION IF NOT EXISTS btree_gist SCHEMA public")
    return conn


def schema_url(schema: str) -> str:
    """The server URL with `schema` first on the search path."""
    sep = "&" if "?" in server_url() else "?"
    return f"{server_url()}{sep}options={quote(f'-csearch_path={schema},public')}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL of an empty schema of its own, dropped after the test."""
    conn = _admin()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[attr-defined]
    try:
        yield schema_url(schema)
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[attr-defined]
        conn.close()  # type: ignore[attr-defined]
