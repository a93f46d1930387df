"""What a training step did (`trainer.step.train_step`'s result): the flags the Trainer steers by, and the metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepResult:
    """What a step did, for the Trainer to steer by (the same on every rank), and its metrics, for logging only.

    `skipped`: the filter ran dry with `on_filter_exhausted = "skip"`: no update, no sync. `dry`: the filter ran
    dry (`rollout/dry`). `diverged`: after the update a parameter is non-finite or above `optim.max_param_abs`.
    `updates_skipped`: optimizer steps skipped for a non-finite gradient norm (all of them: a bad step).
    """

    metrics: dict[str, float]
    skipped: bool = False
    dry: bool = False
    diverged: bool = False
    updates_skipped: int = 0

    @classmethod
    def of(cls, metrics: dict[str, float]) -> StepResult:
        """Read the flags from the step's reduced metrics (the one place that knows their keys)."""
        return cls(
            metrics=metrics,
            skipped=metrics.get("rollout/skipped", 0.0) > 0,
            dry=metrics.get("rollout/dry", 0.0) > 0,
            diverged=metrics.get("actor/diverged", 0.0) > 0,
            updates_skipped=int(metrics.get("actor/skipped_updates", 0.0)),
        )
