"""The names fastslow's algorithms take, as `Literal` types and tuples: torch-free, so a trainer's config offers
exactly these choices without importing the algorithms (`trainer.config.algorithm` does)."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["FILTER_PRESETS", "KL_MODES", "FilterPreset", "KlMode"]

KlMode = Literal["fixed", "batch_accuracy", "group_accuracy"]
"""`KLController`'s modes: a fixed coefficient, or one from the batch's or each group's accuracy."""
KL_MODES: tuple[str, ...] = get_args(KlMode)

FilterPreset = Literal["slow2fast", "dapo"]
"""`FilterSchedule.preset`'s names: FAST-GRPO's Slow2Fast curriculum, DAPO's drop of all-right/all-wrong groups."""
FILTER_PRESETS: tuple[str, ...] = get_args(FilterPreset)
