"""Rollout engines (generation on the current policy weights), their registry, and the `[rollout]` config section.

- `config`: the `[rollout]` section and its `[rollout.vllm]` table (light: the config loader imports it).
- `registry`: each `rollout.engine` name and how to build it (`build_engine`, `engine_spec`).
- `base`: what an engine is (`RolloutEngine`) and what it takes and gives (`SamplingParams`, `Completion`).
- `hf`, `hf_process`, `vllm_*`: the engines.

The names below load on first use (PEP 562), so importing `trainer.rollout.config` pulls in neither torch nor
transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastslow.lazy_exports import lazy_exports

# public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "Completion": "base",
    "ParamInfo": "base",
    "RolloutEngine": "base",
    "SamplingParams": "base",
    "WeightStream": "base",
    "HFEngine": "hf",
    "VLLMUnavailable": "vllm_params",
    "ENGINES": "registry",
    "REGISTRY": "registry",
    "EngineArgs": "registry",
    "EngineSpec": "registry",
    "build_engine": "registry",
    "engine_spec": "registry",
    "RolloutConfig": "config",
    "VllmConfig": "config",
}

__all__ = [
    "ENGINES",
    "REGISTRY",
    "Completion",
    "EngineArgs",
    "EngineSpec",
    "HFEngine",
    "ParamInfo",
    "RolloutConfig",
    "RolloutEngine",
    "SamplingParams",
    "VLLMUnavailable",
    "VllmConfig",
    "WeightStream",
    "build_engine",
    "engine_spec",
]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from trainer.rollout.base import Completion, ParamInfo, RolloutEngine, SamplingParams, WeightStream
    from trainer.rollout.config import RolloutConfig, VllmConfig
    from trainer.rollout.hf import HFEngine
    from trainer.rollout.registry import ENGINES, REGISTRY, EngineArgs, EngineSpec, build_engine, engine_spec
    from trainer.rollout.vllm_params import VLLMUnavailable


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
