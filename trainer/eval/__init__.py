"""Held-out evaluation on the rollout engine: avg@n, pass@k, maj@n, lengths and format rate, per source and level.

The trainer calls `evaluate` before the first step (after the first weight sync), every `eval.every` steps and at
the end; `python -m trainer.eval MODEL` runs it standalone on a Hugging Face folder or a checkpoint
(`trainer.eval.cli`). One evaluation, for each source of `eval.source`:

1. Prompts: the synthetic task's held-out split (`trainer.tasks.synthetic.make_dataset(..., split="eval")`,
   disjoint from the training prompts) or a JSONL / Parquet file, through `trainer.data` like the training prompts
   (same columns, chat template and length limit; too long ones are skipped and counted); the first
   `eval.max_prompts`.
2. Sharding: the prompts are cut into blocks of `eval.batch_size`; block b goes to rank b % world. Every rank makes
   the same number of `generate` calls (an empty one when it has no block left), as an engine whose ranks generate
   together (vLLM tensor parallel) needs.
3. Sampling: each block with its own seed, a hash of (`seed`, the step, the source, the block). So the numbers are
   the same for any number of ranks, are reproduced by the standalone command on the same weights and step, and
   never touch the training's random streams: those (python, numpy, torch CPU and CUDA) are saved before and
   restored after, so a run trains the same with and without evaluation.
4. Scoring: the training scorer, `trainer.reward.builtin.score_completions` ("synthetic" for the built-in task,
   "math" for files; a response cut at the token limit is wrong under `reward.truncated = "wrong"`, as in
   training). The vote's answers are `trainer.tasks.synthetic.check(...).predicted` and
   `trainer.reward.math_grader.extract_answer`; two incorrect math answers are the same vote when they are equal as
   stripped strings or `answers_match` says so (normalised strings, then math-verify), see
   `trainer.eval.metrics.majority_correct`.
5. Every rank's per-prompt results are gathered to every rank, which all compute the same metrics
   (`trainer.eval.metrics`): `eval/<source>/avg@n`, `pass@k`, `maj@n`, `length`, `length_correct`,
   `length_incorrect`, `format`, `prompts`, `skipped_prompts`, and `eval/<source>/level_<d>/...` per difficulty.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import operator
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch.distributed as dist

from trainer import checkpoint as ckpt
from trainer import tasks as builtin_tasks
from trainer.config import Config, eval_source_name
from trainer.data import load_prompts
from trainer.eval.metrics import PromptResult, difficulty_label, eval_metrics, majority_correct
from trainer.reward.builtin import score_completions, think_opened_flags
from trainer.reward.math_grader import answers_match, extract_answer
from trainer.rollout import SamplingParams

__all__ = [
    "EvalSet",
    "block_seed",
    "eval_context_tokens",
    "evaluate",
    "headline",
    "headline_key",
    "load_eval_sets",
    "resolve_source",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
"""Relative `eval.source` paths not found from the working directory are looked up from here."""


@dataclass(frozen=True)
class EvalSet:
    """One source's prompts, ready to evaluate."""

    name: str
    """How its metrics are named: a built-in task's name ("synthetic", "chain") or the file stem (`eval/<name>/...`)."""
    task: str
    """The scorer: a built-in task's name or "math" (`trainer.reward.builtin.score`)."""
    prompts: Sequence[dict]
    """Items of `trainer.data.load_prompts` (read from disk on access for files), with "difficulty"."""
    count: int
    """How many of `prompts` are evaluated (the first `count`)."""
    skipped: int
    """Prompts dropped for being longer than the limit."""


def resolve_source(entry: str) -> str:
    """A file entry of `eval.source` as a path: from the working directory when it is there (or absolute), else
    from the repository root when it is there, else as given (loading then names it as missing)."""
    path = Path(entry).expanduser()
    if path.is_absolute() or path.exists() or not (REPO_ROOT / path).exists():
        return str(path)
    return str(REPO_ROOT / path)


def _data_view(cfg: Config, source: str) -> SimpleNamespace:
    """The data config `trainer.data.load_prompts` reads, for one evaluation source."""
    e, d = cfg.eval, cfg.data
    return SimpleNamespace(
        source=source, prompt_key=e.prompt_key or d.prompt_key, answer_key=e.answer_key or d.answer_key,
        max_prompt_tokens=e.max_prompt_tokens or d.max_prompt_tokens, on_long_prompt="skip",
        apply_chat_template=d.apply_chat_template, synthetic_size=e.synthetic_size, synthetic_split="eval",
        difficulty_key=e.difficulty_key or None,
    )  # fmt: skip


def load_eval_sets(cfg: Config, tokenizer: Any) -> list[EvalSet]:
    """The sources of `cfg.eval.source`, loaded and checked (every error here comes before any training).

    Raises:
        FileNotFoundError, ValueError: a missing file, a bad row, no usable prompt; the message names
            `eval.source`, the file and the row.
    """
    sets = []
    for entry in cfg.eval.sources:
        source = entry if builtin_tasks.is_builtin(entry) else resolve_source(entry)
        try:
            prompts = load_prompts(_data_view(cfg, source), tokenizer, seed=cfg.seed)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"eval.source: {str(err).removeprefix('data.source: ')}") from err
        limit = cfg.eval.max_prompts
        count = min(len(prompts), limit) if limit else len(prompts)
        task = entry if builtin_tasks.is_builtin(entry) else "math"
        sets.append(EvalSet(eval_source_name(entry), task, prompts, count, prompts.skipped))
    return sets


def eval_context_tokens(cfg: Config) -> int:
    """Prompt plus response tokens an evaluation needs at most (the engine's context must hold them)."""
    e = cfg.eval
    return (e.max_prompt_tokens or cfg.data.max_prompt_tokens) + (e.max_new_tokens or cfg.rollout.max_new_tokens)


def block_seed(seed: int, step: int, source: str, block: int) -> int:
    """The sampling seed of one block of prompts: a hash of what identifies it, in [0, 2**31)."""
    digest = hashlib.blake2b(f"eval|{seed}|{step}|{source}|{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


def headline_key(name: str, n: int) -> str:
    """The metric the run's summary reports for a source: `eval/<name>/avg@n`."""
    return f"eval/{name}/avg@{n}"


def headline(metrics: dict[str, float], sets: Sequence[EvalSet], n: int) -> dict[str, float]:
    """{source name: avg@n} of one evaluation's metrics."""
    return {s.name: metrics[headline_key(s.name, n)] for s in sets}


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """Restores every random stream the training draws from (python, numpy, torch CPU and CUDA) afterwards."""
    state = ckpt.rng_state()
    try:
        yield
    finally:
        ckpt.set_rng_state(state)


def _same_math_answer(a: str, b: str) -> bool:
    return a.strip() == b.strip() or answers_match(a, b)


def _score_block(
    cfg: Config, tokenizer: Any, task: str, items: Sequence[dict], completions: Sequence[Sequence[list[int]]]
) -> list[PromptResult]:
    """Each prompt's samples scored with the training scorer, and its majority vote."""
    n = cfg.eval.n
    flat = [c for comps in completions for c in comps]
    answers = [str(it["answer"]) for it in items for _ in range(n)]
    opened = think_opened_flags(cfg.reward.think_opened, tokenizer, items, n)
    texts, correct, formatted = score_completions(
        tokenizer, flat, answers, task=task, think_opened=opened, truncated=cfg.reward.truncated
    )
    same: Callable[[str, str], bool]
    if builtin_tasks.is_builtin(task):
        check = builtin_tasks.get(task).check
        extracted = [check(t, a).predicted for t, a in zip(texts, answers)]
        same = operator.eq
    else:
        extracted = [extract_answer(t) for t in texts]
        same = _same_math_answer
    out = []
    for i, item in enumerate(items):
        ok = tuple(bool(x) for x in correct[i * n : (i + 1) * n].tolist())
        out.append(
            PromptResult(
                correct=ok,
                formatted=tuple(bool(x) for x in formatted[i * n : (i + 1) * n].tolist()),
                lengths=tuple(len(c) for c in flat[i * n : (i + 1) * n]),
                majority=majority_correct(extracted[i * n : (i + 1) * n], ok, same),
                difficulty=difficulty_label(item.get("difficulty")),
            )
        )
    return out


def _sampling(cfg: Config, tokenizer: Any, seed: int) -> SamplingParams:
    e = cfg.eval
    return SamplingParams(
        n=e.n, temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens or cfg.rollout.max_new_tokens,
        stop_token_ids=[tokenizer.eos_token_id], seed=seed,
    )  # fmt: skip


def _evaluate_set(
    cfg: Config, engine: Any, tokenizer: Any, s: EvalSet, *, step: int, rank: int, world: int
) -> dict[str, float]:
    size = cfg.eval.batch_size
    blocks = [range(a, min(a + size, s.count)) for a in range(0, s.count, size)]
    local: list[tuple[int, PromptResult]] = []
    for r in range(math.ceil(len(blocks) / world)):
        b = r * world + rank
        rows = blocks[b] if b < len(blocks) else range(0)
        items = [s.prompts[i] for i in rows]
        sampling = _sampling(cfg, tokenizer, block_seed(cfg.seed, step, s.name, b))
        completions = engine.generate([it["prompt_ids"] for it in items], sampling)
        if items:
            local.extend(zip(rows, _score_block(cfg, tokenizer, s.task, items, completions)))
    parts: list[Any] = [local]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, local)
    results = [r for _, r in sorted((p for part in parts for p in part), key=operator.itemgetter(0))]
    metrics = eval_metrics(results, cfg.eval.n, prefix=f"eval/{s.name}/")
    metrics[f"eval/{s.name}/skipped_prompts"] = float(s.skipped)
    return metrics


def evaluate(
    cfg: Config, engine: Any, tokenizer: Any, sets: Sequence[EvalSet], *, step: int, rank: int = 0, world: int = 1
) -> dict[str, float]:
    """One evaluation of every set on `engine`'s current weights; all ranks call it together.

    Args:
        cfg: the run's `Config` (`eval`, `rollout.max_new_tokens`, `reward.think_opened`, `seed` are read).
        engine: a `trainer.rollout.RolloutEngine` holding the weights to evaluate.
        tokenizer: decodes the responses (and tells `reward.think_opened = "auto"` from the prompts).
        sets: from `load_eval_sets`.
        step: the training step the weights are from (0 before training); part of the sampling seed.
        rank, world: this process's place in the process group (prompts are sharded across it).

    Returns:
        The metrics of the module docstring, identical on every rank, plus "time/eval" (this rank's seconds).
    """
    start = time.perf_counter()
    out: dict[str, float] = {}
    with _rng_preserved():
        # Awake before, and left awake after: the trainer's next rollout needs it awake anyway, and putting a vllm
        # engine to sleep at level 2 would drop the weights just synced (only the next sync brings them back).
        engine.wake_up()
        for s in sets:
            out.update(_evaluate_set(cfg, engine, tokenizer, s, step=step, rank=rank, world=world))
    out["time/eval"] = time.perf_counter() - start
    return out
