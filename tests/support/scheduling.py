"""How pytest-xdist shares the tests between its workers (`--dist loadgroup`, pyproject.toml).

Tests go to the workers one by one, as workers free up, except the files matching
`ONE_WORKER_FILES`: each of those goes to one worker as a unit. They are the files whose
module fixture does the whole file's work at once (the fault matrix runs every case side by
side) or starts something slow that all its tests share (a `modctl serve` process, a
browser); split over several workers, each worker would repeat that work. Units run largest
first, so these start early and the one-by-one tests even out the end.

The file list stands in for `@pytest.mark.xdist_group`: with pytest 9.2 and xdist 3.8 the
mark is silently ignored (xdist issue #1386: xdist tags the group onto the test id through a
field pytest no longer reads), and the scheduler only ever sees test ids, so it is given the
files by name here. Marks still work here if xdist fixes that.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from xdist.scheduler import LoadGroupScheduling  # type: ignore[import-untyped]

# Patterns of test file paths (as in the test ids), each matching file one unit.
ONE_WORKER_FILES = (
    "tests/test_fault_matrix.py",        # ~70 real-time cases side by side, ~20 s
    "tests/test_service_auth_api.py",    # one `modctl serve` for the module
    "tests/test_service_http_errors.py",
    "tests/test_service_plans.py",
    "tests/test_service_sessions.py",
    "tests/test_service_slow_devices.py",
    "tests/test_console_*.py",           # a `modctl serve` and a browser for the module
    "tests/test_rooms.py",               # three `modctl serve` on one PostgreSQL schema
)


class FileGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]
    """`--dist loadgroup`, where each file matching `ONE_WORKER_FILES` is one group."""

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::", 1)[0]
        if any(fnmatchcase(path, pattern) for pattern in ONE_WORKER_FILES):
            return path
        return super()._split_scope(nodeid)
