"""Metrics: one JSON line per step, the console's progress, TensorBoard and wandb when asked, plots at the end.

Only rank 0 writes (the trainer's metrics are already reduced across ranks); on other ranks every method is a
no-op. `run_dir/metrics.jsonl` is opened for appending, so a resumed run continues the same file; a step logged
twice (a run killed after its last checkpoint, then resumed) appears twice, and readers such as `trainer.plot`
keep the last line for each step. Non-finite values are written as JSON `null` (strict JSON has no NaN).

An evaluation (`log_eval`) writes a row of its own, `{"step": k, "time": ..., "kind": "eval", "eval/<source>/...":
...}`, beside the training row of step k (step 0: before training); training rows have no "kind". Readers keep the
last row of each (step, kind) and may merge the two (`trainer.plot.read_metrics` does).

Every row also goes to TensorBoard (when installed) and to wandb (`logging.wandb`, `trainer.wandb_log`); the console
shows a live progress line on a terminal and plain lines elsewhere (`trainer.progress`). `close()` draws the run's
`plots/` (`logging.plots`, `trainer.plot.plot_finished_run`).
"""

from __future__ import annotations

import errno
import json
import math
import numbers
import os
import resource
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import torch

from trainer.progress import Progress

if TYPE_CHECKING:
    from trainer.config import Config

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.txt"
EVAL_KIND = "eval"
"""The "kind" of an evaluation's row in metrics.jsonl (a training row has no "kind")."""
# The console line: (label, the metric keys it shows, first present wins, format). Keys are the trainer's.
CONSOLE_FIELDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("reward", ("reward",), "{:.3f}"),
    ("acc", ("accuracy",), "{:.3f}"),
    ("len", ("response_length",), "{:.1f}"),
    ("kl", ("actor/kl", "kl"), "{:.4f}"),
    ("ent", ("entropy",), "{:.3f}"),
    ("tok/s", ("tokens_per_s",), "{:.0f}"),
    ("s/step", ("time/step",), "{:.2f}"),
)


def to_number(key: str, value: Any) -> float | int | str | None:
    """A metric value as JSON can hold it: tensors and numpy scalars unwrapped, non-finite floats as None."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"metric {key!r}: a tensor of shape {tuple(value.shape)}, expected one element")
        value = value.item()
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):  # bool and numpy ints included
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise TypeError(f"metric {key!r}: {type(value).__name__} is not a number")


def repair_partial_row(path: Path) -> int:
    """Cut `path` back to its last complete line (a row cut short by a full disk or a kill mid-write); returns how
    many bytes were dropped (0: the file is whole or absent)."""
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        keep = 0
        pos = size
        while pos > 0:  # find the last newline, reading backwards in blocks
            start = max(0, pos - 65536)
            f.seek(start)
            block = f.read(pos - start)
            i = block.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        f.truncate(keep)
        return size - keep


class MetricsLogger:
    """`log(step, metrics)` each step, `summary(lines)` at the end, `close()`; a context manager too."""

    def __init__(
        self,
        run_dir: Path,
        *,
        rank: int,
        console_every: int = 1,
        tensorboard: bool = True,
        total_steps: int | None = None,
        stream: TextIO | None = None,
        wandb: Mapping[str, Any] | None = None,
        plots: bool = False,
    ) -> None:
        """`console_every`: print the progress line every that many steps (0: never; on a terminal the live line
        is updated every step, see `trainer.progress`). `tensorboard`: also write scalars to `run_dir/tensorboard`
        if `torch.utils.tensorboard` imports (else noted once, and skipped). `total_steps` is shown as step/total.
        `stream`: where the console lines go (stdout by default). `wandb`: the `trainer.wandb_log.WandbSink`
        arguments (project, name, mode, config) to log every row there too; None: no wandb. `plots`: draw
        `run_dir/plots` at `close()`."""
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.console_every = console_every
        self.total_steps = total_steps
        self.stream = stream
        self.plots = plots
        self.progress = Progress(total_steps=total_steps, every=console_every, stream=stream)
        self._file: BinaryIO | None = None
        self._tb: Any = None
        self._wandb: Any = None
        self._rows = 0  # rows written by this logger: a run that logged none has nothing to plot
        if rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dropped = repair_partial_row(self.run_dir / METRICS_FILE)
        if dropped:
            self._print(f"{METRICS_FILE}: dropped a partial last row ({dropped} bytes: a write that was cut short)")
        # Unbuffered: each row reaches the file in one write() call, whole or (a full disk) cut, never interleaved.
        self._file = open(self.run_dir / METRICS_FILE, "ab", buffering=0)  # noqa: SIM115 (open until close())
        if wandb is not None:
            from trainer.wandb_log import WandbSink

            self._wandb = WandbSink(self.run_dir, **wandb)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._print("tensorboard is not installed: metrics go to metrics.jsonl only")
            else:
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    @classmethod
    def from_config(cls, run_dir: Path, cfg: Config, *, rank: int) -> MetricsLogger:
        """The run's logger, as the `logging` section (and `optim.total_steps`) ask for."""
        log = cfg.logging
        wandb = None
        if log.wandb:
            wandb = {"project": log.wandb_project, "name": log.wandb_name, "mode": log.wandb_mode}
            wandb["config"] = cfg.to_dict()
        return cls(
            run_dir, rank=rank, console_every=log.console_every, tensorboard=log.tensorboard,
            total_steps=cfg.optim.total_steps, wandb=wandb, plots=log.plots,
        )  # fmt: skip

    @property
    def path(self) -> Path:
        return self.run_dir / METRICS_FILE

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends `{"step", "time", **metrics}` as one JSON line (flushed), prints the progress line, and writes
        TensorBoard scalars. Values: floats, ints, bools, strings, or one-element tensors."""
        if self._file is None:
            return
        record = self._write(step, metrics, {})
        self.progress.step(step, self.format_line(step, record), record)

    def log_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends an evaluation's row `{"step", "time", "kind": "eval", **metrics}` (beside the step's training
        row), writes TensorBoard scalars, and prints `format_eval_line` (unless `console_every` is 0)."""
        if self._file is None:
            return
        record = self._write(step, metrics, {"kind": EVAL_KIND})
        if self.console_every > 0:
            self._print(format_eval_line(step, record))

    def _write(self, step: int, metrics: Mapping[str, Any], head: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {"step": int(step), "time": time.time(), **head}
        record.update({k: to_number(k, v) for k, v in metrics.items()})
        self._append((json.dumps(record) + "\n").encode())
        self._rows += 1
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, global_step=step)
        if self._wandb is not None:
            self._wandb.log(record)
        return record

    def _append(self, row: bytes) -> None:
        """Write one row whole. A full disk takes part of a row and returns a short count: the rest is written at
        once, and its error (`ENOSPC`) stops the run with the cut row last in the file, where the next start drops it;
        ignored, the next row would land on the cut one as soon as space came back (an old checkpoint deleted)."""
        assert self._file is not None
        view = memoryview(row)
        try:
            while view:
                written = self._file.write(view)
                if not written:  # a regular file says why with an error; this is only in case
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
        except OSError as err:  # the file object's error names no file: name it
            raise OSError(err.errno, err.strerror, str(self.path)) from err

    def format_line(self, step: int, metrics: Mapping[str, Any]) -> str:
        """`step 12/60 | reward 0.512 | acc 0.438 | len 14.2 | ...`: the fields of CONSOLE_FIELDS present."""
        total = f"/{self.total_steps}" if self.total_steps else ""
        parts = [f"step {step}{total}"]
        for label, keys, fmt in CONSOLE_FIELDS:
            key = next((k for k in keys if k in metrics), None)
            if key is None:
                continue
            value = metrics[key]
            value = value if value is None or isinstance(value, str) else to_number(key, value)  # None: non-finite
            parts.append(f"{label} {'nan' if value is None else fmt.format(value)}")
        return " | ".join(parts)

    def summary(self, lines: Iterable[str] | str) -> None:
        """Prints the run's closing lines and writes them to `run_dir/summary.txt`."""
        if self.rank != 0:
            return
        lines = [lines] if isinstance(lines, str) else list(lines)
        for line in lines:
            self._print(line)
        (self.run_dir / SUMMARY_FILE).write_text("".join(line + "\n" for line in lines))

    def close(self) -> None:
        """Close the sinks; then, with `plots` and rows logged, draw `run_dir/plots` (a failure is one line, never an
        error)."""
        self.progress.end()
        drew = self._file is not None and self.plots and self._rows > 0
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None
        if drew:
            from trainer.plot import plot_finished_run

            note = plot_finished_run(self.run_dir)
            if note:
                self._print(note)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _print(self, line: str) -> None:
        self.progress.print(line)


def format_eval_line(step: int, metrics: Mapping[str, Any]) -> str:
    """`eval step 25 | synthetic avg@4 0.531 pass@4 0.812 maj@4 0.600 len 6.1 fmt 0.500 | 2.1 s`: per source, its
    avg@n, largest pass@k, maj@n, mean length and format rate (levels left out: they are in the file)."""
    by_source: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval":
            by_source.setdefault(parts[1], {})[parts[2]] = value
    fmt = lambda v, spec: "nan" if v is None else spec.format(v)
    out = [f"eval step {step}"]
    for source, m in by_source.items():
        fields = [source]
        passes = sorted((k for k in m if k.startswith("pass@")), key=lambda k: int(k[5:]))
        for key in [k for k in m if k.startswith("avg@")] + passes[-1:] + [k for k in m if k.startswith("maj@")]:
            fields.append(f"{key} {fmt(m[key], '{:.3f}')}")
        if "length" in m:
            fields.append(f"len {fmt(m['length'], '{:.1f}')}")
        if "format" in m:
            fields.append(f"fmt {fmt(m['format'], '{:.3f}')}")
        out.append(" ".join(fields))
    if "time/eval" in metrics:
        out.append(f"{fmt(metrics['time/eval'], '{:.1f}')} s")
    return " | ".join(out)


def _current_rss_bytes() -> int | None:
    """Resident set size now, from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * resource.getpagesize()


def system_metrics(device: torch.device) -> dict[str, float]:
    """Memory and utilisation, in GiB and percent, for the metrics line.

    Always: `mem/cpu_rss_gb` (now, from /proc where there is one) and `mem/cpu_peak_rss_gb` (getrusage). On CUDA:
    `mem/gpu_alloc_gb`, `mem/gpu_peak_alloc_gb`, `mem/gpu_reserved_gb` (this process, torch's allocator). With
    NVML (`pip install nvidia-ml-py`) on CUDA: `gpu/util_pct` and `gpu/mem_used_gb` (the whole device, all
    processes). A metric that cannot be read is left out rather than failing the step.
    """
    gib = float(2**30)
    out: dict[str, float] = {}
    rss = _current_rss_bytes()
    if rss is not None:
        out["mem/cpu_rss_gb"] = rss / gib
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux (bytes on macOS)
    out["mem/cpu_peak_rss_gb"] = peak_kb * (1 if sys.platform == "darwin" else 1024) / gib
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        out["mem/gpu_alloc_gb"] = torch.cuda.memory_allocated(device) / gib
        out["mem/gpu_peak_alloc_gb"] = torch.cuda.max_memory_allocated(device) / gib
        out["mem/gpu_reserved_gb"] = torch.cuda.memory_reserved(device) / gib
        # torch's NVML helpers map the torch device index to the NVML one (CUDA_VISIBLE_DEVICES included).
        try:
            out["gpu/util_pct"] = float(torch.cuda.utilization(device))
            out["gpu/mem_used_gb"] = torch.cuda.device_memory_used(device) / gib
        except Exception:  # no pynvml, or NVML refused: optional metrics
            pass
    return out
