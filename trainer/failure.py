"""What a rank does when it fails on its own: one line at once, its traceback to a file, the job ended in seconds.

A failure on one rank (a user reward that raises there only, a bug, a `SystemExit` from user code) must not wait in
a barrier or a collective for the other ranks: they are waiting for it in the step's next collective, and would
wait `parallel.timeout_s` (30 minutes by default) before anyone spoke. So the failing rank

1. prints one line, `rank R failed at step N: Type: message (traceback: FILE)`, and writes the traceback to
   `RUN_DIR/error_rank{R}.log` (`FASTSLOW_DEBUG=1` prints it too);
2. closes what it can without talking to the other ranks (metrics file flushed, engine, reward children);
3. leaves at once with `os._exit(EXIT_FAILED)`, skipping the interpreter's teardown (which may join threads or
   wait in the process group's destructor).

Its peers then see their collective fail (gloo: the connection closed; torchrun also stops every worker once one
has failed) and leave the same way, with a line that says another rank failed. The first rank's line also goes to
`FASTSLOW_ERROR_FILE` (so `make run` repeats it after torchrun's report); a peer's line never overwrites it.

`guard_stdout()`: a console that goes away (stdout piped into `head`, a closed terminal) no longer ends the run:
further console output is dropped and the run continues (metrics.jsonl and checkpoints are unaffected).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

EXIT_FAILED = 1
"""Exit status of a rank that failed (an error in a step, in user code, or a peer that failed)."""
PEER_GRACE_S = 2.0
"""How long a rank whose collective broke waits before leaving (see `leave`)."""

_PEER_SIGNS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "socket closed",
    "read error",
    "ncclremoteerror",
    "process group watchdog",
    "has been aborted",
)


def first_failure(err: BaseException) -> tuple[int, BaseException] | None:
    """`trainer.checkpoint.check.first_failure`, imported on use: `trainer.main` imports this module before torch."""
    if not hasattr(err, "failures"):
        return None
    from trainer.checkpoint.check import first_failure as first

    return first(err)


def is_address_in_use(err: BaseException) -> bool:
    """The error is a port already taken (EADDRINUSE), as c10d words it."""
    text = str(err).lower()
    return "address already in use" in text or "eaddrinuse" in text


def is_peer_loss(err: BaseException) -> bool:
    """The error says another rank went away (a collective broke), not what failed there."""
    name = type(err).__name__
    text = f"{name}: {err}".lower()
    if is_address_in_use(err):  # a port taken: this rank's own problem
        return False
    return name in ("DistBackendError", "DistNetworkError") or any(sign in text for sign in _PEER_SIGNS)


def one_line(err: BaseException, limit: int = 400) -> str:
    """`Type: first line of the message`, cut to `limit` characters."""
    if isinstance(err, SystemExit):
        return f"SystemExit({err.code!r}) raised by the code being run"
    first = first_failure(err)  # DCP's CheckpointException: the first rank's own exception
    if first is not None:
        return f"{type(err).__name__} (rank {first[0]}: {one_line(first[1], limit - 40)})"
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def report_failure(err: BaseException, *, rank: int, step: int | None, run_dir: Path | None) -> str:
    """Print the failing rank's one line (traceback to `run_dir/error_rank{rank}.log`); returns the line."""
    where = f" at step {step + 1}" if step is not None else " while starting"
    peer = is_peer_loss(err)
    line = f"rank {rank} stopped{where}: another rank failed" if peer else f"rank {rank} failed{where}: {one_line(err)}"
    text = "".join(traceback.format_exception(err))
    if run_dir is not None:
        log = run_dir / f"error_rank{rank}.log"
        with contextlib.suppress(OSError):
            log.write_text(text, encoding="utf-8")
            line += f" (traceback: {log})"
    if os.environ.get("FASTSLOW_DEBUG") == "1":
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(text)
    collective = first_failure(err) is not None  # raised on every rank alike: rank 0 speaks
    if collective and run_dir is not None:  # a save that failed: the disk is the usual suspect, so say how full
        with contextlib.suppress(OSError):
            line += f" ({shutil.disk_usage(run_dir).free / 2**20:.1f} MiB free on the run folder's disk)"
    if rank == 0 or not collective:
        with contextlib.suppress(OSError, ValueError):
            print(line, file=sys.stderr, flush=True)
    if not peer:
        _record_for_torchrun(line)
    where_file = os.environ.get("FASTSLOW_ERROR_FILE")
    if where_file and not peer:
        with contextlib.suppress(OSError), open(where_file, "a", encoding="utf-8") as f:
            if f.tell() == 0:  # the first failure is the cause; later ones are its consequences
                f.write(line + "\n")
    return line


def _record_for_torchrun(line: str) -> None:
    """Give torchrun's failure report this rank's line instead of "To enable traceback see ..." (the JSON that
    torch elastic's `record` decorator writes to `TORCHELASTIC_ERROR_FILE`)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
    with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def leave(status: int = EXIT_FAILED, *, peer: bool = False) -> None:
    """End this process now, with `status`, after flushing the console (no interpreter teardown). A rank that only
    lost its peer (`peer`) waits a moment first, so that torchrun sees the failing rank end first and names it as
    the root cause (it stops the others itself meanwhile)."""
    if peer:
        time.sleep(PEER_GRACE_S)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


class _GuardedStream:
    """A text stream that turns into a sink the first time its reader has gone (EPIPE)."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner
        self.gone = False

    def _call(self, name: str, *args: Any) -> Any:
        if self.gone:
            return None
        try:
            return getattr(self._inner, name)(*args)
        except BrokenPipeError:
            self._drop()
        except OSError as err:
            if err.errno != errno.EPIPE:
                raise
            self._drop()
        return None

    def _drop(self) -> None:
        self.gone = True
        with contextlib.suppress(OSError):  # the interpreter's own final flush must not fail either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._inner.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        self._call("write", text)
        return len(text)

    def flush(self) -> None:
        self._call("flush")

    def isatty(self) -> bool:
        return not self.gone and self._inner.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def guard_stdout() -> None:
    """Make `sys.stdout` survive its reader going away (see the module docstring). Idempotent."""
    if not isinstance(sys.stdout, _GuardedStream):
        sys.stdout = _GuardedStream(sys.stdout)  # type: ignore[assignment]
