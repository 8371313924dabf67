"""Engine of the framed binary family, driven entirely by a FramedMap.

One request is in flight at a time. A request is retried with the same SEQ
and the same bytes when its reply is lost (the device answers a repeated SEQ
from memory without executing it again); a reply carrying the request's SEQ
but another command's code is a reply the device remembered from an earlier
host, so the request goes again under a new SEQ. Event frames may arrive at
any moment and are handed to the event handler in arrival order.

The first exchange after opening is a PING whose reply is discarded: the
device remembers the last SEQ and reply across host disconnects, so the reply
to our first SEQ may be an earlier host's (a remembered GET_INFO reply would
pass for current). See `_sync` for why one PING proves every later reply current.
"""

from __future__ import annotations

import logging
import random
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from protocols.engine import DEFAULT_DEVICE, DeviceEvent, EventHandler, InterruptCheck, gave_up
from protocols.errors import (
    DeviceRefused,
    Interrupted,
    LinkTimeout,
    ProtocolError,
    ProtocolViolation,
    ValueRejected,
)
from protocols.framed_codec import (
    BYTE_MASK,
    Frame,
    FrameDecoder,
    PayloadLayout,
    encode_frame,
    frame_size,
)
from protocols.map_common import Scalar
from protocols.map_framed import FramedMap
from protocols.transport import Transport

log = logging.getLogger(__name__)

# Events kept while no handler is set; beyond that the oldest go (with a warning).
EVENT_QUEUE_MAX = 256
# A remembered reply can only answer the first SEQ of a connection: one resend
# under a new SEQ is enough, a second mismatch means the device is confused.
REMEMBERED_RESENDS = 1
STATUS_CODE = "B"  # struct code of the status byte that leads every reply
# The shortest frame that may legitimately arrive next is a status-only reply
# (event payloads hold at least their kind field): reading more than this
# before the header is known could wait past a complete frame.
FIRST_READ = frame_size(1)
# With a read_some transport: take whatever has arrived, up to this much.
READ_CHUNK = 512
MALFORMED_EVENT = "malformed"


@dataclass(frozen=True, slots=True)
class _Command:
    name: str
    code: int
    reply_code: int
    request: PayloadLayout
    reply: PayloadLayout


class FramedEngine:
    """protocols.engine.Engine for any framed binary device map."""

    device = DEFAULT_DEVICE

    def __init__(self, transport: Transport, pmap: FramedMap, reply_timeout_s: float,
                 retries: int, *, first_seq: int | None = None,
                 sync_command: str | None = None) -> None:
        if reply_timeout_s <= 0 or retries < 0:
            raise ValueError("reply_timeout_s must be positive and retries not negative")
        self._transport = transport
        self._map = pmap
        self._timeout = reply_timeout_s
        self._retries = retries
        order = pmap.payload_byte_order
        self._commands = {
            name: _Command(name, c.code, (c.code + pmap.reply_code_offset) & BYTE_MASK,
                           PayloadLayout(c.request, order),
                           PayloadLayout(c.reply, order, lead=STATUS_CODE, prefix=name + "."))
            for name, c in pmap.commands.items()}
        ev = pmap.events
        self._event_seq = ev.seq if ev else None
        self._event_code = ev.code if ev else None
        self._event_layout = PayloadLayout(ev.payload, order) if ev else None
        self._kind_index = [f.name for f in ev.payload].index(ev.kind_field) if ev else 0
        # Requests never use the events' SEQ, so an event cannot pass for a reply.
        self._seqs = [s for s in range(pmap.seq_min, pmap.seq_max + 1) if s != self._event_seq]
        if len(self._seqs) < 2:
            raise ValueError("the map leaves fewer than two request SEQ values: the device "
                             "would take every request as a repeat of the previous one")
        if first_seq is None:
            # The device remembers the last SEQ across reconnects: the opening PING
            # (_sync) makes that harmless; a random start keeps it rare anyway.
            self._seq_index = random.randrange(len(self._seqs))
        elif first_seq in self._seqs:
            self._seq_index = self._seqs.index(first_seq)
        else:
            raise ValueError(f"first_seq {first_seq} is not a usable request SEQ")
        sync_command = sync_command or pmap.open_with
        sync = self._commands.get(sync_command)
        if sync is None or sync.request.fields:
            raise ValueError(f"the map has no '{sync_command}' command without request fields: "
                             "the engine needs one to open the link (its reply proves the "
                             "device's remembered SEQ is not ours)")
        self._sync_cmd = sync
        self._synced = False
        self._interrupt: InterruptCheck | None = None
        self._armed = False   # the interrupt check applies to the next frame sent
        self._decoder = FrameDecoder(pmap.sync, pmap.min_len, pmap.max_len)
        self._handler: EventHandler | None = None
        self._queue: deque[DeviceEvent] = deque()
        self._last_rx = time.monotonic()  # when bytes last arrived
        # Optional transport capability: "wait for the first byte, return what has
        # arrived (at most n)" frames in one system call whatever the reply length.
        self._read_some: Callable[[int, float], bytes] | None = \
            getattr(transport, "read_some", None)

    # -- Engine ------------------------------------------------------------------
    def write(self, entry: str, args: Mapping[str, Scalar]) -> dict[str, Scalar]:
        return self.read((entry,), args)

    def read(self, entries: Sequence[str],
             args: Mapping[str, Scalar] | None = None) -> dict[str, Scalar]:
        self._armed = False
        if not args and len(entries) == 1:
            # Hot path (telemetry polls): one command without request fields.
            cmd = self._commands.get(entries[0])
            if cmd is not None and not cmd.request.fields:
                return self._exchange(cmd, b"")
        args = args or {}
        commands = [self._command(e) for e in entries]
        # Every value is checked before the first byte goes out.
        takes: set[str] = set().union(*(c.request.names for c in commands))
        unknown = sorted(set(args) - takes)
        if unknown:
            accepted = ", ".join(sorted(takes)) or "none"
            raise ValueRejected(f"{', '.join(entries)}: unknown argument(s) "
                                f"{', '.join(unknown)} (takes: {accepted})")
        payloads = [c.request.pack(args, c.name) if c.request.fields else b""
                    for c in commands]
        result: dict[str, Scalar] = {}
        for cmd, payload in zip(commands, payloads, strict=True):
            result.update(self._exchange(cmd, payload))
        return result

    def poll_events(self) -> None:
        data = self._transport.read_available()
        if data:
            self._last_rx = time.monotonic()
            frames = self._decoder.feed(data)
        elif self._decoder.buffered and time.monotonic() - self._last_rx > self._timeout:
            # Nothing came for a whole reply timeout: the waiting candidate is garbage
            # (a stray SYNC reads the next frame's SYNC as its LEN) holding frames back.
            frames = self._drop_candidate()
        else:
            return
        for frame in frames:
            self._unsolicited(frame)

    def set_event_handler(self, handler: EventHandler | None) -> None:
        self._handler = handler
        while handler is not None and self._queue:
            self._call_handler(handler, self._queue.popleft())

    def open_link(self) -> None:
        """Make the opening exchange (see `_sync`) now; else the first read/write does."""
        self._armed = False
        if not self._synced:
            self._sync(self._sync_cmd)

    def set_interrupt(self, check: InterruptCheck | None) -> None:
        """See protocols.engine.Engine.set_interrupt."""
        self._interrupt = check

    def reads_back(self, entry: str) -> bool:
        """Never: reading a frame command sends it, so a write cannot be read back."""
        return False

    def close(self) -> None:
        self._transport.close()

    # -- exchanges -----------------------------------------------------------------
    def _command(self, entry: str) -> _Command:
        cmd = self._commands.get(entry)
        if cmd is None:
            raise ValueRejected(f"'{entry}' is not a command of the map "
                                f"(commands: {', '.join(sorted(self._commands))})")
        return cmd

    def _next_seq(self) -> int:
        i = self._seq_index
        self._seq_index = (i + 1) % len(self._seqs)
        return self._seqs[i]

    def _gate(self, name: str, after: ProtocolError | None = None) -> None:
        """Before each frame sent: any but the first of a read()/write() call gives way
        to a stop request. Called before a new SEQ is taken, so an interrupted
        exchange leaves no gap (the next request's SEQ still differs from the last sent).
        """
        check = self._interrupt
        if self._armed and check is not None and check():
            raise Interrupted(f"{name}: a stop request came first; not sent", after=after)
        self._armed = True

    def _sync(self, cmd: _Command) -> None:
        """Open the link with an exchange whose reply is thrown away.

        The device answers a request whose SEQ equals its remembered one with the
        remembered reply, unexecuted, and it keeps that SEQ across hosts. So the
        reply to our first SEQ s may be stale whatever its code (a remembered PING
        or GET_INFO reply looks current): it is a PING's, and discarded. Any frame
        carrying s proves the device has taken s: either it executed our PING, or
        s already was its remembered SEQ. Either way its remembered SEQ is now s,
        and every later request uses a SEQ other than the one before it, so the
        device executes each and every later reply is current. Frames already
        waiting predate our first request: events among them are delivered, the
        rest dropped. A stale reply still on the wire arrives before the
        PING's reply (the device answers in order), so the wait for s takes it.
        """
        for waiting in self._decoder.feed(self._transport.read_available()):
            self._unsolicited(waiting)
        ping = self._sync_cmd
        self._gate(cmd.name)
        seq = self._next_seq()
        frame = encode_frame(self._map.sync, seq, ping.code, b"")
        for attempt in range(self._retries + 1):
            if attempt:
                self._gate(cmd.name, self._gave_up(attempt, cmd.name))
            self._transport.write(frame)
            reply = self._await_reply(seq, time.monotonic() + self._timeout)
            if reply is not None:
                log.debug("%s: link opened with %s seq %d (reply code 0x%02X discarded)",
                          cmd.name, ping.name, seq, reply.cmd)
                self._synced = True
                return
            log.debug("%s: no reply to the opening %s (seq %d), attempt %d", cmd.name,
                      ping.name, seq, attempt + 1)
        log.debug("%s: no reply to the opening %s (seq %d) after %d attempts; giving up",
                  cmd.name, ping.name, seq, self._retries + 1)
        raise self._gave_up(self._retries + 1, cmd.name)

    def _exchange(self, cmd: _Command, payload: bytes) -> dict[str, Scalar]:
        if not self._synced:
            self._sync(cmd)
        debug = log.isEnabledFor(logging.DEBUG)
        self._gate(cmd.name)
        seq = self._next_seq()
        frame = encode_frame(self._map.sync, seq, cmd.code, payload)
        retries_left, resends_left = self._retries, REMEMBERED_RESENDS
        gated = True
        failed: ProtocolError | None = None
        while True:
            if not gated:   # a retry or a resend under a new SEQ
                self._gate(cmd.name, failed)
            gated, failed = False, None
            if debug:
                log.debug("%s: send seq %d: %s", cmd.name, seq, frame.hex(" "))
            self._transport.write(frame)
            reply = self._await_reply(seq, time.monotonic() + self._timeout)
            if reply is None:
                if retries_left == 0:
                    log.debug("%s: no reply to seq %d after %d attempts; giving up",
                              cmd.name, seq, self._retries + 1)
                    raise self._gave_up(self._retries + 1, cmd.name)
                retries_left -= 1
                failed = self._gave_up(self._retries - retries_left, cmd.name)
                log.debug("%s: no reply to seq %d, sending the same frame again", cmd.name, seq)
                continue
            if reply.cmd != cmd.reply_code:
                if resends_left == 0:
                    log.debug("%s: reply to seq %d carries code 0x%02X, expected 0x%02X; "
                              "giving up", cmd.name, seq, reply.cmd, cmd.reply_code)
                    raise ProtocolViolation(
                        f"{self.device} on {self._transport.port_name} kept answering "
                        f"{cmd.name} with the reply to another command")
                resends_left -= 1
                log.debug("%s: seq %d was answered from the device's memory (code 0x%02X); "
                          "sending again with a new seq", cmd.name, seq, reply.cmd)
                seq = self._next_seq()
                frame = encode_frame(self._map.sync, seq, cmd.code, payload)
                continue
            return self._parse_reply(cmd, reply, debug)

    def _await_reply(self, seq: int, deadline: float) -> Frame | None:
        """The frame carrying `seq`, dispatching events meanwhile; None at the deadline."""
        transport, decoder, read_some = self._transport, self._decoder, self._read_some
        while True:
            if read_some is not None:
                data = read_some(READ_CHUNK, deadline)
                timed_out = not data  # empty only at the deadline
            else:
                need = decoder.needed() or FIRST_READ
                data = transport.read(need, deadline)
                timed_out = len(data) < need  # short only at the deadline
            if data:
                self._last_rx = time.monotonic()
            frames = decoder.feed(data)
            if timed_out:
                frames += decoder.feed(transport.read_available())
                # A candidate still incomplete after a whole reply timeout is garbage
                # (say a corrupted LEN) holding back the real frames behind it.
                frames += self._drop_candidate()
            reply = None
            for frame in frames:
                if reply is None and frame.seq == seq:
                    reply = frame
                else:
                    self._unsolicited(frame)
            if reply is not None or timed_out:
                return reply

    def _drop_candidate(self) -> list[Frame]:
        """Re-scan past incomplete candidates until a frame turns up or nothing is left."""
        decoder = self._decoder
        frames: list[Frame] = []
        while decoder.buffered and not frames:
            frames = decoder.resync()
        return frames

    def _parse_reply(self, cmd: _Command, reply: Frame, debug: bool) -> dict[str, Scalar]:
        payload = reply.payload
        if debug:
            log.debug("%s: reply seq %d: %s", cmd.name, reply.seq, payload.hex(" "))
        if not payload:
            raise ProtocolViolation(f"{cmd.name}: reply without a status byte")
        status = payload[0]
        if status != self._map.ok_status:
            text = self._map.status_codes.get(status, "status not in the map")
            raise DeviceRefused(cmd.name, status, text)
        if len(payload) != cmd.reply.size:
            raise ProtocolViolation(f"{cmd.name}: reply payload of {len(payload)} bytes, the "
                                    f"map says {cmd.reply.size} (status and fields)")
        return cmd.reply.decode(payload)

    def _gave_up(self, attempts: int, entry: str) -> LinkTimeout:
        """Silence after `attempts` attempts, in the caller's one sentence."""
        return LinkTimeout(gave_up(LinkTimeout(), self.device, self._transport.port_name,
                                   attempts, self._timeout, entry))

    # -- events ----------------------------------------------------------------------
    def _unsolicited(self, frame: Frame) -> None:
        if frame.seq == self._event_seq and frame.cmd == self._event_code:
            self._deliver(self._decode_event(frame))
        else:
            log.debug("dropping a frame nobody awaits: seq %d code 0x%02X %s",
                      frame.seq, frame.cmd, frame.payload.hex(" "))

    def _decode_event(self, frame: Frame) -> DeviceEvent:
        layout, ev = self._event_layout, self._map.events
        assert layout is not None and ev is not None  # only called when events exist
        now = time.monotonic()
        try:
            kind_raw = layout.unpack_raw(frame.payload)[self._kind_index]
            fields = layout.decode(frame.payload)
        except struct.error:
            # Still delivered: an event must never vanish silently.
            log.warning("%s sent an event of %d bytes where its map says %d; passed on as "
                        "malformed", self.device, len(frame.payload), layout.size)
            log.debug("malformed event payload: %s", frame.payload.hex(" "))
            return DeviceEvent(MALFORMED_EVENT, {"payload": frame.payload.hex(" ")}, now)
        kind = ev.kinds.get(kind_raw) if isinstance(kind_raw, int) else None
        return DeviceEvent(kind.name if kind else f"unknown_{kind_raw!r}", fields, now)

    def _deliver(self, event: DeviceEvent) -> None:
        log.debug("event %s %s", event.kind, event.fields)
        if self._handler is not None:
            self._call_handler(self._handler, event)
            return
        if len(self._queue) >= EVENT_QUEUE_MAX:
            log.debug("no event handler: dropping the oldest queued event %s",
                      self._queue.popleft())
        self._queue.append(event)

    @staticmethod
    def _call_handler(handler: EventHandler, event: DeviceEvent) -> None:
        try:
            handler(event)
        except Exception:
            # Raising here would abandon a reply in mid-exchange; the handler owns its bugs.
            log.exception("event handler failed on %s", event)
