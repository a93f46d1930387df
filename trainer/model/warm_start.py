"""The built-in warm start: a short supervised pass on worked solutions of a built-in task, before RL.

The papers run RL on models that already answer at length (distilled long-CoT or math models), not on random
weights. The built-in job's stand-in: the tiny preset, trained with plain next-token cross-entropy on responses to
the task's *training* split (`trainer.tasks.synthetic`, never its held-out split) written three ways, chosen per
example: a direct answer (probability `warm_start.direct`), else the running-sum thought, followed by filler words
(each one more with probability `warm_start.filler`, so 0, 1, 2, ... of them). The mixture is fixed before any RL
run and is the same for every algorithm: the model it makes thinks about half the time, pads some thoughts, and gets
the hard levels right only when it thinks (see `trainer.tasks.synthetic` for the measured accuracies). The "chain" task
(`trainer.tasks.chain`) has its own mixture: a direct answer, else a thought that `filler` pads with a restatement.

The weights are a property of the model's shape and these settings, not of the RL seed (the papers start every seed
from one base model): they are trained once from `warm_start.seed` and cached as safetensors in `warm_start.cache`
(by default the run folder's parent, `runs/.warm_start/`), named by a hash of everything that determines them, so a
comparison of many runs pays for it once. With several ranks, rank 0 trains and writes the file (atomically) while
the others wait at a barrier (`ensure_cache`); `warm_start` then loads it into a model on every rank that calls it,
and the trainer's sharded construction (`trainer.model.build`) loads it on rank 0 only, which broadcasts it into the
shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from trainer import tasks
from trainer.checkpoint import checksums
from trainer.config.base import InputError
from trainer.data import encode_prompts
from trainer.model.load import model_from_config
from trainer.signals import Interrupted, stop_requested
from trainer.tasks import synthetic as digit_sum

if TYPE_CHECKING:
    from trainer.config import Config, WarmStartConfig

__all__ = ["TASK_VERSION", "applies", "cache_path", "ensure_cache", "examples", "supervised_pass", "warm_start"]

TASK_VERSION = digit_sum.VERSION
"""The default task's cache key; each task's `VERSION` changes whenever its prompts or solutions change, so that an
old cache is never reused."""

_ARCH_KEYS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "tie_word_embeddings", "max_position_embeddings", "rope_theta", "rms_norm_eps",
)  # fmt: skip


def applies(cfg: Config) -> bool:
    """Whether the run warm-starts: `warm_start.mode` "on", or "auto" with the tiny preset on a built-in task."""
    mode = cfg.warm_start.mode
    if mode == "auto":
        m = cfg.model
        return m.path is None and m.config is None and m.preset == "tiny" and tasks.is_builtin(cfg.data.source)
    return mode == "on"


def _settings(ws: WarmStartConfig) -> dict[str, Any]:
    return {k: getattr(ws, k) for k in ("steps", "batch_size", "lr", "direct", "filler", "seed")}


def cache_path(cfg: Config, model: PreTrainedModel | PretrainedConfig, run_dir: Path) -> Path:
    """Where the weights for this model shape (a model or its config) and these settings are cached."""
    arch = (model if isinstance(model, PretrainedConfig) else model.config).to_dict()
    key = {
        "task": tasks.of_source(cfg.data.source).VERSION,
        "arch": {k: arch.get(k) for k in _ARCH_KEYS},
        "settings": _settings(cfg.warm_start),
        "torch": torch.__version__.split("+")[0],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = Path(cfg.warm_start.cache).expanduser() if cfg.warm_start.cache else run_dir.parent / ".warm_start"
    return folder / f"{tasks.of_source(cfg.data.source).VERSION}-{digest}.safetensors"


def examples(n: int, *, seed: int, direct: float, filler: float, task: ModuleType = digit_sum) -> list[tuple[str, str]]:
    """`n` (prompt, response) pairs on the training split of the built-in `task` (`trainer.tasks`): its
    `warm_start_examples` (a direct answer with probability `direct`, else a thought padded by `filler`)."""
    return task.warm_start_examples(n, seed=seed, direct=direct, filler=filler)


def _batch(
    pairs: list[tuple[str, str]], tokenizer: PreTrainedTokenizerBase, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(input_ids [B, L], attention_mask [B, L], labels [B, L])`: right-padded; labels only on response tokens."""
    prompts = encode_prompts(tokenizer, [p for p, _ in pairs], chat_template=True)
    responses = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for _, r in pairs]
    L = max(len(p) + len(r) for p, r in zip(prompts, responses))
    B = len(pairs)
    ids = torch.full((B, L), tokenizer.pad_token_id, dtype=torch.long)
    att = torch.zeros(B, L, dtype=torch.long)
    labels = torch.full((B, L), -100, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = torch.tensor(p + r)
        ids[i, : len(seq)], att[i, : len(seq)] = seq, 1
        labels[i, len(p) : len(seq)] = torch.tensor(r)
    return ids.to(device), att.to(device), labels.to(device)


def supervised_pass(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ws: WarmStartConfig, *, task: ModuleType = digit_sum
) -> dict[str, float]:
    """Trains `model` in place on `examples(...)`: AdamW, linear warm-up then decay to a tenth, grad clip 1.

    Returns `{"loss_first", "loss_last", "seconds"}` (mean cross-entropy of the first and last 20 steps).
    """
    device = next(model.parameters()).device
    pairs = examples(ws.steps * ws.batch_size, seed=ws.seed, direct=ws.direct, filler=ws.filler, task=task)
    opt = torch.optim.AdamW(model.parameters(), lr=ws.lr, weight_decay=0.0)
    warmup = max(1, ws.steps // 12)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1.0 - s / ws.steps)
    )  # fmt: skip
    model.train()
    losses, start = [], time.perf_counter()
    for s in range(ws.steps):
        if stop_requested():  # SIGTERM / Ctrl-C: the cache is not written; the next start trains it again
            raise Interrupted(f"a stop was requested during the warm start (step {s} of {ws.steps})")
        ids, att, labels = _batch(pairs[s * ws.batch_size : (s + 1) * ws.batch_size], tokenizer, device)
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    k = min(20, len(losses))
    return {
        "loss_first": sum(losses[:k]) / k,
        "loss_last": sum(losses[-k:]) / k,
        "seconds": time.perf_counter() - start,
    }


def warm_start(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: Config, run_dir: Path, *, is_main: bool
) -> PreTrainedModel:
    """`model` with the warm-start weights: loaded from the cache, or trained (on rank 0) and cached first.

    Every rank must call this (it holds a barrier when a process group is up). The model's own initial weights are
    replaced: the supervised pass starts from a fresh init seeded with `warm_start.seed`.
    """
    device = next(model.parameters()).device
    path = ensure_cache(model.config, tokenizer, cfg, run_dir, is_main=is_main, device=device)
    load_model(model, str(path), strict=True, device=str(device))  # raises on a misfit
    model.train()
    return model


def ensure_cache(
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    cfg: Config,
    run_dir: Path,
    *,
    is_main: bool,
    device: torch.device | str = "cpu",
) -> Path:
    """The cached warm-start weights for a model of `config` (a `PretrainedConfig`): trained on `device` by rank 0
    and written first when missing. Every rank calls it (a barrier when a process group is up).

    Raises:
        InputError: rank 0 could not write the cache (a full disk, a read-only folder): one line naming the file
            (exit 2, as for a run folder that cannot be used); the other ranks then raise `FileNotFoundError`
            (which `trainer.config.input_errors` makes an `InputError` too, said by rank 0 only).
    """
    path = cache_path(cfg, config, run_dir)
    distributed = dist.is_available() and dist.is_initialized()
    if path.is_file() and is_main and (why := cache_damage(path)):
        print(f"warning: warm start: the cache is damaged ({why}): training it again", file=sys.stderr, flush=True)
        path.unlink(missing_ok=True)
    problem = None
    if not path.is_file() and is_main:
        problem = _train_and_save(config, tokenizer, cfg, path, torch.device(device))
    if distributed:  # rank 0 comes here even when the write failed: the others find no file and stop quietly
        dist.barrier()
    if problem is not None:
        raise InputError(problem)
    if not path.is_file():
        raise FileNotFoundError(f"warm start: {path} was not written (does every rank see warm_start.cache?)")
    return path


def cache_damage(path: Path) -> str | None:
    """What is wrong with a cached warm start, one phrase naming the file; None when it is whole. Its sidecar JSON
    records the file's size and CRC-32 (`trainer.checkpoint.checksums`; a cache written before that is checked by
    its header only)."""
    side = path.with_suffix(".json")
    try:
        info = json.loads(side.read_text(encoding="utf-8")) if side.exists() else {}
    except (OSError, ValueError) as err:
        return f"{side} does not read ({type(err).__name__})"
    if "crc32" in info:
        why = checksums.mismatch(path, int(info["bytes"]), int(info["crc32"]))
        if why:
            return why
    try:
        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
    except Exception as err:  # SafetensorError on a bad header, OSError
        return f"{path} does not read ({type(err).__name__}: {' '.join(str(err).split())[:160]})"
    return None


def _train_and_save(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, cfg: Config, path: Path, device: torch.device
) -> str | None:
    """Fresh init from `warm_start.seed`, the supervised pass, then an atomic write; what kept the file from being
    written (a full disk: one phrase naming it, its partial files removed), else None.

    The pass runs on the process's own threads (torchrun's OMP_NUM_THREADS=1 by default): raising them to every core
    made it ~6x slower whenever another process kept a core busy (OpenMP threads spinning at their barriers), and the
    tiny model gains little from a second thread on an idle machine.
    """
    ws = cfg.warm_start
    fresh = model_from_config(config, seed=ws.seed).to(device)
    print(f"warm start: {ws.steps} supervised steps on the task's worked solutions -> {path}", flush=True)
    stats = supervised_pass(fresh, tokenizer, ws, task=tasks.of_source(cfg.data.source))
    if not all(math.isfinite(v) for v in stats.values()):
        raise RuntimeError(f"warm start: the supervised pass diverged ({stats})")
    print(
        f"warm start: loss {stats['loss_first']:.3f} -> {stats['loss_last']:.3f} in {stats['seconds']:.1f} s",
        flush=True,
    )
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # written whole, then renamed: never half a file
    tmp_json = tmp.with_name(f"{tmp.name}.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(fresh, str(tmp))
        size, crc = checksums.file_sum(tmp)
        tmp_json.write_text(json.dumps({**stats, "settings": _settings(ws), "bytes": size, "crc32": crc}, indent=1))
        os.replace(tmp_json, path.with_suffix(".json"))
        os.replace(tmp, path)
    except Exception as err:  # OSError, or safetensors' SafetensorError ("I/O error: No space left on device ...")
        if not isinstance(err, OSError) and "os error" not in str(err):
            raise
        for partial in (tmp, tmp_json):  # a full disk is not left fuller
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
        return _unwritten(path, err)
    return None


def _unwritten(path: Path, err: Exception) -> str:
    """The one line for a cache that could not be written: the file, the error, and how full its disk is."""
    what = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())[:160]
    free = ""
    with contextlib.suppress(OSError):
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free on its disk"
    return (
        f"warm start: cannot write the cache {path} ({type(err).__name__}: {what}{free}): free space there, or set "
        "warm_start.cache to another folder"
    )
