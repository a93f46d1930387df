"""The `[checkpoint]` section: sharded checkpoints, resuming, the Hugging Face export.

Here, not beside `trainer.checkpoint`, because that package imports torch at module level and loading a config
must not.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config.base import _Section

__all__ = ["CheckpointConfig"]


@dataclass
class CheckpointConfig(_Section):
    """Sharded checkpoints of model, optimizer and trainer state; the Hugging Face export."""

    SECTION = "checkpoint"
    every: int = 0
    """Save every this many steps (0: only at the end)."""
    keep: int = 2
    """Complete checkpoints kept (older ones are deleted)."""
    resume: str = "none"
    """"none", "auto" (the latest complete checkpoint of the run folder), or a checkpoint folder."""
    export_hf: bool = True
    """At the end, write a Hugging Face folder (safetensors, config, tokenizer) to <run_dir>/hf."""

    def validate(self) -> None:
        self._at_least(0, "every")
        self._at_least(1, "keep")
        self._require(bool(self.resume.strip()), "resume", "must be 'none', 'auto' or a checkpoint folder")
