"""A private PostgreSQL server, for the tests that stop and restart one mid-session.

The shared server (tests/support/pg.py) serves every other test at once, so it is never
stopped; this one belongs to one test: `initdb` into the test's temporary directory, started on
a free port of 127.0.0.1 with `pg_ctl` (as the `postgres` user when the tests run as root,
since PostgreSQL refuses to run as root). A real server, really stopped: clients see the same
refused connections and dropped sessions as in a clinic.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.pg import REQUIRE_ENV

PG_BIN = Path(os.environ.get("MODCTL_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """One throwaway cluster: `start`, `stop` (fast shutdown: sessions are cut), `url`."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            reason = f"no PostgreSQL server binaries in {PG_BIN} (MODCTL_TEST_PG_BIN)"
            if os.environ.get(REQUIRE_ENV):
                pytest.fail(reason)
            pytest.skip(reason)
        # Its own directory in /tmp: pytest's tmp_path is private to root (0700), and the
        # server runs as `postgres`.
        self.base = Path(tempfile.mkdtemp(prefix="modctl-pg-"))
        self.data = self.base / "pgdata"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.base, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        argv = [str(PG_BIN / tool), *args]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-w",
                  "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
                        " -c fsync=off", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
