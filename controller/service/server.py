"""Running the clinic service: uvicorn on one event loop, the sessions on their own workers.

Start: the service's room is claimed among the rooms sharing the database (refused when
another live service serves it), sessions a crash left open are marked interrupted (never
resumed), a slot is made for every registered device of the room and the device watch starts;
the room's heartbeat starts with the server; `listening on http://HOST:PORT`
is printed once requests are accepted. SIGTERM/SIGINT: no new session is accepted, every
running output is stopped through the normal confirmed stop (posted at once, from the
signal), the stops are recorded, then the server closes. A crash (-9, power) leaves each
device's own watchdog to stop its output; the next start marks those sessions interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn
from uvicorn.server import HANDLED_SIGNALS

from controller.clinic import clock as clinic_time
from controller.clinic.reminders import Reminders
from controller.service.app import create_app
from controller.service.context import ServiceContext
from controller.service.listen import Listen
from controller.service.runs import STOP_WAIT_S, Run
from controller.session.scheduling import every, make_scheduler

log = logging.getLogger(__name__)

# How long open connections (live streams) may take to close at shutdown, after the
# outputs are stopped: a screen left open must not hold the process.
GRACEFUL_CLOSE_S = 2.0
# How often reminders look for bookings made meanwhile (see `modctl serve --once`).
REMINDER_SYNC_S = 60.0
SHUTDOWN_REASON = "the clinic service is shutting down ({signal})"


class ClinicServer(uvicorn.Server):
    """uvicorn's server with the service's start line and shutdown order."""

    def __init__(self, config: uvicorn.Config, ctx: ServiceContext, listen: Listen) -> None:
        super().__init__(config)
        self.ctx = ctx
        self.listen = listen
        self.exit_signal = ""
        self.stopped: list[Run] = []
        """The runs the signal handler posted a stop to (they may end before the server)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.ctx.hub.bind(asyncio.get_running_loop())
        await super().startup(sockets)
        if self.started:
            port = self.listen.port
            for server in self.servers:
                for sock in server.sockets:
                    port = sock.getsockname()[1]
            url = f"{self.listen.scheme}://{self.listen.host}:{port}"
            heartbeat = self.ctx.heartbeat
            if heartbeat is not None:   # other rooms see this room from its first beat on
                # Listening on every address: other rooms reach it by this PC's name.
                host = socket.getfqdn() if self.listen.host in ("0.0.0.0", "::") \
                    else self.listen.host
                heartbeat.url = f"{self.listen.scheme}://{host}:{port}"
                heartbeat.start()
            print(f"listening on {url}", flush=True)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """As uvicorn's, without raising the signal again once the server has closed: that
        would end the process before `run_service` has confirmed and recorded the stops."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """From the signal: refuse new sessions and post every stop now (posting does not
        block); the server then closes, and `run_service` waits for the stops. A second
        signal makes them emergency stops."""
        again = bool(self.exit_signal)
        self.exit_signal = self.exit_signal or signal.Signals(sig).name
        self.ctx.runs.accepting = False
        self.ctx.hub.close()
        for run in self.ctx.runs.active():
            if run not in self.stopped:
                self.stopped.append(run)
            run.session.request_stop("operator", emergency=again,
                                     reason=SHUTDOWN_REASON.format(signal=self.exit_signal))
        super().handle_exit(sig, frame)


def run_service(ctx: ServiceContext, listen: Listen, actor: str, warn_days: int) -> int:
    """Serve until SIGTERM/SIGINT; every output stopped and recorded before returning.
    RoomError when another live service serves this room (nothing has been touched then)."""
    ctx.claim_room()
    for row in ctx.store.mark_interrupted_sessions():
        print(f"note: session {row.id} was left open by a crash; marked interrupted "
              f"({row.delivered_s or 0:.1f} s delivered); nothing is resumed",
              file=sys.stderr, flush=True)
    if listen.insecure_http:
        log.warning("serving plain HTTP on %s: passwords and tokens cross the network "
                    "unencrypted", listen.host)
        ctx.store.audit(actor, "service.insecure_http", listen.host, {"port": listen.port})
    if not ctx.accounts.list():
        print("note: no accounts yet; add one with `modctl users add NAME --role admin`",
              file=sys.stderr, flush=True)
    config = uvicorn.Config(create_app(ctx), host=listen.host, port=listen.port,
                            log_level="warning", access_log=False, lifespan="off",
                            ssl_certfile=listen.tls_cert, ssl_keyfile=listen.tls_key,
                            timeout_graceful_shutdown=int(GRACEFUL_CLOSE_S))
    server = ClinicServer(config, ctx, listen)
    reminders = Reminders(ctx.store, actor, warn_days)
    scheduler = make_scheduler()
    ctx.start_watch()
    try:
        reminders.sync(scheduler)
        every(scheduler, REMINDER_SYNC_S, lambda: reminders.sync(scheduler), "reminders sync")
        scheduler.start()
        server.run()
    finally:
        scheduler.shutdown(wait=False)
        ctx.runs.accepting = False
        stopped = ctx.runs.stop_all(emergency=False, reason=SHUTDOWN_REASON.format(
            signal=server.exit_signal or "server ended"))
        for run in [*server.stopped, *(r for r in stopped if r not in server.stopped)]:
            run.done.wait(STOP_WAIT_S)
            report = run.session.report
            print(f"stopped session {run.id} on {run.slot.name}: "
                  f"{report.outcome if report else 'not confirmed'}", file=sys.stderr)
        ctx.close()
    print(f"{clinic_time.stamp(clinic_time.now())}  stopped", file=sys.stderr)
    return 0 if server.started else 1
