"""Run configuration: the tree of sections, assembled here; each section's dataclass and checks live with what it
configures.

| section                           | module                       |
| --------------------------------- | ---------------------------- |
| `[model]`, `[warm_start]`         | `trainer.model.config`       |
| `[data]`                          | `trainer.config.data`        |
| `[rollout]`, `[rollout.vllm]`     | `trainer.rollout.config`     |
| `[reward]`, `[reward.thinking]`   | `trainer.reward.config`      |
| `[algorithm]`, `[algorithm.sfpo]` | `trainer.config.algorithm`   |
| `[optim]`                         | `trainer.config.optim`       |
| `[checkpoint]`                    | `trainer.config.checkpoint`  |
| `[logging]`                       | `trainer.config.report`      |
| `[eval]`                          | `trainer.config.eval`        |
| `[parallel]`                      | `trainer.config.parallel`    |

A section sits in its component's package where importing that package is light (`trainer.model`, `trainer.reward`,
and `trainer.rollout`, which loads its engines lazily); the others are here, in `trainer/config/`: `trainer.eval` and
`trainer.checkpoint` import torch at package level, and the data, the optimizer, the algorithm's state, logging and
the mesh are flat modules. A component imports its choices from its section, never the other way round; loading a
config imports neither torch nor transformers.

Every section coerces and type-checks its fields, then runs its own range and cross-field checks, in `__post_init__`;
a bad value raises `ConfigError` naming the dotted key, the value and what is allowed. A section may hold nested
sections (`[rollout.vllm]`: key `rollout.vllm.mode`). `from_dict` builds a validated `Config` from nested plain
values, checking every key against the tree (unknown -> `ConfigError` suggesting the closest name) and reading former
keys through `trainer.config.aliases`. Reading a command line or a TOML file, and writing one, live in
`trainer.config.io`, which imports this module (never the other way round).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any

from trainer.config.algorithm import AlgorithmConfig
from trainer.config.aliases import is_former, normalize
from trainer.config.base import ConfigError, _Section, _suggest, leaf_keys, leaves, subsections
from trainer.config.checkpoint import CheckpointConfig
from trainer.config.data import BUILTIN_TEXT, DataConfig
from trainer.config.eval import EvalConfig
from trainer.config.optim import OptimConfig
from trainer.config.parallel import ParallelConfig
from trainer.config.report import LoggingConfig
from trainer.model.config import ModelConfig, WarmStartConfig
from trainer.reward.config import RewardConfig
from trainer.rollout.config import RolloutConfig
from trainer.tasks import is_builtin as is_builtin_task

__all__ = ["Config", "from_dict", "from_pairs", "lookup", "section_paths"]


@dataclass
class Config(_Section):
    """The whole run: one section per component, plus the seed."""

    model: ModelConfig = field(default_factory=ModelConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    seed: int = 0
    """Seeds everything (model init, data order, sampling); a run is deterministic for a seed on CPU."""

    def validate(self) -> None:
        self._require(0 <= self.seed < 2**63, "seed", "must be in [0, 2**63)")
        if self.eval.enabled:  # the evaluation samples on the rollout engine
            problem = self.rollout.sampling_problem(self.eval.temperature)
            if problem:
                raise ConfigError(
                    f"eval.temperature = {self.eval.temperature!r} (rollout.engine = {self.rollout.engine!r}): "
                    f"{problem}"
                )
        if self.warm_start.mode == "on" and not is_builtin_task(self.data.source):
            raise ConfigError(
                f"warm_start.mode = 'on': the warm start trains on a built-in task ({BUILTIN_TEXT}), but data.source = "
                f"{self.data.source!r}; use warm_start.mode = 'off' (or 'auto')"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict `{"seed": ..., section: {key: value, subsection: {...}}}`; tuples as lists, None kept."""
        return _as_dict(self)


def _as_dict(section: _Section) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in sorted(fields(section), key=lambda f: isinstance(getattr(section, f.name), _Section)):  # values first
        value = getattr(section, f.name)
        out[f.name] = _as_dict(value) if isinstance(value, _Section) else _plain(value)
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@cache
def section_paths() -> dict[str, type[_Section]]:
    """Every section's dotted name (`rollout`, `rollout.vllm`) -> its class, in tree order."""
    out: dict[str, type[_Section]] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, sub in subsections(cls).items():
            out[prefix + name] = sub
            walk(sub, f"{prefix}{name}.")

    walk(Config, "")
    return out


def lookup(dotted: str, where: str) -> Any:
    """The type of key `dotted` (`rollout.vllm.mode`, `seed`); `ConfigError` naming it, with the closest valid name."""
    every = leaf_keys(Config)
    if dotted in every:
        return every[dotted]
    sections = section_paths()
    if dotted in sections:
        raise ConfigError(f"{where}: {dotted!r} is a section; set its keys as {dotted}.KEY=VALUE")
    parent, dot, key = dotted.rpartition(".")
    if not dot:
        raise ConfigError(f"{where}: unknown key {dotted!r}{_suggest(dotted, list(every))}")
    if parent not in sections:
        head = dotted.partition(".")[0]
        if head in sections:  # below a value key (`model.path.x`)
            raise ConfigError(f"{where}: unknown key {dotted!r}{_suggest(dotted, list(every))}")
        names = list(subsections(Config))
        raise ConfigError(f"{where}: unknown section {head!r}{_suggest(head, names)} (sections: {', '.join(names)})")
    keys = list(leaves(sections[parent]))
    elsewhere = [k for k in every if k.endswith(f".{key}")]  # e.g. rollout.lr -> optim.lr
    hint = _suggest(key, keys, f"{parent}.") or (f"; did you mean {elsewhere[0]!r}?" if elsewhere else "")
    raise ConfigError(f"{where}: unknown key {dotted!r}{hint} ({parent} keys: {', '.join(keys)})")


def flatten(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """`{"rollout": {"vllm": {"mode": "server"}}, "seed": 1}` -> `[("rollout.vllm.mode", "server"), ("seed", 1)]`."""
    out: list[tuple[str, Any]] = []
    for name, value in values.items():
        if isinstance(value, Mapping):
            out += flatten(value, f"{prefix}{name}.")
        else:
            out.append((prefix + name, value))
    return out


def from_pairs(pairs: Iterable[tuple[str, Any]]) -> Config:
    """A validated `Config` from `(dotted key, value)` pairs under the current names, applied in order (later wins;
    missing keys take their defaults). The keys must be known (`lookup`)."""
    tree: dict[str, Any] = {}
    for dotted, value in pairs:
        *path, key = dotted.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
    return Config(**tree)


def from_dict(values: Mapping[str, Any]) -> Config:
    """A validated `Config` from `{section: {key: value, subsection: {...}}, "seed": ...}` (missing keys take their
    defaults). Former keys (`{"algorithm": {"name": "sfpo"}}`) are read as their new ones, with one warning each."""
    pairs = flatten(values)
    for dotted, _ in pairs:
        if not is_former(dotted):
            lookup(dotted, "config")
    return from_pairs(normalize(pairs))
