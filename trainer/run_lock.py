"""An exclusive lock on a run folder: one run writes into it at a time.

Rank 0 takes `RUN_DIR/.lock` (`fcntl.flock`, exclusive, non-blocking) before anything is written there, and holds it
until the process ends. The kernel drops the lock with the process, crash and SIGKILL included, so a lock is never
stale in the sense of blocking: a lock file whose holder is gone is simply taken, and the holder it names (pid, host,
start time) is reported in one line. A second run into the same folder, fresh or `--resume`, finds the lock held and
is refused with one line naming the holder. On a filesystem without locks (some network mounts) the run goes on
with a warning line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = ".lock"


class RunFolderBusy(Exception):
    """Another live process holds the run folder's lock; the message names it."""


@dataclass
class RunLock:
    """A held lock (`fd` open and locked); `taken_over` describes a previous holder that is gone, `warning` a lock
    that could not be taken at all (`fd` is then -1)."""

    path: Path
    fd: int
    taken_over: str | None = None
    warning: str | None = None

    def release(self) -> None:
        """Clear the holder and unlock (a clean end leaves an empty lock file). Idempotent."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no name"


def acquire(folder: Path) -> RunLock:
    """Lock `folder` (which must exist) for this process; raises `RunFolderBusy` when another process holds it."""
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = _describe(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise RunFolderBusy(f"is in use by another run ({holder})") from None
        os.close(fd)  # ENOLCK, EOPNOTSUPP, ...: no locks on this filesystem
        return RunLock(path, -1, warning=f"cannot lock {path} ({err.strerror or err}): running without a lock")
    previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    taken_over = f"the previous holder ({_describe(previous)}) is gone" if previous else None
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    return RunLock(path, fd, taken_over=taken_over)
