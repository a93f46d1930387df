"""A learning run's held-out curve from its run folder: accuracy (and length) by rollouts and wall-clock
(`bench.learning_claims` scores the curves; `bench.learning_study` runs the trainer; this file only reads).

Rollouts count the responses a run generated for training, filter refills included: per step
`rollout/chunks * rollout.prompts_per_step * rollout.group_size` (all ranks). Wall-clock is the sum of the steps'
`time/step` (the evaluations themselves are not counted). An evaluation row at step k sees the rollouts and seconds
of steps 1..k; the one before training sees 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.plot import read_metrics

__all__ = ["Curve", "curve", "first_reach"]


@dataclass(frozen=True)
class Curve:
    """One run's held-out curve, one entry per evaluation, in step order."""

    steps: list[int]
    rollouts: list[float]
    wall_s: list[float]
    accuracy: list[float]
    length: list[float | None]


def _avg_key(records: list[dict], source: str) -> str:
    prefix = f"eval/{source}/avg@"
    keys = sorted({k for r in records for k in r if k.startswith(prefix) and k.count("/") == 2})
    if not keys:
        raise ValueError(f"no eval/{source}/avg@n in the run's metrics (was eval on, with that source?)")
    return keys[0]


def curve(
    run_dir: Path, *, source: str, prompts_per_step: int, group_size: int, records: list[dict] | None = None
) -> Curve:
    """The held-out curve of `run_dir` (its metrics.jsonl, or its `records` when already read), for eval source
    `source`."""
    records = read_metrics(Path(run_dir) / "metrics.jsonl") if records is None else records
    key = _avg_key(records, source)
    steps, rollouts, wall, acc, length = [], [], [], [], []
    done_rollouts = done_wall = 0.0
    for rec in records:
        if "time/step" in rec:  # a training step: count it before this step's evaluation
            done_rollouts += float(rec.get("rollout/chunks", 1.0)) * prompts_per_step * group_size
            done_wall += float(rec["time/step"])
        if key in rec:
            steps.append(int(rec["step"]))
            rollouts.append(done_rollouts)
            wall.append(done_wall)
            acc.append(float(rec[key]))
            value = rec.get(f"eval/{source}/length")
            length.append(None if value is None else float(value))
    return Curve(steps, rollouts, wall, acc, length)


def first_reach(c: Curve, target: float) -> tuple[float | None, float | None]:
    """`(rollouts, seconds)` at the first evaluation whose accuracy is >= `target`; `(None, None)` if none is."""
    for r, w, a in zip(c.rollouts, c.wall_s, c.accuracy):
        if a >= target - 1e-12:
            return r, w
    return None, None
