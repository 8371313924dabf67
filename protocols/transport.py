"""The serial transport: one open port with bounded reads and writes.

Framing is the engines' job (by length or terminator); pyserial's
inter_byte_timeout is never used (it does not work on Linux in 3.5). Every
read has a deadline and every write a timeout, so nothing here can hang.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import stat
import termios
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import serial

from protocols import port_lock
from protocols.errors import LinkLost, LinkTimeout, PortBusy

log = logging.getLogger(__name__)

# Upper bound on one read() call: keeps a read responsive to its deadline.
MAX_READ_SLICE_S = 0.05
# Character-device majors of Unix98 pseudo-terminal slaves (Linux devices.txt).
PTY_SLAVE_MAJORS = range(136, 144)
# termios.error is not an OSError: every port failure is caught as one of these.
PORT_ERRORS = (serial.SerialException, OSError, termios.error, TypeError, ValueError)
# What an operating-system error means for someone plugging in a device, where the
# system's own words ("Inappropriate ioctl for device") would not help.
ERRNO_WORDS = {
    errno.ENOENT: "no such port (is the device plugged in, and the name right?)",
    errno.ENODEV: "no such device (is it plugged in?)",
    errno.EACCES: "permission denied (is this user in the port's group, e.g. dialout?)",
    errno.EPERM: "permission denied (is this user in the port's group, e.g. dialout?)",
    errno.ENOTTY: "it is not a serial port",
    errno.EISDIR: "it is a directory, not a serial port",
    errno.EBUSY: "the port is busy",
    errno.EIO: "input/output error (was the device unplugged?)",
}
# pyserial tucks the errno into its text: "... (25, 'Inappropriate ioctl for device')".
_EMBEDDED_ERRNO = re.compile(r"\[Errno (\d+)\]|\((\d+), '")


def port_error_text(exc: BaseException) -> str:
    """The reason a port failed, in words: no errno numbers, paths or Python reprs."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        found = _EMBEDDED_ERRNO.search(str(exc))
        code = int(found.group(1) or found.group(2)) if found else None
    if code in ERRNO_WORDS:
        return ERRNO_WORDS[code]
    if code is not None:
        return os.strerror(code).lower()
    return str(exc) or type(exc).__name__


def is_pseudo_terminal(port: str) -> bool:
    """True for /dev/pts/N: no UART behind it, so parity and baud rate do not exist."""
    try:
        st = os.stat(port)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in PTY_SLAVE_MAJORS


@dataclass(frozen=True)
class SerialSettings:
    baudrate: int
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    write_timeout_s: float = 0.5


class Transport(Protocol):
    """What an engine needs from a port; SerialTransport is the real one."""

    port_name: str

    def write(self, data: bytes) -> None: ...

    def read(self, n: int, deadline: float) -> bytes: ...

    def read_available(self) -> bytes: ...

    def discard_input(self) -> None: ...

    def close(self) -> None: ...


class SerialTransport:
    """An open serial port (device path or pyserial URL), held exclusively.

    A device path is locked (protocols.port_lock) before pyserial opens or
    configures it: a second controller on the same device, however it spells
    the path, gets PortBusy having sent nothing. pyserial URLs cannot be locked.
    """

    def __init__(self, port: str, settings: SerialSettings) -> None:
        self.port_name = port
        self._timeout = MAX_READ_SLICE_S
        # Releases the port lock once: at close(), or when a transport never closed
        # is collected (a leaked lock would refuse every later controller).
        self._unlock: Callable[[], object] = lambda: None
        if port_lock.is_url(port):
            log.info("%s is a pyserial URL: no device node to lock", port)
        else:
            try:
                self._unlock = weakref.finalize(self, port_lock.release, port_lock.acquire(port))
            except port_lock.PortLocked as exc:
                where = port if exc.real_path == port else f"{port} ({exc.real_path})"
                holder = f" ({exc.holder})" if exc.holder else ""
                raise PortBusy(f"port {where} is in use by another controller{holder}; "
                               "one controller per device") from None
            except OSError as exc:
                raise LinkLost(f"cannot open {port}: {port_error_text(exc)}") from None
        parity = settings.parity
        if parity != serial.PARITY_NONE and is_pseudo_terminal(port):
            # A pty has no UART, so parity is not emulated; and setting PARENB on one
            # fails with EINVAL whenever it is the only change (a reopen, exclusive=True).
            log.info("%s is a pseudo-terminal: parity %s not applied", port, parity)
            parity = serial.PARITY_NONE
        try:
            self._port = serial.serial_for_url(
                port,
                baudrate=settings.baudrate,
                bytesize=settings.bytesize,
                parity=parity,
                stopbits=settings.stopbits,
                timeout=self._timeout,
                write_timeout=settings.write_timeout_s,
            )
        except PORT_ERRORS as exc:
            self._unlock()
            raise LinkLost(f"cannot open {port}: {port_error_text(exc)}") from None

    @property
    def is_open(self) -> bool:
        return bool(self._port.is_open)

    def write(self, data: bytes) -> None:
        try:
            written = self._port.write(data)
            self._port.flush()
        except serial.SerialTimeoutException:
            raise LinkTimeout(f"{self.port_name}: write of {len(data)} bytes timed out") from None
        except PORT_ERRORS as exc:
            raise LinkLost(f"{self.port_name}: write failed: {port_error_text(exc)}") from None
        if written != len(data):
            raise LinkTimeout(f"{self.port_name}: wrote {written} of {len(data)} bytes")

    def read(self, n: int, deadline: float) -> bytes:
        """Up to `n` bytes, returning early once `n` arrived or at `deadline` (monotonic)."""
        buf = bytearray()
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # This thread may only have been scheduled after its deadline: what has
                # already arrived is still a reply, not silence.
                buf += self._waiting(n - len(buf))
                break
            try:
                self._set_timeout(min(remaining, MAX_READ_SLICE_S))
                chunk = self._port.read(n - len(buf))
            except PORT_ERRORS as exc:
                # pyserial raises SerialException("device reports readiness to read but
                # returned no data") when the other end of a pty is gone.
                raise LinkLost(f"{self.port_name}: read failed: {port_error_text(exc)}") from None
            buf += chunk
        return bytes(buf)

    def read_some(self, n: int, deadline: float) -> bytes:
        """1..n bytes as soon as any have arrived; b"" only once `deadline` has passed.

        One select and one read for a whole reply, where `read` would loop; engines
        use it (when present) to frame replies whose length they learn as they go.
        """
        fd = getattr(self._port, "fd", None)      # posix ports; URL handlers fall back
        if fd is None:
            first = self.read(1, deadline)
            if not first:
                return b""
            try:
                return first + bytes(self._port.read(min(self._port.in_waiting, n - 1)))
            except PORT_ERRORS as exc:
                raise LinkLost(f"{self.port_name}: read failed: {port_error_text(exc)}") from None
        # Past the deadline select() still looks once: a reply that arrived while this
        # thread waited for the CPU is taken, not mistaken for silence.
        remaining = max(0.0, deadline - time.monotonic())
        try:
            ready, _, _ = select.select((fd,), (), (), remaining)
            data = os.read(fd, n) if ready else b""
        except (OSError, ValueError) as exc:
            raise LinkLost(f"{self.port_name}: read failed: {port_error_text(exc)}") from None
        if ready and not data:
            raise LinkLost(f"{self.port_name}: device disconnected")
        return data

    def read_available(self) -> bytes:
        """Whatever is already waiting, without blocking."""
        return self._waiting(None)

    def _waiting(self, limit: int | None) -> bytes:
        """Up to `limit` (None: all) of the bytes already waiting, without blocking."""
        try:
            waiting = self._port.in_waiting
            if limit is not None:
                waiting = min(waiting, limit)
            return bytes(self._port.read(waiting)) if waiting else b""
        except PORT_ERRORS as exc:
            raise LinkLost(f"{self.port_name}: read failed: {port_error_text(exc)}") from None

    def discard_input(self) -> None:
        """Drop stale bytes (a late reply to an earlier, timed-out request)."""
        try:
            self._port.reset_input_buffer()
        except PORT_ERRORS as exc:
            raise LinkLost(f"{self.port_name}: {port_error_text(exc)}") from None

    def close(self) -> None:
        try:
            self._port.close()
        except PORT_ERRORS:
            log.debug("error closing %s", self.port_name, exc_info=True)
        self._unlock()   # after the port: the next controller opens it once we are done

    def _set_timeout(self, timeout: float) -> None:
        # Setting the timeout costs a tcsetattr on some ports: only when it changes.
        if abs(timeout - self._timeout) > 1e-4:
            self._port.timeout = timeout
            self._timeout = timeout
