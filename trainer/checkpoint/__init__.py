"""Checkpoints: sharded model + optimizer (DCP) and the run's trainer state, written atomically; Hugging Face export.

Layout of a run folder::

    checkpoints/
      step_00000040/                  complete: renamed from `.tmp` only after every rank finished writing
        .metadata, __0_0.distcp, ...  torch.distributed.checkpoint: model and optimizer, resharding-capable
        trainer_state.pt              torch.save of plain python values and tensors; loads with weights_only=True
        meta.json                     step, world size, torch version
        checksums.json                size and CRC-32 of every file above (`checksums`), checked at resume
      step_00000050.tmp/              a save in progress, or one killed midway: never loaded, removed by the next save
      latest                          the name of the newest complete folder (written last, via os.replace)
    hf/                               `export_hf`: safetensors + config + tokenizer

Nothing in a checkpoint depends on the number of processes that wrote it: DCP reshards model and optimizer onto
any mesh, and the trainer state is the run's, identical on every rank, written once by rank 0 (the RNG streams are
derived from (seed, step, rank) by `seed_step`, not saved). A checkpoint written before that (one
`trainer_state_rank{r}.pt` per rank) still loads, at any world size: each rank reads its own file when there is
one, else rank 0's (their values agree but for the RNG state, which is no longer restored).

Every function here that takes a model is a collective: all ranks call it, in the same order. The run folder must
be on a filesystem all ranks see (DCP writes one file per rank, rank 0 renames). A process group is always
initialised (trainer/dist.py makes a group of one when run alone).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from trainer.checkpoint import checksums
from trainer.model.names import hf_name

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINER_STATE = "trainer_state.pt"
_STEP_RE = re.compile(r"step_(\d{8,})")


# ----------------------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """This process's RNG states (python `random`, numpy's global RNG, torch CPU, this rank's CUDA device).

    Stored in forms that `torch.load(weights_only=True)` accepts: lists of ints for python and numpy, uint8
    tensors for torch. Only the current CUDA device is recorded (one device per rank), which avoids creating a
    context on every visible GPU.
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores `rng_state()`'s output, so the next random numbers are the ones the saved process would draw."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
        else:
            warnings.warn("checkpoint has a CUDA RNG state but CUDA is not available: not restored", stacklevel=2)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of rank `rank`'s RNG streams for step `step` (from 0) of a run seeded `seed`: 63 bits of a hash."""
    digest = hashlib.blake2b(f"fastslow:{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seeds python `random`, numpy's global RNG and torch (CPU and CUDA) for step `step` on rank `rank`.

    Called before every step, so what a step draws depends on (seed, step, rank) only: a resumed run needs no saved
    generator state, and resumes the same at any world size (a rank's streams do not depend on how many there are).
    """
    value = step_seed(seed, step, rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)  # all CUDA devices too


# ----------------------------------------------------------------------------------------------- save and load
def _rank_world() -> tuple[int, int]:
    if not dist.is_initialized():
        raise RuntimeError("checkpoint functions need an initialised process group (trainer.dist makes one)")
    return dist.get_rank(), dist.get_world_size()


def _step_of(path: Path) -> int | None:
    """The step of a complete checkpoint folder's name, None for anything else (`.tmp` folders included)."""
    match = _STEP_RE.fullmatch(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoint folders in `ckpt_dir` (a run's `checkpoints/`), oldest step first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(s, p) for p in ckpt_dir.iterdir() if (s := _step_of(p)) is not None and (p / ".metadata").is_file()]
    return [p for _, p in sorted(found)]


def _replace_dir(src: Path, dst: Path) -> None:
    """Moves folder `src` to `dst`; an existing `dst` is moved aside to `<dst>.old.tmp` first, then removed."""
    if dst.exists():
        old = dst.with_name(dst.name + ".old.tmp")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(src, dst)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict[str, Any],
    *,
    keep: int,
) -> Path:
    """Writes `run_dir/checkpoints/step_{step:08d}` atomically and points `latest` at it; returns its path.

    All ranks call. Model and optimizer go through DCP (each rank writes its shards); `trainer_state` (python
    values and plain tensors; no DTensors: pass `.to_local()`) is the run's, the same on every rank: rank 0 writes
    it to `trainer_state.pt`. Every rank first checks that its state reads back with `weights_only=True` (in
    memory), so state that could not be resumed fails here, on every rank, not at resume time. Then rank 0 renames
    the `.tmp` folder (atomic on POSIX), rewrites `latest`, and deletes older complete checkpoints beyond the newest
    `keep` (`keep <= 0`: keep all; the folder just written is always kept). A leftover `.tmp` folder from a killed
    save is removed first.

    An optimizer without state yet (no step taken) gets it initialised by DCP's `get_state_dict` (a zero-gradient
    step at learning rate 0), so save after the first optimizer step if the step counters must stay exact.
    """
    rank, world = _rank_world()
    ckpt_dir = Path(run_dir) / CHECKPOINTS
    name = f"step_{step:08d}"
    final, tmp = ckpt_dir / name, ckpt_dir / f"{name}.tmp"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for leftover in ckpt_dir.glob("*.tmp"):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        tmp.mkdir()
    dist.barrier()

    buffer = io.BytesIO()
    torch.save(trainer_state, buffer)
    try:
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    except Exception as err:  # the unpickler's message names the offending type
        raise TypeError(
            f"trainer_state must hold only python values and plain tensors (it is read with weights_only=True): {err}"
        ) from err
    dcp.save(_dcp_state(model, optimizer), checkpoint_id=tmp)
    # Each rank sums the shards it wrote (still in the page cache), in parallel; rank 0 the rest and the manifest.
    mine = checksums.sums(tmp, [p.name for p in tmp.glob(f"__{rank}_*.distcp")])
    every: list[dict[str, list[int]] | None] = [None] * world
    dist.all_gather_object(every, mine)
    if rank == 0:
        with open(tmp / TRAINER_STATE, "wb") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        meta = {"step": step, "world_size": world, "torch": torch.__version__}
        _write_text_atomic(tmp / "meta.json", json.dumps(meta, indent=1) + "\n")
        entries = {name: v for part in every if part for name, v in part.items()}
        entries.update(checksums.sums(tmp, [".metadata", TRAINER_STATE, "meta.json"]))
        checksums.write(tmp, entries)
    dist.barrier()

    if rank == 0:
        _replace_dir(tmp, final)
        _write_text_atomic(ckpt_dir / LATEST, name + "\n")
        if keep > 0:
            older = [p for p in complete_checkpoints(ckpt_dir) if p != final]
            for path in older[: max(len(older) - (keep - 1), 0)]:
                shutil.rmtree(path)
    dist.barrier()
    return final


def find_latest(run_dir: Path) -> Path | None:
    """The checkpoint to resume from: the folder `latest` names, else the newest complete one; None if none.

    `.tmp` folders (a save in progress or killed) are never returned; each is reported with a warning. `latest`
    naming a folder that is gone or incomplete is reported too, and the newest complete folder is used instead.
    Read-only: any rank may call it, alone.
    """
    ckpt_dir = Path(run_dir) / CHECKPOINTS
    if not ckpt_dir.is_dir():
        return None
    for leftover in sorted(ckpt_dir.glob("step_*.tmp")):
        warnings.warn(f"ignoring incomplete checkpoint {leftover} (a save that did not finish)", stacklevel=2)
    complete = complete_checkpoints(ckpt_dir)
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        named = ckpt_dir / pointer.read_text().strip()
        if named in complete:
            return named
        warnings.warn(f"{pointer} names {named.name!r}, which is not a complete checkpoint", stacklevel=2)
    return complete[-1] if complete else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Loads model and optimizer in place from a checkpoint folder; returns the run's trainer state.

    All ranks call. `path` is a `step_*` folder, or a run folder (then `find_latest` picks the checkpoint). The
    model must be wrapped (FSDP2) as it was when saved, on any number of ranks: DCP reshards model and optimizer
    onto this run's mesh, and the trainer state is the same for every rank.
    """
    rank, _ = _rank_world()
    path = Path(path)
    if path.name.endswith(".tmp"):
        raise ValueError(f"{path} is an incomplete checkpoint (a save that did not finish)")
    if not (path / ".metadata").is_file():
        found = find_latest(path) if path.is_dir() else None
        if found is None:
            raise FileNotFoundError(f"no complete checkpoint at {path} (expected a step_* folder or a run folder)")
        path = found
    state_file = trainer_state_file(path, rank)
    if state_file is None:
        raise FileNotFoundError(f"{path / TRAINER_STATE} is missing")

    state = _dcp_state(model, optimizer)
    dcp.load(state, checkpoint_id=path)
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return torch.load(state_file, weights_only=True)


def trainer_state_file(path: Path, rank: int) -> Path | None:
    """The trainer state file rank `rank` reads from checkpoint folder `path`: `trainer_state.pt`; in a checkpoint
    written before it, the rank's own `trainer_state_rank{r}.pt`, else rank 0's (a run resumed on more processes).
    None when there is none."""
    for name in (TRAINER_STATE, f"trainer_state_rank{rank}.pt", "trainer_state_rank0.pt"):
        if (Path(path) / name).is_file():
            return Path(path) / name
    return None


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """{"model": ..., "optim": ...} state dicts (DTensor shards, fully-qualified names) for DCP to write or fill."""
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


# ------------------------------------------------------------------------------------------------------ export
def export_hf(
    out_dir: Path,
    model: nn.Module,
    hf_model_template: nn.Module,
    tokenizer: Any,
    *,
    prefix: str = "",
    dtype: torch.dtype | None = None,
) -> None:
    """Writes the trained weights as a Hugging Face folder (safetensors, config, generation config, tokenizer).

    All ranks call (the full state dict is gathered to rank 0's CPU, one parameter at a time); rank 0 writes.
    `hf_model_template` is an HF `PreTrainedModel` of the trained architecture (typically the unsharded model
    before `fully_shard`; a sharded one works too): its class, config and generation config are used, never its
    weights. `prefix` is stripped from `model`'s names ("lm." for the Policy wrapper); names outside it are not
    part of the HF model and are skipped. `dtype` casts floating weights (e.g. bfloat16 for serving); None keeps
    the trained dtype. The folder is written as `<out_dir>.tmp` and renamed, so a reader never sees half of it.
    """
    rank, _ = _rank_world()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        _write_hf(Path(out_dir), model, full, hf_model_template, tokenizer, prefix=prefix, dtype=dtype)
    dist.barrier()


def _write_hf(
    out_dir: Path,
    model: nn.Module,
    full: dict[str, torch.Tensor],
    template: nn.Module,
    tokenizer: Any,
    *,
    prefix: str,
    dtype: torch.dtype | None,
) -> None:
    from torch.distributed.fsdp import FSDPModule
    from transformers import PreTrainedModel

    # Tied weights (embedding / lm_head) are one parameter under several names: give every alias the same tensor
    # object, so save_pretrained recognises the tie (it compares storages) and writes the weight once.
    first_name: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        first = first_name.setdefault(id(param), name)
        if first != name and name in full and first in full:
            full[name] = full[first]
    cast: dict[int, torch.Tensor] = {}
    weights: dict[str, torch.Tensor] = {}
    for name, tensor in full.items():
        hf = hf_name(name)
        if prefix and not hf.startswith(prefix):
            continue
        if dtype is not None and tensor.is_floating_point():
            tensor = cast.setdefault(id(tensor), tensor.to(dtype))
        weights[hf.removeprefix(prefix)] = tensor

    # A fresh instance of the template's class (FSDP2 subclasses it: take the HF class underneath) on the meta
    # device, then the gathered tensors assigned as its parameters: no second copy of the weights is made.
    cls = next(c for c in type(template).__mro__ if issubclass(c, PreTrainedModel) and not issubclass(c, FSDPModule))
    with torch.device("meta"):
        hf_model = cls(copy.deepcopy(template.config))
    aliases = _tied_aliases(hf_model)
    result = hf_model.load_state_dict(weights, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k not in aliases]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"export_hf: the trained weights do not match {cls.__name__}: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (is prefix={prefix!r} right?)"
        )
    if aliases:
        hf_model.tie_weights()
    still_meta = [n for n, p in hf_model.named_parameters() if p.is_meta]
    if still_meta:
        raise ValueError(f"export_hf: no trained weight for {still_meta[:5]}")
    if getattr(template, "generation_config", None) is not None:
        hf_model.generation_config = copy.deepcopy(template.generation_config)

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _replace_dir(tmp, out_dir)


def _tied_aliases(model: nn.Module) -> set[str]:
    """Names under which a parameter appears after its first name (e.g. `lm_head.weight` with tied embeddings)."""
    seen: set[int] = set()
    aliases = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            aliases.add(name)
        seen.add(id(param))
    return aliases
