"""The console's progress: one live line on a terminal, plain lines elsewhere.

On a terminal (the stream's `isatty()`), every step rewrites one line in place: a carriage return, the line cut to
the terminal's width so it never wraps, the rest of the old line cleared:
`step 12/60 (20%) | 0.84 step/s | left 0:00:57 | reward 0.512 | acc 0.438 | ...`. Any other line printed through
`Progress.print` (an evaluation, a note of the logger, the summary) first ends the live line, so nothing is
overwritten. Off a terminal (a log file, a pipe, CI) it prints the plain metrics line every `every` steps (and at
step 1), as a log reader expects. `every = 0`: no progress output at all.

The rate is measured over the steps this process ran (wall clock between the first and the latest logged step, so
evaluations and checkpoints count); before a second step it is taken from the step's own `time/step`.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """`0:00:57`, `1:02:03`, `26:40:00`: hours, minutes, seconds."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Where the logger's console lines go: `step(step, line, metrics)` each step, `print(line)` for the rest."""

    def __init__(self, *, total_steps: int | None, every: int, stream: TextIO | None = None) -> None:
        self.total_steps = total_steps
        self.every = every
        self.stream = stream
        self.live = bool(getattr(self._out, "isatty", lambda: False)())
        self._showing = False  # a live line is on screen, not yet ended by a newline
        self._first: tuple[int, float] | None = None  # (step, clock time) of the first step logged here
        self.clock = time.monotonic  # seconds; a test sets its own

    @property
    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def rate(self, step: int, metrics: Mapping[str, Any]) -> float | None:
        """Steps per second so far (see the module docstring); None when it cannot be told yet."""
        now = self.clock()
        if self._first is None:
            self._first = (step, now)
        first_step, first_time = self._first
        if step > first_step and now > first_time:
            return (step - first_step) / (now - first_time)
        seconds = metrics.get("time/step")
        return 1.0 / seconds if isinstance(seconds, (int, float)) and seconds > 0 else None

    def step(self, step: int, line: str, metrics: Mapping[str, Any]) -> None:
        """Show step `step`: `line` is the plain metrics line (`step 12/60 | reward ...`)."""
        rate = self.rate(step, metrics)
        if self.every <= 0:
            return
        if not self.live:
            if step % self.every == 0 or step == 1:
                self.print(line)
            return
        head, _, rest = line.partition(" | ")
        parts = [head + (f" ({100 * step / self.total_steps:.0f}%)" if self.total_steps else "")]
        if rate:
            parts.append(f"{rate:.2f} step/s" if rate >= 0.1 else f"{1 / rate:.1f} s/step")
            if self.total_steps and step < self.total_steps:
                parts.append(f"left {format_duration((self.total_steps - step) / rate)}")
        text = " | ".join(parts + ([rest] if rest else []))
        width = shutil.get_terminal_size((120, 24)).columns - 1
        self._out.write("\r" + text[:width] + "\x1b[K")  # back to the line's start, write, clear what was left
        self._out.flush()
        self._showing = True

    def print(self, line: str) -> None:
        """A line of its own (after ending a live line)."""
        self.end()
        print(line, file=self._out, flush=True)

    def end(self) -> None:
        """End the live line (a newline), so what follows starts on a line of its own."""
        if self._showing:
            self._out.write("\n")
            self._out.flush()
            self._showing = False
