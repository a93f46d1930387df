"""A pool of verifier subprocesses that run math-verify's symbolic answer check under a timeout, from any thread.

`symbolic_check(gold, pred, timeout_s)` is the symbolic stage of `trainer.reward.math_grader.check_answer`:
math-verify's `verify(parse(gold), parse(pred))`, each side wrapped in `\\boxed{}` so `parse` takes exactly it; prose
such as `The answer is 5` is also parsed bare, so math-verify's anchors find the value.

Why subprocesses. math-verify's own timeout is `signal.alarm`, which raises in any thread but the main one and cannot
stop sympy stuck in C code (a `10^{10^{10}}` is a big-integer power that never yields). So its timeouts are switched
off (`parsing_timeout=None`, `timeout_seconds=None`) and the check runs in a small pool of persistent worker
subprocesses (plain `subprocess`, not `multiprocessing`, so nothing re-imports the trainer's `__main__` and no fork
copies its threads). A check sends one JSON line and waits with `poll` for the reply, which works from any thread:
- soft limit: the worker arms `setitimer(timeout_s)` around the check; it interrupts pure-Python sympy, the worker
  answers `"timeout"` and stays warm;
- hard limit: if no reply arrives within `timeout_s + 0.5 s` (the check is stuck in C, or swallowed the interrupt),
  the caller kills the worker and returns `"timeout"`; the next check starts a fresh one.
Starting a worker (importing sympy, ~1-3 s) is waited for separately and not counted against `timeout_s`. Workers
are recycled after `_MAX_CHECKS_PER_WORKER` checks (sympy's caches grow), exit when the parent's pipe closes, and
a forked child of the trainer starts its own pool instead of sharing the parent's pipes.

The worker runs this file by path (`_worker_main`), so it imports neither the `trainer` packages nor torch: this file
imports only the standard library at the top, and math-verify inside the worker.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["WORKER_REASONS", "start_verifier", "stop_verifier", "symbolic_check", "worker_count"]

WORKER_REASONS = ("symbolic", "mismatch", "timeout", "error")
"""What `symbolic_check` returns: 'symbolic' (equal) or why not."""

_GRACE_S = 0.5  # hard limit = timeout_s + this: room for the worker's own soft timeout to answer first
_STARTUP_TIMEOUT_S = 120.0  # sympy's import on a loaded machine; a worker that takes longer is an error
_MAX_CHECKS_PER_WORKER = 5000
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")  # a word that is not a LaTeX command


def symbolic_check(gold: str, pred: str, timeout_s: float) -> str:
    """math-verify's verdict on `pred` against `gold`, within `timeout_s` seconds, from any thread.

    Args:
        gold: the reference answer, already stripped of delimiters (`math_reward`'s light normalisation).
        pred: the predicted answer, likewise.
        timeout_s: finite and `> 0` (the caller checks it); start-up of a worker is not counted.

    Returns:
        One of `WORKER_REASONS`: 'symbolic' when they are equal, else 'mismatch', 'timeout' or 'error'. Never raises
        for any string input.
    """
    return _get_pool().check(gold, pred, timeout_s)


def worker_count() -> int:
    """How many checks can run at once: the size of this process's pool (starts no worker)."""
    return _get_pool().size


# ------------------------------------------------------------------------------------------------ the worker


def _symbolic_equal(gold: str, pred: str) -> bool:
    """math-verify's verdict (runs in a worker): each side wrapped in `\\boxed{}`; prose also parsed bare."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
    gold_parsed = parse("\\boxed{" + gold + "}", config, parsing_timeout=None)
    if not gold_parsed:
        return False
    if verify(gold_parsed, parse("\\boxed{" + pred + "}", config, parsing_timeout=None), timeout_seconds=None):
        return True
    # Only prose: bare parsing finds the last number of "1, 2, 3", which would pass a gold of 3.
    return bool(_PROSE.search(pred)) and verify(
        gold_parsed, parse(pred, config, parsing_timeout=None), timeout_seconds=None
    )


class _SoftTimeout(BaseException):
    """Raised by the worker's alarm; a BaseException so math-verify's `except Exception` cannot swallow it."""


def _raise_soft_timeout(signum: int, frame: object) -> None:
    raise _SoftTimeout


def _worker_main(argv: list[str]) -> None:
    """The verifier subprocess: `ready`, then one JSON reply line per JSON request line until stdin closes."""
    target, parent_path = argv[0], json.loads(argv[1])
    sys.path.extend(p for p in parent_path if p not in sys.path)
    replies = os.fdopen(os.dup(1), "w", encoding="ascii")
    os.dup2(2, 1)  # stray prints from libraries go to stderr and cannot corrupt the protocol
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer's Ctrl-C is the trainer's to handle
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that its timeout is off: we know
    if target:
        module, _, name = target.partition(":")
        fn: Callable[[str, str], bool] = getattr(__import__(module, fromlist=[name]), name)
    else:
        fn = _symbolic_equal
        fn("1", "1")  # imports sympy and builds the LaTeX parser before the first timed request
    signal.signal(signal.SIGALRM, _raise_soft_timeout)
    replies.write('{"ready": true}\n')
    replies.flush()
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            try:
                signal.setitimer(signal.ITIMER_REAL, request["timeout"])
                reason = "symbolic" if fn(request["gold"], request["pred"]) else "mismatch"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:
            reason = "timeout"
        except Exception:
            reason = "error"
        replies.write(json.dumps({"reason": reason}) + "\n")
        replies.flush()


_BOOT = (
    "import importlib.util as u, sys\n"
    "s = u.spec_from_file_location('_fastslow_verifier_worker', sys.argv[1])\n"
    "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m)\n"
    "m._worker_main(sys.argv[2:])\n"
)

# -------------------------------------------------------------------------------------------------- the pool


class _WorkerDied(Exception):
    """The worker exited while working on a request (a crash)."""


class _WorkerGone(_WorkerDied):
    """The worker was already gone when the request was sent: safe to retry on a fresh one."""


class _Worker:
    """One verifier subprocess (this file run by path, so neither `fastslow/__init__` nor torch is imported)."""

    def __init__(self, target: str) -> None:
        path = json.dumps([p for p in sys.path if p])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, os.path.abspath(__file__), target, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,  # keeps the terminal's Ctrl-C away; it exits when our pipe closes
        )
        self.checks = 0
        self._buf = b""
        self._poll = select.poll()  # poll, not select: no FD_SETSIZE limit in a process with many files open
        self._poll.register(self.proc.stdout.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        try:
            if self._read_line(time.monotonic() + _STARTUP_TIMEOUT_S) is None:
                raise _WorkerDied("verifier worker did not start in time")
        except BaseException:
            self.kill()
            raise

    def _read_line(self, deadline: float) -> bytes | None:
        """The next reply line, or None at the deadline."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._poll.poll(math.ceil(remaining * 1000)):
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _WorkerDied("verifier worker exited")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def check(self, gold: str, pred: str, timeout_s: float) -> str:
        """One check's reason; kills the worker at the hard limit. Raises _WorkerDied if it is gone."""
        self.checks += 1
        request = json.dumps({"gold": gold, "pred": pred, "timeout": timeout_s}) + "\n"  # ASCII: surrogates escape
        try:
            self.proc.stdin.write(request.encode("ascii"))
            self.proc.stdin.flush()
        except OSError as e:
            raise _WorkerGone("verifier worker is gone") from e
        try:
            line = self._read_line(time.monotonic() + timeout_s + _GRACE_S)
        except BaseException:  # e.g. Ctrl-C while waiting: its late reply would answer the next request
            self.kill()
            raise
        if line is None:
            self.kill()
            return "timeout"
        reason = json.loads(line)["reason"]
        return reason if reason in WORKER_REASONS else "error"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Ends the subprocess (it has no children) and closes the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


class _Pool:
    """Up to `size` workers, started on demand; each check borrows one, so concurrent callers never share a pipe."""

    def __init__(self, size: int, target: str = "") -> None:
        self.size = max(1, int(size))
        self.target = target  # "module:function" replaces `_symbolic_equal` (tests use it to simulate hangs)
        self.pid = os.getpid()
        self._idle: list[_Worker] = []
        self._live = 0
        self._closed = False
        self._cond = threading.Condition()

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and self._live >= self.size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._live += 1
        try:  # start outside the lock: it takes seconds and other callers may have idle workers meanwhile
            return _Worker(self.target)
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker) -> None:
        keep = worker.alive and worker.checks < _MAX_CHECKS_PER_WORKER and not self._closed
        if not keep:
            worker.kill()
        with self._cond:
            if keep:
                self._idle.append(worker)
            else:
                self._live -= 1
            self._cond.notify()

    def check(self, gold: str, pred: str, timeout_s: float) -> str:
        """'symbolic' | 'mismatch' | 'timeout' | 'error'; a worker found dead before the request is replaced once."""
        for attempt in range(2):
            try:
                worker = self._acquire()
            except Exception:
                logging.getLogger(__name__).warning("math verifier worker failed to start", exc_info=True)
                return "error"
            try:
                return worker.check(gold, pred, timeout_s)
            except _WorkerGone:
                if attempt:
                    return "error"
            except _WorkerDied:
                return "error"
            except Exception:
                worker.kill()
                return "error"
            finally:
                self._release(worker)
        return "error"

    def start(self, n: int) -> None:
        """Starts workers until `n` (at most `size`) exist."""
        started = [self._acquire() for _ in range(min(n, self.size))]
        for worker in started:
            self._release(worker)

    def close(self) -> None:
        """Kills the idle workers now and busy ones when their check returns."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        for worker in idle:
            worker.kill()


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _get_pool() -> _Pool:
    """The process's verifier pool; a forked child gets its own rather than its parent's pipes."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _Pool(_default_workers())
        return _POOL


def start_verifier(*, workers: int | None = None) -> None:
    """Starts the verifier workers now (optional): the first symbolic check then pays no start-up.

    Args:
        workers: pool size; default half the CPU cores, 1 to 8. Replaces a pool of another size.
    """
    global _POOL
    size = _default_workers() if workers is None else workers
    # Checked here, not with `fastslow._checks`: the worker runs this file by path, with no fastslow and no torch.
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    with _POOL_LOCK:
        if _POOL is not None and _POOL.pid == os.getpid() and _POOL.size != size:
            _POOL.close()
            _POOL = None
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _Pool(size)
        pool = _POOL
    pool.start(size)


def stop_verifier() -> None:
    """Ends the verifier workers (also done at exit); a later check starts new ones."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


atexit.register(stop_verifier)
