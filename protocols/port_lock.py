"""One controller per port: an exclusive advisory lock on the device node.

The lock is `flock(LOCK_EX | LOCK_NB)` on a file descriptor of our own, opened
on the port before pyserial touches it, so a refused second opener has not
written a byte nor changed a termios setting of the holder's link.

- flock locks the inode: `/dev/pts//3`, `/dev/pts/./3` and a by-id symlink all
  open the same node and collide.
- It is advisory and also binds root, which TIOCEXCL does not (measured: root
  opens a TIOCEXCL pty a second time), and needs no termios change, so it works
  on ptys where pyserial's `exclusive=True` with parity fails with EINVAL.
- The kernel drops it when the holder's descriptor closes, including when the
  holder is killed (-9): there is no stale lock to clean up.
- The holder is named from /proc/locks (pid of the flock on this inode) and
  /proc/PID/cmdline: no note file to write, remove or go stale.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

# Where Linux lists every file lock: "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF".
PROC_LOCKS = Path("/proc/locks")
# A holder's command line is cut to this many characters in the message.
MAX_CMDLINE_CHARS = 120
# Open flags of the lock descriptor: no controlling tty, never block on a
# modem line (DCD), not inherited by child processes.
LOCK_OPEN_FLAGS = os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC


class PortLocked(Exception):
    """The port is locked by someone else; `holder` names them where known."""

    def __init__(self, real_path: str, holder: str | None) -> None:
        self.real_path = real_path
        self.holder = holder
        super().__init__(holder or "holder unknown")


def is_url(port: str) -> bool:
    """pyserial URLs (loop://, socket://host:port, ...) have no device node to lock."""
    return "://" in port


def acquire(port: str) -> int:
    """Open `port` and lock it; the returned descriptor holds the lock until closed.

    Raises PortLocked when another descriptor holds it, OSError when the port
    cannot be opened at all.
    """
    fd = os.open(port, LOCK_OPEN_FLAGS)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            raise
        st = os.fstat(fd)
        os.close(fd)
        raise PortLocked(os.path.realpath(port), holder(st.st_dev, st.st_ino)) from None
    return fd


def release(fd: int) -> None:
    """Closing the descriptor releases the lock (an explicit unlock first is redundant)."""
    with contextlib.suppress(OSError):
        os.close(fd)


def holder(dev: int, ino: int) -> str | None:
    """'pid N: command line' of the process holding a flock on (dev, ino), or None."""
    pid = _lock_pid(dev, ino)
    if pid is None:
        return None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"pid {pid}"
    cmdline = " ".join(arg.decode(errors="replace") for arg in raw.split(b"\0") if arg)
    cmdline = "".join(c if c.isprintable() else "?" for c in cmdline)
    if len(cmdline) > MAX_CMDLINE_CHARS:
        cmdline = cmdline[:MAX_CMDLINE_CHARS - 3] + "..."
    return f"pid {pid}: {cmdline}" if cmdline else f"pid {pid}"


def _lock_pid(dev: int, ino: int) -> int | None:
    want = (os.major(dev), os.minor(dev), ino)
    try:
        lines = PROC_LOCKS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK ADVISORY WRITE 9135 00:1a:3 0 EOF"; blocked waiters are "-> ..."
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if key == want and pid > 0:
            return pid
    return None
