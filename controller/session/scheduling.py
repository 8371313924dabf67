"""APScheduler for periodic jobs and wake-ups; never for anything that stops an output.

APScheduler 3 runs on the wall clock: set back, its jobs run late; set forward,
they are judged late. So it only wakes workers early and does housekeeping
(flushing records, refreshing a display). Deadlines that end an output are
the session worker's own, on time.monotonic(). `misfire_grace_time=None` makes
a late job run late rather than be dropped silently; `coalesce` runs a backlog once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

JOB_DEFAULTS: dict[str, Any] = {
    "misfire_grace_time": None,   # never skip a job because it is late
    "coalesce": True,             # a backlog runs once, not in a burst
    "max_instances": 1,
}


def make_scheduler() -> BackgroundScheduler:
    return BackgroundScheduler(job_defaults=dict(JOB_DEFAULTS), timezone=UTC)


def every(scheduler: BackgroundScheduler, seconds: float, job: Callable[[], None],
          name: str) -> Any:
    """A periodic job; its exceptions are logged by APScheduler, never raised."""
    return scheduler.add_job(job, "interval", seconds=seconds, name=name)
