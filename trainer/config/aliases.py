"""Former config keys: each old name, what it is now, and the one warning line that says so.

`RENAMED` maps every flat key that became a nested one (`rollout.vllm_mode` -> `rollout.vllm.mode`); the former
`algorithm.name` expands to the switches (`NAMES`) and, for the FAST names, to FAST-GRPO's paper defaults
(`FAST_DEFAULTS`) for the keys the config does not set, as it did. The loader (`trainer.config.io`) and `from_dict`
read old keys through `normalize`, which warns once per key; a saved run's config (`trainer.checkpoint.resume`) goes
through `rename_saved`, silently, so resuming a run written with the old names compares like with like.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

from trainer.config.base import ConfigError, _coerce, warn

__all__ = [
    "FAST_DEFAULTS",
    "NAME",
    "NAMES",
    "RENAMED",
    "AlgorithmName",
    "is_former",
    "normalize",
    "recipe_overrides",
    "rename_saved",
]

RENAMED: dict[str, str] = {
    **{f"rollout.vllm_{k}": f"rollout.vllm.{k}" for k in (
        "mode", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "sleep_level", "enforce_eager",
        "weight_transfer", "server_url", "server_workers", "nccl_address", "nccl_port", "timeout_s",
    )},
    **{f"algorithm.sfpo_{k}": f"algorithm.sfpo.{k}" for k in (
        "inner_steps", "alpha", "entropy_window", "entropy_threshold", "stop_step",
    )},
    **{f"algorithm.{k}": f"reward.thinking.{k}" for k in (
        "length_weight", "format_weight", "percentile", "length_unit", "brevity_cap",
    )},
}  # fmt: skip
"""Old flat key -> its new key."""

NAME = "algorithm.name"
"""The former algorithm choice, now the switches `algorithm.update` and `algorithm.reward_shaping`."""
AlgorithmName = Literal["grpo", "fast_grpo", "sfpo", "fast_sfpo"]
NAMES: dict[str, dict[str, str]] = {
    "grpo": {"algorithm.update": "grpo", "algorithm.reward_shaping": "none"},
    "fast_grpo": {"algorithm.update": "grpo", "algorithm.reward_shaping": "thinking"},
    "sfpo": {"algorithm.update": "sfpo", "algorithm.reward_shaping": "none"},
    "fast_sfpo": {"algorithm.update": "sfpo", "algorithm.reward_shaping": "thinking"},
}
"""`algorithm.name` value -> the switches it stands for (the presets `sfpo.toml`, `fast_grpo.toml`, `fast_sfpo.toml`
hold the same, FAST's defaults written out)."""
FAST_DEFAULTS: dict[str, Any] = {
    "algorithm.kl_type": "group_accuracy",
    "algorithm.kl_coef": 0.01,
    "algorithm.filter": "slow2fast",
}
"""What `algorithm.name = "fast_grpo"` / `"fast_sfpo"` also brought: FAST-GRPO's per-group KL and Slow2Fast filter,
applied to the keys the config does not set (in the file or on the command line)."""


def is_former(key: str) -> bool:
    """Whether `key` is a former name (`RENAMED`, or `algorithm.name`)."""
    return key in RENAMED or key == NAME


def _message(old: str) -> str:
    if old == NAME:
        new = "'algorithm.update' and 'algorithm.reward_shaping' (or a preset: --config sfpo, fast_grpo, fast_sfpo)"
    else:
        new = repr(RENAMED[old])
    return f"config key {old!r} is deprecated; use {new}"


def normalize(pairs: Iterable[tuple[str, Any]], *, note: Callable[[str], None] | None = warn) -> list[tuple[str, Any]]:
    """`(dotted key, value)` pairs, in the order they apply, with every old key replaced by its new one(s); one
    `note` line per old key met (None: silent). `algorithm.name = X` becomes X's switches where it stands; the last
    one, when a FAST name, adds `FAST_DEFAULTS` for the keys no pair sets."""
    out: list[tuple[str, Any]] = []
    noted: set[str] = set()
    last_name: str | None = None
    for key, value in pairs:
        if key == NAME:
            last_name = _coerce(NAME, value, AlgorithmName)
            out += NAMES[last_name].items()
        else:
            out.append((RENAMED.get(key, key), value))
        if is_former(key) and key not in noted:
            noted.add(key)
            if note is not None:
                note(_message(key))
    if last_name is not None and last_name.startswith("fast_"):
        given = {key for key, _ in out}
        out += [(k, v) for k, v in FAST_DEFAULTS.items() if k not in given]
    return out


def recipe_overrides(name: str) -> list[str]:
    """What `algorithm.name=name` set, as command-line overrides under the new keys: its switches, then FAST's
    defaults for a FAST name, set outright (an override of one of them must come after these)."""
    pairs = normalize([(NAME, name)], note=None)
    return [f"{key}={value}" for key, value in pairs]


def rename_saved(flat: dict[str, Any]) -> dict[str, Any]:
    """A saved (resolved) config's `{dotted key: value}` under the new names, silently: every key is there already,
    so `algorithm.name` needs only its switches (no FAST defaults are missing)."""
    try:
        return dict(normalize(flat.items(), note=None))
    except ConfigError:  # an algorithm.name this version never had: left for the comparison to skip
        return {RENAMED.get(k, k): v for k, v in flat.items() if k != NAME}
