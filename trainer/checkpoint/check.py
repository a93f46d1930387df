"""Damaged checkpoints: a cheap check that a checkpoint folder is whole, and which checkpoints `--resume auto` tries.

A checkpoint folder is renamed into place only once every rank has written it (`trainer.checkpoint`), so a save
killed midway never looks complete; what this guards against is damage afterwards: a file cut short by a full disk
or a copy that stopped, a file removed. `damage` reads what is small (meta.json, DCP's `.metadata`, the trainer
state) and only the sizes of the shard files: DCP's metadata gives, for every tensor and object it stored, the file,
offset and length of its bytes, so a `.distcp` file shorter than the end of its last item is cut short. That costs
a few milliseconds whatever the model's size. Bytes changed in place are found by the checksums every checkpoint
folder holds (`checksums`, ~2 GB/s: every byte is read once); a checkpoint written before them is checked by
size only, and a load that then fails is skipped by the Trainer as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from trainer.checkpoint import CHECKPOINTS, LATEST, TRAINER_STATE, checksums, complete_checkpoints

__all__ = ["ResumeChoice", "damage", "first_failure", "one_line", "resume_candidates"]


def damage(path: Path) -> str | None:
    """What is wrong with checkpoint folder `path`, one phrase naming the file; None when it looks whole."""
    path = Path(path)
    meta = path / "meta.json"
    try:
        int(json.loads(meta.read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{meta} does not read ({one_line(err)})"
    try:
        from torch.distributed.checkpoint import FileSystemReader

        storage = FileSystemReader(str(path)).read_metadata().storage_data
        ends: dict[str, int] = {}
        for info in storage.values():
            ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    except Exception as err:  # an unpickling error of any kind: the file is cut short or not DCP's
        return f"{path / '.metadata'} does not read ({one_line(err)})"
    for name, end in sorted(ends.items()):
        shard = path / name
        if not shard.is_file():
            return f"{shard} is missing"
        size = shard.stat().st_size
        if size < end:
            return f"{shard} is cut short ({size} of at least {end} bytes)"
    states = [path / TRAINER_STATE] if (path / TRAINER_STATE).exists() else sorted(path.glob("trainer_state_rank*.pt"))
    if not states:
        return f"{path / TRAINER_STATE} is missing"
    for state in states:
        try:
            torch.load(state, weights_only=True)
        except Exception as err:  # a truncated zip archive, an unpickling error
            return f"{state} does not load ({one_line(err)})"
    return checksums.verify(path)  # bytes changed in place (reads every byte; absent in older checkpoints)


class ResumeChoice(NamedTuple):
    """What `--resume auto` may load: `candidates` in the order to try them; `warnings`, one line per folder left
    out (damaged, or a `.tmp` save that did not finish); `complete`, how many complete folders there are (0:
    nothing to resume, a fresh start); `damaged`, the newest damaged folder's line (None: none is)."""

    candidates: list[Path]
    warnings: list[str]
    complete: int
    damaged: str | None


def resume_candidates(run_dir: Path) -> ResumeChoice:
    """The checkpoints of `run_dir` that `--resume auto` may load: the folder `latest` names first, then the other
    complete ones newest first, each checked with `damage`. Read-only."""
    ckpt_dir = Path(run_dir) / CHECKPOINTS
    complete = complete_checkpoints(ckpt_dir)[::-1]
    pointer = ckpt_dir / LATEST
    named = ckpt_dir / pointer.read_text().strip() if pointer.is_file() else None
    if named in complete:
        complete.remove(named)
        complete.insert(0, named)
    warnings = [
        f"ignoring incomplete checkpoint {p} (a save that did not finish)" for p in sorted(ckpt_dir.glob("step_*.tmp"))
    ]
    candidates, damaged = [], None
    for path in complete:
        why = damage(path)
        if why is None:
            candidates.append(path)
            continue
        line = f"checkpoint {path} is damaged ({why}): skipped"
        warnings.append(line)
        damaged = damaged or line
    return ResumeChoice(candidates, warnings, len(complete), damaged)


def first_failure(err: BaseException) -> tuple[int, BaseException] | None:
    """For DCP's `CheckpointException` (its `failures`: rank -> (exception, stack)), the lowest rank's exception;
    None for any other error."""
    failures = getattr(err, "failures", None)
    if not isinstance(failures, dict) or not failures:
        return None
    rank, (inner, _) = sorted(failures.items())[0]
    return rank, inner


def one_line(err: BaseException) -> str:
    """An error's message on one line, shortened (miniz and the unpickler can be wordy). DCP's
    `CheckpointException` (a `BaseException` whose text is every rank's traceback) gives its first rank's error."""
    first = first_failure(err)
    prefix = ""
    if first is not None:
        rank, err = first
        prefix = f"rank {rank}: {type(err).__name__}: "
    text = prefix + (" ".join(str(err).split()) or type(err).__name__)
    return text if len(text) <= 160 else text[:157] + "..."
