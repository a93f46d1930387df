"""A user reward function under a time limit: each call runs in a forked child process that can be killed.

A Python function that hangs cannot be stopped from another thread, and one that hangs in the trainer's main
thread also blocks the stop flag (trainer/signals.py), so Ctrl-C would wait for it forever. Here the function runs
in a child forked from the trainer (so it has every module the trainer imported, the user's included, and nothing
is pickled but the call's arguments and the checked result), one call at a time:

- the caller waits in short slices for the answer; past `timeout_s` it kills the child (SIGKILL) and raises
  `RewardTimeout`; the next call forks a fresh child;
- a stop requested meanwhile (SIGINT / SIGTERM, `trainer.signals.stop_requested`) kills the child too and raises
  `trainer.signals.Interrupted`, so Ctrl-C ends the run while a reward call hangs;
- the child ignores SIGINT (a Ctrl-C in the terminal reaches the whole process group; the trainer decides), dies
  with the trainer (PR_SET_PDEATHSIG on Linux), and must not use the trainer's GPU or process group.

`run(fn, args, timeout_s)` returns `fn(*args)`; an exception raised in the child comes back as `ChildError` with
the original type name and message. `fn` and what it returns must be plain, picklable Python values.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from trainer.signals import Interrupted, stop_requested

__all__ = ["ChildError", "RewardTimeout", "run", "shutdown"]

_SLICE_S = 0.05  # how often the caller looks at the clock and the stop flag while it waits


class RewardTimeout(TimeoutError):
    """The call did not answer within its time limit; the child was killed."""


class ChildError(RuntimeError):
    """The call raised in the child: `type_name` and `message` of the original exception."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message = type_name, message


def _serve(conn: Connection, fn: Callable[..., Any]) -> None:
    """The child's loop: receive the arguments, call `fn`, send `("ok", value)` or `("raised", type, message)`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG: die with the trainer
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[Any, ...] = ("ok", fn(*args))
        except (Exception, SystemExit) as exc:  # `sys.exit()` in user code: a failed call, not the child's end
            reply = ("raised", type(exc).__name__, str(exc))
        conn.send(reply)


class _Child:
    """One forked child serving calls of one function."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child_end = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child_end, fn), daemon=True)
        self.proc.start()
        child_end.close()
        self.fn, self.pid = fn, os.getpid()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


_children: dict[int, _Child] = {}


def _child(fn: Callable[..., Any]) -> _Child:
    child = _children.get(id(fn))
    if child is None or child.fn is not fn or child.pid != os.getpid() or not child.proc.is_alive():
        if child is not None and child.pid == os.getpid():
            child.kill()
        child = _children[id(fn)] = _Child(fn)
    return child


def run(fn: Callable[..., Any], args: tuple[Any, ...], timeout_s: float) -> Any:
    """`fn(*args)` in the child, within `timeout_s` seconds (> 0).

    Raises:
        RewardTimeout: no answer in time (the child is killed; the next call starts another).
        Interrupted: a stop was requested while waiting (the child is killed).
        ChildError: `fn` raised.
    """
    child = _child(fn)
    child.conn.send(args)
    deadline = time.monotonic() + timeout_s
    while not child.conn.poll(_SLICE_S):
        if stop_requested():
            _drop(fn)
            raise Interrupted("a stop was requested while the reward function was running")
        if not child.proc.is_alive():
            _drop(fn)
            raise ChildError("ChildDied", f"the process running it ended (exit code {child.proc.exitcode})")
        if time.monotonic() > deadline:
            _drop(fn)
            raise RewardTimeout(f"no answer within {timeout_s:g} s")
    try:
        reply = child.conn.recv()
    except (EOFError, OSError) as err:
        _drop(fn)
        raise ChildError("ChildDied", f"the process running it ended ({err})") from err
    if reply[0] == "raised":
        raise ChildError(reply[1], reply[2])
    return reply[1]


def _drop(fn: Callable[..., Any]) -> None:
    child = _children.pop(id(fn), None)
    if child is not None:
        child.kill()


def shutdown() -> None:
    """Kill every child of this process (the Trainer's close)."""
    for key in list(_children):
        child = _children.pop(key)
        if child.pid == os.getpid():
            child.kill()
