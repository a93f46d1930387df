"""Resuming with a changed config: which keys may change, and the one line that says what did.

A resumed run continues the weights, optimizer and trainer state of the run that wrote the checkpoint, so some
settings cannot change without making that state meaningless or relabelling the run: the model's shape and source,
the algorithm, the data source (the data position is an offset into its order), the prompts per step (the position
counts whole steps) and the seed; and the data file's usable prompts must be as many as when the checkpoint was
written (`data_problem`). Changing one of them
is an error naming each. Everything else (learning rate, total steps, logging, evaluation, the filter, ...) may
change; the changes are listed in one line, so the run's log says where it departs from its saved config.

The saved config is the run folder's `config.toml`, which the Trainer writes only once a run has started (a failed
start or resume leaves it untouched). One written with former key names (`rollout.vllm_mode`, `algorithm.name`) is
read under the new ones (`trainer.config.aliases.rename_saved`), so it compares like with like.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import tomllib

from trainer.config import Config, ConfigError
from trainer.config.aliases import rename_saved

FROZEN = (
    "model.path", "model.config", "model.preset", "model.hidden_size", "model.num_layers", "model.num_heads",
    "model.num_kv_heads", "model.intermediate_size", "algorithm.update", "algorithm.reward_shaping", "data.source",
    "seed", "rollout.prompts_per_step",
)  # fmt: skip
"""Keys a resumed run must keep (the checkpoint's state depends on them)."""

IGNORED = ("checkpoint.resume", "logging.overwrite", "logging.run_dir")
"""Keys that say how this start runs, not what the run is: never reported."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"optim": {"lr": 1e-4}, "seed": 0}` -> `{"optim.lr": 1e-4, "seed": 0}`; None values left out (as in TOML)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif value is not None:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return a == b or (math.isnan(a) and math.isnan(float(b)))
    return a == b


def saved_config_path(checkpoint: Path) -> Path:
    """The `config.toml` of the run a checkpoint belongs to: `<run>/checkpoints/step_N` -> `<run>/config.toml`."""
    return Path(checkpoint).parent.parent / "config.toml"


def compare(cfg: Config, saved_file: Path) -> list[str]:
    """The keys that changed since `saved_file`, as `"key old -> new"`; raises `ConfigError` naming the frozen ones.

    A key the saved file lacks (an option added since it was written) or no longer known is not compared. A missing
    or unreadable file compares nothing (a run written before config.toml existed) and returns `[]`.
    """
    try:
        saved = rename_saved(flatten(tomllib.loads(Path(saved_file).read_text(encoding="utf-8"))))
    except (OSError, tomllib.TOMLDecodeError):
        return []
    now = flatten(cfg.to_dict())
    changed = {
        k: (saved.get(k), v) for k, v in now.items() if k in saved and k not in IGNORED and not _same(saved[k], v)
    }
    changed.update({k: (saved[k], None) for k in saved if k not in now and k in FROZEN})  # e.g. model.path dropped
    frozen = [k for k in FROZEN if k in changed]
    if frozen:
        parts = ", ".join(f"{k} = {_show(changed[k][0])} -> {_show(changed[k][1])}" for k in frozen)
        raise ConfigError(
            f"--resume: {parts}: the checkpoint's state depends on {'it' if len(frozen) == 1 else 'them'} (saved in "
            f"{saved_file}); keep the saved value{'s' if len(frozen) > 1 else ''}, or start a new run in another folder"
        )
    return [f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in changed.items()]


def _show(value: Any) -> str:
    return "unset" if value is None else repr(value)


def data_problem(checkpoint: Path, n_items: int, source: str) -> str | None:
    """Why the data position saved in `checkpoint` cannot continue on a dataset of `n_items` usable prompts (the
    file changed: rows added or removed), as one line; None when it can, or when the state does not say."""
    import torch

    from trainer.checkpoint import trainer_state_file

    path = trainer_state_file(Path(checkpoint), 0)
    try:
        saved = int(torch.load(path, weights_only=True)["sampler"]["n_items"])  # type: ignore[index]
    except Exception:  # an older state without the count, or one the checkpoint check reports itself
        return None
    if saved == n_items:
        return None
    return (
        f"--resume: data.source = {source!r} holds {n_items} usable prompts now, {saved} when {checkpoint} was "
        "written (the file changed): the saved data position means nothing in another order; restore the file, "
        "or start a new run in another folder"
    )
