"""Rollout engines (generation on the current policy weights) and the factory that picks one by name."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from trainer.rollout.base import RolloutEngine, SamplingParams
from trainer.rollout.hf import HFEngine

__all__ = ["ENGINES", "HFEngine", "RolloutEngine", "SamplingParams", "build_engine"]

ENGINES = ("hf", "vllm")


def build_engine(
    name: str,
    *,
    make_model: Callable[[], PreTrainedModel],
    pad_token_id: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> RolloutEngine:
    """The engine named by `rollout.engine`: "hf" (transformers, CPU or GPU); "vllm" is not available yet.

    `make_model` builds a fresh copy of the trained model's architecture (weights are synced in later); it must
    not return the trained model itself, whose parameters become FSDP2 shards.
    """
    if name == "hf":
        return HFEngine(make_model, pad_token_id=pad_token_id, device=device, dtype=dtype)
    if name == "vllm":
        raise ValueError(
            "rollout.engine = 'vllm': vllm engine: not available yet (issue 8); install with pip install .[vllm] "
            "once it lands, and use rollout.engine = 'hf' until then"
        )
    raise ValueError(f"rollout.engine = {name!r}: unknown engine; allowed: {', '.join(repr(e) for e in ENGINES)}")
