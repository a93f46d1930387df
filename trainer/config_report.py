"""The config sections about what a run reports: `[logging]` (run folder, console, TensorBoard, wandb, plots) and
`[eval]` (the held-out evaluation). Part of the tree in `trainer.config`, which imports and re-exports them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

from trainer.config_base import ConfigError, _Section
from trainer.data_formats import DATA_SUFFIXES, SUFFIX_TEXT
from trainer.tasks import NAMES as BUILTIN_TASKS
from trainer.tasks import is_builtin as is_builtin_task

BUILTIN_TEXT = ", ".join(repr(t) for t in BUILTIN_TASKS)

__all__ = ["EVAL_SUFFIXES", "EvalConfig", "LoggingConfig", "eval_source_name"]


@dataclass
class LoggingConfig(_Section):
    """Where a run writes, and what it shows."""

    SECTION = "logging"
    run_dir: str = ""
    """The run folder (metrics, checkpoints, export, plots, resolved config); "" -> runs/<algorithm>-<UTC time>."""
    console_every: int = 1
    """Print a progress line every this many steps."""
    tensorboard: bool = True
    """Write TensorBoard scalars too (only when tensorboard is installed)."""
    overwrite: bool = False
    """A fresh run (no resume) into a `run_dir` that already holds a run: false stops with a one-line error (use
    `--resume auto` to continue it, or another folder); true deletes that run's metrics, config, checkpoints, export
    and plots first."""
    plots: bool = True
    """Draw `plots/` from metrics.jsonl when the run ends (rank 0, as `python -m trainer.plot RUN_DIR` does); needs
    matplotlib: without it, one line says so and the run ends as it would. A failed plot never fails a run."""
    wandb: bool = False
    """Also log every metrics row (training and evaluation) to Weights & Biases (`pip install .[wandb]`)."""
    wandb_project: str = "fastslow"
    """The wandb project."""
    wandb_name: str = ""
    """The wandb run's name; "": the run folder's name."""
    wandb_mode: Literal["online", "offline", "disabled"] = "online"
    """"offline": no network; the wandb files stay under `run_dir/wandb/` (`wandb sync` uploads them later)."""

    def validate(self) -> None:
        self._at_least(1, "console_every")
        if self.wandb:
            from trainer.wandb_log import wandb_missing

            self._require(wandb_missing() is None, "wandb", wandb_missing() or "")
            self._require(bool(self.wandb_project), "wandb_project", "must not be empty")


EVAL_SUFFIXES = DATA_SUFFIXES
"""File types an `eval.source` entry may name (besides "synthetic"): the same as `data.source`."""


def eval_source_name(entry: str) -> str:
    """How an `eval.source` entry is reported: "synthetic", or the file's stem (`data/math500.jsonl` -> `math500`)."""
    return entry if is_builtin_task(entry) else PurePath(entry.replace("\\", "/")).stem


@dataclass
class EvalConfig(_Section):
    """Held-out evaluation (`trainer.eval`): before training, every `every` steps and at the end, on the rollout
    engine with the weights just synced; also standalone (`python -m trainer.eval MODEL`)."""

    SECTION = "eval"
    enabled: bool = True
    """Evaluate during training (false: never; `python -m trainer.eval` ignores this)."""
    source: str = "synthetic"
    """What to evaluate on: a built-in task ("synthetic", "chain": its held-out split, disjoint from its training
    prompts), or
    .jsonl / .json / .parquet / .pq files, given as a TOML list (`["a.jsonl", "b.parquet"]`) or one string with commas
    (`eval.source=a.jsonl,b.parquet`); each is reported under its file stem (`eval/math500/...`). A relative path
    is taken from the working directory when it is there, else from the repository root (so the presets'
    `../shared/data/math500.jsonl` is found from any folder). Same columns and scorer as the training files."""
    before_train: bool = True
    """Evaluate once before the first step (after the first weight sync); a resumed run does not repeat it."""
    every: int = 10
    """Evaluate every this many steps (0: only before training and at the end); always at the end."""
    synthetic_size: int = 128
    """Prompts of the synthetic held-out split."""
    max_prompts: int = 0
    """Evaluate the first N usable prompts of each source only (0: all of them)."""
    n: int = 4
    """Samples per prompt (avg@n, pass@k for k = 1, 2, 4, ... <= n, maj@n)."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy; the n samples are then the same)."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    max_new_tokens: int = 0
    """Response length cap in tokens (0: rollout.max_new_tokens)."""
    max_prompt_tokens: int = 0
    """Longer prompts (after the chat template) are skipped and counted (`skipped_prompts`); 0:
    data.max_prompt_tokens."""
    prompt_key: str = ""
    """Column holding the prompt text in the files ("": data.prompt_key)."""
    answer_key: str = ""
    """Column holding the reference answer in the files ("": data.answer_key)."""
    difficulty_key: str = "level"
    """Optional column with a difficulty (MATH-500's `level`, 1-5; the synthetic task's `level`): metrics are also
    reported per value, `eval/<source>/level_<d>/...`. Rows without it are left out of that split; "": none."""
    batch_size: int = 16
    """Prompts per `generate` call. Prompts are cut into blocks of this size, dealt round-robin to the ranks, each
    block sampled with its own seed: the numbers depend on it (and on the seed and step), not on the number of
    ranks. Larger is faster on vLLM."""

    def __post_init__(self) -> None:
        if isinstance(self.source, (list, tuple)):  # a TOML list of paths: kept as one comma-separated string
            if not all(isinstance(s, str) for s in self.source):
                raise ConfigError(f"eval.source = {self.source!r}: expected a string or a list of strings")
            self.source = ",".join(s.strip() for s in self.source)
        super().__post_init__()

    @property
    def sources(self) -> list[str]:
        """The `source` entries: "synthetic" and file paths, in order."""
        return [s.strip() for s in self.source.split(",") if s.strip()]

    def validate(self) -> None:
        sources = self.sources
        self._require(bool(sources), "source", f"must be a built-in task ({BUILTIN_TEXT}) or {SUFFIX_TEXT} paths")
        for s in sources:
            ok = is_builtin_task(s) or s.lower().endswith(EVAL_SUFFIXES)
            self._require(ok, "source", f"{s!r} is neither a built-in task ({BUILTIN_TEXT}) nor a {SUFFIX_TEXT} file")
        names = [eval_source_name(s) for s in sources]
        for name in names:
            self._require(names.count(name) == 1, "source", f"two entries report as {name!r} (stems must differ)")
        self._at_least(0, "every", "max_prompts", "max_new_tokens", "max_prompt_tokens", "temperature")
        self._at_least(1, "synthetic_size", "n", "batch_size")
        self._require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
