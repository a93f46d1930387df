"""The stale-weights check: the engine's log-probs of its own samples against the trainer's, every step.

A rollout engine that generated with other weights than the trainer's (a sync that was skipped, failed half-way or
loaded into the wrong place, such as vLLM CPU's stale packed copy of a tied head) gives samples whose log-probs
under the trainer's weights differ from those the engine reported. `rollout.max_logp_diff` bounds the mean
|difference| over a step's response tokens; above it the step stops with `StaleEngineError` instead of training on
another policy's samples. The bound is a numerics bound: fp32 engines agree with the trainer to ~1e-7 (vLLM CPU,
measured), a bf16 engine to ~1e-2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainer.dist import all_reduce

if TYPE_CHECKING:
    from trainer.rollout.config import RolloutConfig

AUTO_BOUND = {torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.1}
"""`rollout.max_logp_diff = -1` ("auto") by the wire dtype of the weights; used for the vllm engine only."""


class StaleEngineError(RuntimeError):
    """The engine's log-probs of its samples disagree with the trainer's beyond `rollout.max_logp_diff`."""


def logp_bound(rollout: RolloutConfig, dtype: torch.dtype | None) -> float:
    """The bound in force: `rollout.max_logp_diff` when >= 0 (0: off), else "auto": `AUTO_BOUND[dtype]` for the
    vllm engine (the engine whose weights travel; the hf engine's copy is checked by its own tests) in a synchronous
    run, 0 otherwise (with `rollout.max_staleness > 0` the engine is behind on purpose)."""
    bound = float(rollout.max_logp_diff)
    if bound >= 0:
        return bound
    if rollout.engine != "vllm" or getattr(rollout, "max_staleness", 0) > 0:  # stale on purpose: see offpolicy.py
        return 0.0
    return AUTO_BOUND.get(dtype if dtype is not None else torch.float32, 0.1)


def mean_logp_gap(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean |old_logp - rollout_logp| over all ranks' response tokens (`[B, T]` each, `mask` bool `[B, T]`).
    A NaN or inf in either counts as an infinite gap."""
    diff = (old_logp.double() - rollout_logp.double()).abs().masked_fill(~mask, 0.0)
    m = mask.double()
    sums = torch.stack([(diff * m).sum(), m.sum()])
    total, count = all_reduce(sums).tolist()
    return total / count if count > 0 else 0.0


def check_engine(gap: float, bound: float) -> None:
    """Raise `StaleEngineError` when `gap` (from `mean_logp_gap`) is above `bound` (> 0) or not finite."""
    if bound > 0 and not gap <= bound:
        raise StaleEngineError(
            f"the rollout engine's log-probs of its samples differ from the trainer's by {gap:.3g} on "
            f"average (rollout.max_logp_diff = {bound:g}): the engine generated with other weights than the "
            "trainer's (a missed or broken weight sync); set rollout.max_logp_diff higher for a lower-precision engine"
        )
