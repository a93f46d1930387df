"""The run folder: which one (`logging.run_dir`, or a fresh or the newest `runs/<algorithm>-*`), locked by rank 0
before anything is written into it, and what an earlier run left there (refused, or replaced once every input has
passed)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from trainer import checkpoint as ckpt
from trainer import run_lock
from trainer.config import Config, ConfigError, InputError
from trainer.dist import DistInfo


@dataclass
class RunFolder:
    """The run folder as this start found it: `created` (this start made it), `replace` (what is left of an earlier
    run, deleted only once every input has passed: `Trainer._replace_old_run`), `lock` (rank 0's, else None)."""

    path: Path
    created: bool
    replace: list[str]
    lock: run_lock.RunLock | None


def run_folder(cfg: Config, info: DistInfo) -> RunFolder:
    """The run folder: `logging.run_dir`, or `runs/<algorithm>-<UTC time>` chosen by rank 0 for everyone, locked by
    rank 0 before anything is written into it (`trainer.run_lock`).

    With `--resume auto` and no run folder given, the newest `runs/<algorithm>-*` folder holding a checkpoint. A
    fresh start into a folder that holds a run (`holds_run`) is refused unless `logging.overwrite`; a folder
    holding only the leftovers of a start that never trained (`config.toml`, an empty `metrics.jsonl`, error logs)
    is reused.
    """
    chosen = [cfg.logging.run_dir or None]
    if info.is_main and chosen[0] is None:
        runs = Path("runs")
        if cfg.checkpoint.resume == "auto":
            earlier = sorted(runs.glob(f"{cfg.algorithm.label}-*"), key=lambda p: p.name)
            earlier = [p for p in earlier if ckpt.find_latest(p) is not None]
            chosen = [str(earlier[-1])] if earlier else chosen
        if chosen[0] is None:
            chosen = [str(runs / f"{cfg.algorithm.label}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")]
    dist.broadcast_object_list(chosen, src=0)
    path = Path(chosen[0])
    answer: list[Any] = [(None, None, False, [])]  # (error kind, message, created, replace)
    lock = None
    if info.is_main:
        try:
            lock, answer[0] = _claim(path, cfg)
        except Exception as err:  # never leave the other ranks waiting at the broadcast
            why = f"cannot use it ({err.strerror})" if isinstance(err, OSError) and err.strerror else str(err)
            answer = [("input", f"logging.run_dir = {str(path)!r}: {why}", False, [])]
    dist.broadcast_object_list(answer, src=0)
    kind, message, created, replace = answer[0]
    if kind is not None:
        raise (ConfigError if kind == "config" else InputError)(message)
    dist.barrier()  # rank 0 has made the folder before any other rank uses it
    return RunFolder(path, created, replace, lock)


def _claim(path: Path, cfg: Config) -> tuple[run_lock.RunLock | None, tuple[str | None, str | None, bool, list[str]]]:
    """Rank 0's half of `_run_dir`: make and lock the folder, look at what it holds. Returns the lock (None when
    refused) and `(error kind or None, message, created, replace)`."""
    where = f"logging.run_dir = {str(path)!r}"
    if path.exists() and not path.is_dir():
        return None, ("input", f"{where} is a file, not a folder", False, [])
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return None, ("input", f"{where}: cannot create it: {err.strerror or err}", False, [])
    try:
        lock = run_lock.acquire(path)
    except run_lock.RunFolderBusy as err:
        return None, ("input", f"{where} {err}: wait for it to end, or choose another folder", False, [])
    for note in (lock.taken_over, lock.warning):
        if note:
            print(f"warning: run folder lock: {note}", file=sys.stderr, flush=True)
    if cfg.checkpoint.resume != "none":
        return lock, (None, None, created, [])
    held = holds_run(path)
    if held and not cfg.logging.overwrite:
        lock.release()
        message = (
            f"{where} holds a run ({', '.join(held)}): continue it with --resume auto, "
            "choose another folder, or set logging.overwrite=true to replace it"
        )
        return None, ("config", message, created, [])
    leftovers = [name for name in (*RUN_FILES, *_START_FILES) if (path / name).exists()]
    leftovers += sorted(p.name for p in path.glob("error_rank*.log"))
    return lock, (None, None, created, leftovers)


def holds_run(path: Path) -> list[str]:
    """What makes `path` hold a run that a fresh start would destroy: checkpoints, an export, plots, or metrics
    rows. A `config.toml` or an empty `metrics.jsonl` alone is what a start that never trained leaves."""
    held = []
    for name in RUN_FILES:
        p = path / name
        if name == "metrics.jsonl":
            if p.is_file() and p.stat().st_size > 0:
                held.append(name)
        elif name != "config.toml" and p.exists() and (not p.is_dir() or any(p.iterdir())):
            held.append(name)
    return held


RUN_FILES = ("metrics.jsonl", "config.toml", ckpt.CHECKPOINTS, "hf", "plots")
"""What a run writes into its folder (and what a fresh start with `logging.overwrite` deletes); see `holds_run`."""
_START_FILES = ("summary.txt", "tensorboard")
"""Written by a run too, replaced with it, but never what makes a folder hold one."""
