"""Run configuration: a typed tree of sections, one loader, one override syntax.

    from trainer.config import Config, load_config, from_dict, ConfigError

- `tree`: the tree (`Config`), assembled from the sections, and `from_dict`.
- `io`: the command-line loader (`load_config`), presets (`configs/*.toml`), TOML writing (`to_toml`, `save_toml`).
- `aliases`: former keys (`rollout.vllm_mode`, `algorithm.name`, ...) and what they are now.
- `base`: what every section is built on (`_Section`: coercion, checks) and `ConfigError`.
- the sections: beside their components, `trainer.model.config` (`[model]`, `[warm_start]`),
  `trainer.rollout.config` (`[rollout]`), `trainer.reward.config` (`[reward]`); here, where the component's package
  imports torch at package level or is no package, `data`, `algorithm`, `optim`, `checkpoint`, `report`
  (`[logging]`), `eval`, `parallel`. Loading a config imports neither torch nor transformers. The names below
  load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastslow.lazy_exports import lazy_exports

# public name -> the module that defines it (loaded on first use, PEP 562: a section module imports
# `trainer.config.base` without loading the whole tree, which imports the sections)
_EXPORTS: dict[str, str] = {
    "AlgorithmConfig": "trainer.config.algorithm",
    "SfpoConfig": "trainer.config.algorithm",
    "FAST_DEFAULTS": "trainer.config.aliases",
    "ConfigError": "trainer.config.base",
    "InputError": "trainer.config.base",
    "input_errors": "trainer.config.base",
    "CheckpointConfig": "trainer.config.checkpoint",
    "DataConfig": "trainer.config.data",
    "EVAL_SUFFIXES": "trainer.config.eval",
    "EvalConfig": "trainer.config.eval",
    "eval_source_name": "trainer.config.eval",
    "configs_dir": "trainer.config.io",
    "find_config": "trainer.config.io",
    "load_config": "trainer.config.io",
    "save_toml": "trainer.config.io",
    "to_toml": "trainer.config.io",
    "usage": "trainer.config.io",
    "ModelConfig": "trainer.model.config",
    "WarmStartConfig": "trainer.model.config",
    "OptimConfig": "trainer.config.optim",
    "ParallelConfig": "trainer.config.parallel",
    "LoggingConfig": "trainer.config.report",
    "RewardConfig": "trainer.reward.config",
    "ThinkingConfig": "trainer.reward.config",
    "Config": "trainer.config.tree",
    "from_dict": "trainer.config.tree",
    "MIN_TEMPERATURE": "trainer.rollout.config",
    "RolloutConfig": "trainer.rollout.config",
    "VllmConfig": "trainer.rollout.config",
}

__all__ = [
    "EVAL_SUFFIXES",
    "FAST_DEFAULTS",
    "MIN_TEMPERATURE",
    "AlgorithmConfig",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "InputError",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "RewardConfig",
    "RolloutConfig",
    "SfpoConfig",
    "ThinkingConfig",
    "VllmConfig",
    "WarmStartConfig",
    "configs_dir",
    "eval_source_name",
    "find_config",
    "from_dict",
    "input_errors",
    "load_config",
    "save_toml",
    "to_toml",
    "usage",
]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from trainer.config.algorithm import AlgorithmConfig, SfpoConfig
    from trainer.config.aliases import FAST_DEFAULTS
    from trainer.config.base import ConfigError, InputError, input_errors
    from trainer.config.checkpoint import CheckpointConfig
    from trainer.config.data import DataConfig
    from trainer.config.eval import EVAL_SUFFIXES, EvalConfig, eval_source_name
    from trainer.config.io import configs_dir, find_config, load_config, save_toml, to_toml, usage
    from trainer.config.optim import OptimConfig
    from trainer.config.parallel import ParallelConfig
    from trainer.config.report import LoggingConfig
    from trainer.config.tree import Config, from_dict
    from trainer.model.config import ModelConfig, WarmStartConfig
    from trainer.reward.config import RewardConfig, ThinkingConfig
    from trainer.rollout.config import MIN_TEMPERATURE, RolloutConfig, VllmConfig


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
