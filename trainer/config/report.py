"""The `[logging]` section: what a run writes and shows (run folder, console, TensorBoard, wandb, plots)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

from trainer.config.base import _Section

__all__ = ["LoggingConfig", "wandb_missing"]


def wandb_missing() -> str | None:
    """Why `logging.wandb = true` cannot work here (wandb not importable), or None: the config's check, before any
    model is built (`trainer.wandb_log` logs to it)."""
    try:
        found = importlib.util.find_spec("wandb") is not None
    except (ImportError, ValueError):  # a broken install, or a stand-in module without a spec
        found = False
    if found:
        return None
    return "wandb is not installed: pip install 'fastslow[wandb]' (or pip install wandb), or set logging.wandb = false"


@dataclass
class LoggingConfig(_Section):
    """Where a run writes, and what it shows."""

    SECTION = "logging"
    run_dir: str = ""
    """The run folder (metrics, checkpoints, export, plots, resolved config); "" -> runs/<recipe>-<UTC time>, the
    recipe `algorithm.label` (grpo, sfpo, fast_grpo, fast_sfpo)."""
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
            self._require(wandb_missing() is None, "wandb", wandb_missing() or "")
            self._require(bool(self.wandb_project), "wandb_project", "must not be empty")
