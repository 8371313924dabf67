"""Engine of the SCPI-style line family, driven by any ScpiMap.

One request line, one reply line. Timeouts, corrupt replies and the device's
checksum-error answer (our request got damaged, so it was not executed) are
retried; any other ERR answer is the device's decision and is raised at once,
after the error queue is drained so stale entries never pile up on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from protocols import scpi_codec as codec
from protocols.engine import DEFAULT_DEVICE, EventHandler, InterruptCheck, gave_up
from protocols.errors import (
    CorruptReply,
    DeviceRefused,
    Interrupted,
    LinkLost,
    LinkTimeout,
    ProtocolError,
    ProtocolViolation,
    ValueRejected,
)
from protocols.map_common import Scalar
from protocols.map_scpi import ScpiCommand, ScpiMap
from protocols.transport import Transport

try:
    import termios

    # SerialTransport lets termios.error (tcflush/tcdrain on a vanished peer) through.
    _PORT_ERRORS: tuple[type[Exception], ...] = (termios.error,)
except ImportError:  # not POSIX
    _PORT_ERRORS = ()

log = logging.getLogger(__name__)

# The device error queue holds this many entries; one more query sees "no error".
ERROR_QUEUE_DEPTH = 8
MAX_DRAIN_QUERIES = ERROR_QUEUE_DEPTH + 1
# After a timeout the reply may still come, and a line protocol cannot tell which
# request a line answers. So the next request waits until the line has been quiet
# for this many reply timeouts (discarding what arrives), at most MAX_SETTLE_S.
SETTLE_QUIET_TIMEOUTS = 2.0
MAX_SETTLE_S = 1.0
# While settling with an interrupt check set, the check is polled this often: a
# stop request waits at most this long for the settle to give way (stop budget 20 ms).
SETTLE_CHECK_S = 0.005
LF = b"\n"
# Most a line read takes at once; a reply line is far shorter.
READ_CHUNK = 512

T = TypeVar("T")


class QueuedRefusal(DeviceRefused):
    """DeviceRefused with the error-queue entries drained after it, oldest first."""

    def __init__(self, entry: str, code: int, text: str,
                 queued: list[tuple[int, str]]) -> None:
        super().__init__(entry, code, text)
        self.queued = queued


class ScpiEngine:
    """protocols.engine.Engine over a line transport; owned by one thread."""

    device = DEFAULT_DEVICE

    def __init__(self, transport: Transport, pmap: ScpiMap, reply_timeout_s: float,
                 retries: int) -> None:
        if reply_timeout_s <= 0 or retries < 0:
            raise ValueError("reply_timeout_s must be > 0 and retries >= 0")
        self._t = transport
        self._map = pmap
        self._timeout = reply_timeout_s
        self._retries = retries
        self._buf = bytearray()
        self._unsettled = False   # a request timed out: a late reply may be on its way
        # When the line was last seen busy during a settle; kept when a stop request
        # interrupts the settle, so the next exchange waits only the rest of the quiet.
        self._settle_last: float | None = None
        self._interrupt: InterruptCheck | None = None
        self._armed = False   # the interrupt check applies to the next exchange
        self._read_some: Callable[[int, float], bytes] | None = \
            getattr(transport, "read_some", None)
        # Replies are framed by the last byte of the map's terminator (LF for "\r\n").
        self._eol = pmap.reply_terminator.encode("ascii")[-1:] or LF
        # Content before the LF: the line and its CR; longer is a runaway or garbage line.
        self._max_reply = pmap.max_line_length + 1
        self._headers = {name: cmd.short_header if pmap.use_short_form else cmd.header
                         for name, cmd in pmap.commands.items()}
        # Query lines and answer parsers never change: built once per entry, on first use.
        self._queries: dict[str, tuple[bytes, list[str], codec.FieldsParser]] = {}

    # -- Engine -------------------------------------------------------------------
    def write(self, entry: str, args: Mapping[str, Scalar]) -> dict[str, Scalar]:
        self._armed = False
        cmd = self._command(entry)
        header = self._headers[entry]
        if args or not cmd.action:
            if cmd.set is None:
                raise ValueRejected(f"{entry}: {cmd.header} takes no arguments"
                                    if cmd.action else f"{entry}: {cmd.header} cannot be set")
            body = codec.request_body(header, args=codec.encode_args(
                f"{entry} ({cmd.header})", cmd.set, args))
        else:
            body = header
        self._transact(entry, self._frame(body), self._expect_ok)
        return {}

    def read(self, entries: Sequence[str],
             args: Mapping[str, Scalar] | None = None) -> dict[str, Scalar]:
        if args:
            raise ValueRejected(f"queries of this family take no arguments: {sorted(args)}")
        self._armed = False
        out: dict[str, Scalar] = {}
        for entry in entries:
            line, keys, parser = self._queries.get(entry) or self._query(entry)
            values = self._transact(entry, line, parser.parse)
            out.update(zip(keys, values, strict=False))
        return out

    def poll_events(self) -> None:
        """This family sends nothing unsolicited."""

    def set_event_handler(self, handler: EventHandler | None) -> None:
        """This family has no events."""

    def set_interrupt(self, check: InterruptCheck | None) -> None:
        """See protocols.engine.Engine.set_interrupt."""
        self._interrupt = check

    def reads_back(self, entry: str) -> bool:
        """A setting whose command also has a query form reads back its value."""
        cmd = self._map.commands.get(entry)
        return cmd is not None and bool(cmd.set) and bool(cmd.query)

    def close(self) -> None:
        self._t.close()

    # -- exchanges ------------------------------------------------------------------
    def _command(self, entry: str) -> ScpiCommand:
        cmd = self._map.commands.get(entry)
        if cmd is None:
            raise ValueRejected(f"'{entry}' is not an entry of the protocol map")
        return cmd

    def _query(self, entry: str) -> tuple[bytes, list[str], codec.FieldsParser]:
        cmd = self._command(entry)
        if cmd.query is None:
            raise ValueRejected(f"{entry}: {cmd.header} has no query form")
        line = self._frame(codec.request_body(self._headers[entry], query=True))
        keys = [f"{entry}.{f.name}" for f in cmd.query]
        query = self._queries[entry] = (line, keys,
                                       codec.FieldsParser(cmd.query, cmd.reply_separator))
        return query

    def _frame(self, body: str) -> bytes:
        return codec.frame_request(body, use_checksum=self._map.use_checksum,
                                   terminator=self._map.request_terminator,
                                   max_line_length=self._map.max_line_length)

    def _expect_ok(self, text: str) -> None:
        if text != self._map.ok_reply:
            # Most likely a late answer to an earlier request: worth a retry.
            raise CorruptReply(f"expected {self._map.ok_reply!r}, got {text!r}")

    def _transact(self, entry: str, line: bytes, parse: Callable[[str], T]) -> T:
        """One request with retries; LinkLost and other errors propagate at once."""
        pmap = self._map
        saw_error = False
        last: ProtocolError | None = None
        for attempt in range(self._retries + 1):
            if attempt:
                log.debug("%s: retry %d of %d after: %s", entry, attempt, self._retries, last)
            try:
                text = self._exchange(entry, line)
                error = codec.parse_error(text, pmap.error_prefix)
                if error is None:
                    try:
                        result = parse(text)
                    except ProtocolViolation as exc:
                        raise ProtocolViolation(f"{entry}: {exc}") from None
                    if saw_error:  # the checksum-error answers sit on the device queue
                        self._drain(entry)
                    return result
            except (LinkTimeout, CorruptReply) as exc:
                last = exc
                continue
            except Interrupted as exc:
                if exc.after is None and last is not None:   # pre-empted a retry: the link
                    exc.after = type(last)(gave_up(         # was failing; say how, in words
                        last, self.device, self._t.port_name, attempt, self._timeout, entry))
                raise
            saw_error = True
            last = DeviceRefused(entry, *error)
            if error[0] != pmap.checksum_error_code:
                break  # the device's own decision: asking again changes nothing
        queued = self._drain(entry) if saw_error else []
        if isinstance(last, DeviceRefused):
            raise QueuedRefusal(entry, last.code, last.text, queued)
        assert last is not None
        log.debug("%s: giving up after %d attempts; last: %s", entry, self._retries + 1, last)
        raise type(last)(gave_up(last, self.device, self._t.port_name, self._retries + 1,
                                 self._timeout, entry)) from last

    def _exchange(self, entry: str, line: bytes) -> str:
        """Send one line and return the text of the reply line; no retries.

        Every exchange but the first of a read()/write() call (retries and
        error-queue drains included) gives way to a stop request here.
        """
        check = self._interrupt if self._armed else None
        if check is not None and check():
            raise Interrupted(f"{entry}: a stop request came first; not sent")
        try:
            if self._unsettled:
                self._settle(entry, check)
            self._armed = True
            # Anything waiting now (a late reply, line noise) answers no request of
            # ours: a line protocol cannot tell, so it is dropped before every request.
            self._t.discard_input()
            self._buf.clear()
            self._t.write(line)
            raw = self._read_line(time.monotonic() + self._timeout, entry)
        except _PORT_ERRORS as exc:
            raise LinkLost(f"{entry}: port failed: {exc}") from None
        log.debug("%s: %r -> %r", entry, line, raw)
        try:
            return codec.unframe_reply(raw, use_checksum=self._map.use_checksum)
        except CorruptReply as exc:
            raise CorruptReply(f"{entry}: {exc}") from None

    def _read_line(self, deadline: float, entry: str) -> bytes:
        """Bytes up to LF; reads in chunks and keeps what follows the LF."""
        buf, t = self._buf, self._t
        scanned = 0
        while True:
            end = buf.find(self._eol, scanned)
            if end >= 0:
                if end > self._max_reply:
                    break
                line = bytes(buf[:end])
                del buf[:end + 1]
                return line
            scanned = len(buf)
            if scanned > self._max_reply:
                break
            if self._read_some is not None:
                chunk = self._read_some(READ_CHUNK, deadline)  # one select, one read
            else:
                chunk = t.read(1, deadline)  # blocks until a byte or the deadline
                if chunk:
                    chunk += t.read_available()
            if not chunk:
                self._unsettled = True
                self._settle_last = None  # the quiet is measured from the next settle
                got = f"{len(buf)} bytes of an unfinished line" if buf else "nothing"
                raise LinkTimeout(f"{entry}: no reply within {self._timeout:g} s "
                                  f"(got {got})")
            buf += chunk
        buf.clear()
        raise CorruptReply(f"{entry}: reply line longer than {self._map.max_line_length} "
                           "characters")

    def _settle(self, entry: str, check: InterruptCheck | None) -> None:
        """Wait for the line to go quiet after a timeout, discarding late replies.

        A stop request (`check`) ends the wait early with Interrupted, before
        anything is sent. The engine then stays unsettled and remembers when the
        line was last busy: the next exchange (the stop command) first waits out
        the rest of the quiet, so it still cannot take a late reply for its own.
        """
        quiet = SETTLE_QUIET_TIMEOUTS * self._timeout
        now = time.monotonic()
        give_up = now + MAX_SETTLE_S
        if self._settle_last is None:
            self._settle_last = now
        last = self._settle_last
        dropped = 0
        while now < give_up and now - last < quiet:
            deadline = min(give_up, last + quiet)
            if check is not None:
                deadline = min(deadline, now + SETTLE_CHECK_S)
            chunk = self._t.read(256, deadline)
            now = time.monotonic()
            if chunk:
                dropped += len(chunk)
                last = self._settle_last = now
            if check is not None and check():
                raise Interrupted(f"{entry}: a stop request came while the line settled "
                                  "after a timeout; not sent")
        if now - last < quiet:
            raise LinkTimeout(f"{entry}: the line did not go quiet after a timeout "
                              f"({dropped} bytes in {MAX_SETTLE_S:g} s)")
        if dropped:
            log.debug("%s: discarded %d late bytes after a timeout", entry, dropped)
        self._unsettled = False
        self._settle_last = None

    def _drain(self, entry: str) -> list[tuple[int, str]]:
        """Pop the device error queue until it reports no error; best effort, bounded."""
        pmap = self._map
        drained: list[tuple[int, str]] = []
        for _ in range(MAX_DRAIN_QUERIES):
            try:
                line, _, parser = self._queries.get(pmap.error_query) \
                    or self._query(pmap.error_query)
                text = self._exchange(pmap.error_query, line)
                if codec.parse_error(text, pmap.error_prefix) is not None:
                    log.debug("%s: error queue query refused: %s", entry, text)
                    break
                values = parser.parse(text)
                code = int(values[0])
            except (ValueRejected, LinkTimeout, CorruptReply, ProtocolViolation,
                    ValueError) as exc:
                log.debug("%s: error queue drain stopped: %s", entry, exc)
                break
            if code == pmap.no_error_code:
                break
            drained.append((code, str(values[1]) if len(values) > 1 else ""))
        else:
            log.info("%s: error queue not empty after %d queries", entry, MAX_DRAIN_QUERIES)
        if drained:
            log.info("%s: drained device errors %s", entry, drained)
        return drained
