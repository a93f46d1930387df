"""Stopping cleanly: SIGTERM and SIGINT set a flag the train loop reads between steps; no worker outlives torchrun.

The handlers only record the signal (nothing else is safe inside a handler): the Trainer agrees on it across ranks
at the next step boundary, saves and returns. Signals after the first change nothing, so the save in progress
always finishes; torchrun forwards the signal it receives to every worker, which is such a second signal when a
scheduler signals the whole job. SIGKILL (torchrun sends it after `--shutdown_timeout`, 30 s by default) forces
the stop; the checkpoint being written is then left as an ignored `.tmp` folder and the previous one is used.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_installed: list[StopFlag] = []  # the StopFlag whose handlers are in place (at most one)


class Interrupted(Exception):
    """A stop was requested while a step waited on something that would not return by itself (a hanging reward
    function, see trainer/reward/worker.py): the step in progress is dropped, the run stops without saving it."""


def stop_requested() -> bool:
    """Whether the installed StopFlag (if any) has seen SIGTERM / SIGINT / SIGHUP; callable from anywhere."""
    return any(flag.requested for flag in _installed)


class StopFlag:
    """`with StopFlag() as stop:` installs the handlers (main thread only); `stop.requested` after a signal."""

    def __init__(self, signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)) -> None:
        self.signums = signums
        self.signum: int | None = None  # the first signal received
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def install(self) -> StopFlag:
        # Python only lets the main thread set handlers; elsewhere (a test calling main() in a thread) the default
        # handlers stay and a signal stops the process as usual.
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, self._handle)
            _installed.append(self)
        return self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if self in _installed:
            _installed.remove(self)

    def __enter__(self) -> StopFlag:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _is_launcher(pid: int) -> bool:
    """`pid` is a torch elastic agent (torchrun, `python -m torch.distributed.run`): its main thread is named
    "pt_elastic". Unreadable /proc counts as yes (nothing to go on)."""
    if pid <= 1:
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True
    return comm == "pt_elastic" or "torchrun" in cmdline or "torch.distributed.run" in cmdline


def _orphaned(parent: int) -> None:
    rank = os.environ.get("RANK", "?")
    print(f"rank {rank}: the launcher (torchrun, pid {parent}) is gone; exiting", file=sys.stderr, flush=True)
    os._exit(1)


def die_with_launcher(poll_s: float = 0.5) -> None:
    """Under torchrun on Linux: end this worker as soon as torchrun is gone.

    torchrun starts each worker in a session of its own, so killing torchrun (SIGKILL, the OOM killer, a harness
    killing its process group) would otherwise leave the workers training, or waiting in a rendezvous or a
    collective for `parallel.timeout_s`, holding the launcher's output open. The kernel SIGKILLs this worker when
    its parent dies (PR_SET_PDEATHSIG); a worker whose launcher died before that request (during its imports) sees
    a parent that is no launcher and exits at once, with one line; where prctl is refused, a daemon thread polls
    the parent instead. A graceful stop is unaffected: torchrun waits for its workers before it exits.
    """
    if sys.platform != "linux" or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    parent = os.getppid()
    if not _is_launcher(parent):
        _orphaned(parent)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
        if os.getppid() != parent:  # torchrun died between the check and the request
            _orphaned(parent)
        return

    def watch() -> None:  # prctl not permitted here (some sandboxes)
        while os.getppid() == parent:
            time.sleep(poll_s)
        _orphaned(parent)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
