"""Asynchronous rollouts (`rollout.max_staleness = k > 0`): the engine generates the next steps' batches while the
trainer updates on the current one, with weights at most k updates old.

One generation thread per rank feeds a table of pending slots. Without an online filter a slot is a step: at step t
the trainer takes step t's batch (waiting if it is not ready: the trainer's idle time) and submits steps t+1 .. t+k
that are not yet pending, each with its prompts drawn from the sampler now, in step order, and its sampling seed
from its own step number, so the data and the seeds are those of the synchronous run. With FAST's online filter a
step may take several chunks, so a slot is a chunk of a stream: the filter takes chunks in order (the sampler's
order, as in the synchronous run) and each take keeps the next k chunks in flight; chunks a step does not need go to
the next step. As every step takes at least one chunk, a chunk is still trained on within k syncs of its request.
Each generation holds the pipeline's lock for its whole request; the weight sync takes the same lock, so it happens
between requests, never in the middle of one. Every batch carries the policy version it was generated with (the
number of syncs before it started). A batch more than k versions old when it is taken (only after a resume with a
smaller k) is dropped and counted (`rollout/dropped`, samples), and its prompts are generated again with the
current weights, as prime-rl drops samples past its bound.

Checkpoints drain the pipeline (every submitted slot finishes) and save the finished batches with their prompt
indices and versions (`state_dict`); a resumed run trains on exactly those, so a resume reproduces the run. Where
the overlap is real: the vLLM server (generation in the server's process) and the hf engine (generation in this
thread; on a CPU the two threads' torch ops run in parallel, the Python between them does not). The colocated vLLM
engine shares the trainer's device and cannot overlap: a config error says so.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from trainer.rollout.base import Completion, RolloutEngine, SamplingParams

if TYPE_CHECKING:
    from trainer.config import Config


class RolloutThreadError(RuntimeError):
    """The generation thread failed, or a batch did not arrive within the timeout."""


@dataclass
class Generated:
    """One slot's batch: its prompts (indices into the run's prompts), completions and the policy version. `step`
    is the slot: the step without an online filter, the chunk's number in the stream with one."""

    step: int
    indices: list[int]
    completions: list[list[Completion]]
    version: int
    busy_s: float = 0.0


class RolloutPipeline:
    """The generation thread, its lock and the pending steps; see the module docstring."""

    def __init__(self, engine: RolloutEngine, max_staleness: int, timeout_s: float) -> None:
        self.engine, self.k, self.timeout_s = engine, max_staleness, timeout_s
        self.lock = threading.Lock()
        self.version = 0  # syncs so far
        self.cursor: int | None = None  # the next chunk slot to take (online filter only); None: from the step
        self.pending: dict[int, Future[Generated] | Generated] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastslow-rollout")
        self._busy_since_take = 0.0
        self._busy_lock = threading.Lock()

    def submit(self, step: int, indices: list[int], prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> None:
        """Queue step `step`'s generation (its prompts already drawn from the sampler, in step order)."""
        if step in self.pending:
            raise RuntimeError(f"rollout pipeline: step {step} was submitted twice")
        prompt_ids = [list(p) for p in prompts]
        self.pending[step] = self._pool.submit(self._generate, step, list(indices), prompt_ids, sampling)

    def _generate(self, step: int, indices: list[int], prompts: list[list[int]], sampling: SamplingParams) -> Generated:
        with self.lock:  # a weight sync waits for this request to finish
            version, start = self.version, time.perf_counter()
            completions = self.engine.generate(prompts, sampling)
            busy = time.perf_counter() - start
        with self._busy_lock:
            self._busy_since_take += busy
        return Generated(step, indices, completions, version, busy)

    def has(self, step: int) -> bool:
        return step in self.pending

    def take(self, step: int) -> tuple[Generated, float]:
        """Step `step`'s batch and the seconds the trainer waited for it; `RolloutThreadError` on a failure or when
        it takes longer than the timeout."""
        entry = self.pending.pop(step)
        start = time.perf_counter()
        if isinstance(entry, Future):
            try:
                entry = entry.result(timeout=self.timeout_s)
            except FutureTimeout as exc:
                raise RolloutThreadError(
                    f"rollout: step {step + 1}'s batch did not arrive within {self.timeout_s:g} s (parallel.timeout_s);"
                    " the engine is stuck or gone"
                ) from exc
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
                raise RolloutThreadError(f"rollout: generating step {step + 1} failed: {why}") from exc
        return entry, time.perf_counter() - start

    def engine_busy_s(self) -> float:
        """Seconds the engine generated since the last call (the step's engine time; the rest is its idle time)."""
        with self._busy_lock:
            busy, self._busy_since_take = self._busy_since_take, 0.0
        return busy

    def sync(self, push: Callable[[], dict[str, float]]) -> dict[str, float]:
        """Run the weight push between generation requests; the version goes up by one."""
        with self.lock:
            out = push()
            self.version += 1
        return out

    def drain(self) -> None:
        """Wait for every pending step (before a checkpoint, an evaluation or the end)."""
        for step, entry in list(self.pending.items()):
            if isinstance(entry, Future):
                self.pending[step] = entry.result(timeout=self.timeout_s)

    def state_dict(self) -> dict[str, Any]:
        """The finished pending batches as plain values (the caller drained first): what a resume trains on."""
        self.drain()
        out = []
        for step in sorted(self.pending):
            g = self.pending[step]
            assert isinstance(g, Generated)
            comps = [[[list(c), c.logprobs] for c in group] for group in g.completions]
            out.append({"step": g.step, "indices": list(g.indices), "completions": comps, "version": g.version})
        return {"version": self.version, "pending": out, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.version = int(state["version"])
        self.pending = {}
        for g in state["pending"]:
            comps = [[Completion(ids, logp) for ids, logp in group] for group in g["completions"]]
            self.pending[int(g["step"])] = Generated(int(g["step"]), list(g["indices"]), comps, int(g["version"]))
        cursor = state.get("cursor")
        self.cursor = None if cursor is None else int(cursor)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def every_rank_state(pipeline: RolloutPipeline, world: int) -> list[dict[str, Any]]:
    """Every rank's `pipeline.state_dict()` (each rank's prompts are its own), in rank order: a collective, as the
    checkpoint is (every rank saves). Drains each rank's pipeline first."""
    mine = pipeline.state_dict()
    if world == 1:
        return [mine]
    every: list[Any] = [None] * world
    dist.all_gather_object(every, mine)
    return every


def restore_rank_state(
    pipeline: RolloutPipeline | None, ahead: list[dict[str, Any]], rank: int, world: int, warn: bool
) -> None:
    """Load this rank's entry of `every_rank_state`'s list into `pipeline`. A synchronous run (`pipeline` None), or
    one on another number of ranks, cannot use the batches: their prompts count as seen (one warning line when
    `warn`), and the pipeline keeps only the policy version."""
    usable = pipeline is not None and len(ahead) == world
    if usable:
        pipeline.load_state_dict(ahead[rank])
        return
    if warn and any(a["pending"] for a in ahead):
        why = "this run is synchronous" if pipeline is None else f"it was written by {len(ahead)} ranks"
        print(
            f"warning: the checkpoint holds batches generated ahead (rollout.max_staleness > 0) and {why}: "
            "their prompts count as seen, and the next steps draw new ones",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    if pipeline is not None:
        pipeline.version = int(ahead[0]["version"])


def take_step(
    ctx: Any, step: int, sampling: Callable[[int], SamplingParams], *, stream: bool = False
) -> tuple[list[dict], list[list[Completion]], dict[str, float]]:
    """The next batch from `ctx.pipeline`: step `step`'s, or with `stream` (an online filter) the next chunk of the
    stream; it is submitted now if not pending (the first step, or the first after a resume without pending
    batches). Then the next k slots are submitted: up to step `step + k` (never past the last step), or with
    `stream` the next k chunks (none from the last step on). `sampling(slot)` gives a slot's sampling parameters.
    Returns the prompts, the completions and the batch's "rollout/staleness" (policy versions between generation
    and this update), "rollout/dropped" (samples dropped as older than k, generated again) and "time/trainer_idle"."""
    pipeline: RolloutPipeline = ctx.pipeline
    slot = pipeline.cursor if stream and pipeline.cursor is not None else step
    if not pipeline.has(slot):
        _submit(ctx, slot, sampling)
    generated, waited = pipeline.take(slot)
    dropped = 0
    if pipeline.version - generated.version > pipeline.k:  # only after a resume with a smaller max_staleness
        dropped = sum(len(group) for group in generated.completions)
        prompts = [ctx.prompts[i]["prompt_ids"] for i in generated.indices]
        pipeline.submit(slot, generated.indices, prompts, sampling(slot))
        generated, again = pipeline.take(slot)
        waited += again
    total = ctx.cfg.optim.total_steps
    if stream:
        pipeline.cursor = slot + 1
        last = slot + pipeline.k if step < total - 1 else slot
    else:
        last = min(slot + pipeline.k, total - 1)
    for ahead in range(slot + 1, last + 1):
        if not pipeline.has(ahead):
            _submit(ctx, ahead, sampling)
    items = [ctx.prompts[i] for i in generated.indices]
    lag = float(pipeline.version - generated.version)
    return items, generated.completions, {
        "rollout/staleness": lag, "rollout/dropped": float(dropped), "time/trainer_idle": waited,
    }  # fmt: skip


class OverlapTally:
    """A step's overlap metrics over the batches it took (one, or an online filter's chunks): "rollout/staleness"
    (mean over them), "rollout/staleness_max", "rollout/dropped" and "time/trainer_idle" (sums)."""

    def __init__(self) -> None:
        self.parts: list[dict[str, float]] = []

    def take(
        self, ctx: Any, step: int, sampling: Callable[[int], SamplingParams], *, stream: bool
    ) -> tuple[list[dict], list[list[Completion]]]:
        """`take_step`, its metrics kept."""
        items, completions, metrics = take_step(ctx, step, sampling, stream=stream)
        self.parts.append(metrics)
        return items, completions

    def metrics(self) -> dict[str, float]:
        if not self.parts:
            return {}
        lags = [p["rollout/staleness"] for p in self.parts]
        return {
            "rollout/staleness": sum(lags) / len(lags), "rollout/staleness_max": max(lags),
            "rollout/dropped": sum(p["rollout/dropped"] for p in self.parts),
            "time/trainer_idle": sum(p["time/trainer_idle"] for p in self.parts),
        }  # fmt: skip


def _submit(ctx: Any, step: int, sampling: Callable[[int], SamplingParams]) -> None:
    indices = list(ctx.sampler.next_chunk())
    prompts = [ctx.prompts[i]["prompt_ids"] for i in indices]
    ctx.pipeline.submit(step, indices, prompts, sampling(step))


def overlap_problem(cfg: Config) -> str | None:
    """Why `rollout.max_staleness > 0` cannot run with this config, or None."""
    r = cfg.rollout
    if r.max_staleness > 0 and r.engine == "vllm" and r.vllm.mode == "colocated":
        return (
            "rollout.max_staleness > 0 needs an engine that generates while the trainer trains; the colocated vLLM "
            "engine shares the trainer's device and cannot overlap: use rollout.vllm.mode = 'server' or the hf engine"
        )
    return None


def overlap_note(cfg: Config, device_type: str) -> str | None:
    """A warning for a config that overlaps but gains little, or None: the in-process hf engine on a CPU, whose
    generation thread competes with the trainer for the same Python and cores (measured slower than synchronous,
    README "Asynchronous rollouts")."""
    r = cfg.rollout
    if r.max_staleness > 0 and r.engine == "hf" and device_type == "cpu":
        return (
            "rollout.max_staleness > 0 with the hf engine on a CPU generates in a thread of the trainer's own process, "
            "which competes with the update; rollout.engine = 'hf_process' overlaps on another core"
        )
    return None
