"""Weights & Biases as a second sink of the metrics rows: `logging.wandb = true` (`pip install .[wandb]`).

Every row the logger writes to metrics.jsonl (training and evaluation) is logged to the wandb run at its step,
with the same keys and values (`step`, `time` and `kind` are wandb's own axes, left out; a non-finite value, `null`
in the file, is left out too). `logging.wandb_mode = "offline"` needs no network: the run's files stay under
`run_dir/wandb/` (`wandb sync run_dir/wandb/offline-run-*` uploads them later). Each launch is a wandb run of its
own (a resumed run is a second one, named alike, whose steps go on from the checkpoint's).

`wandb_missing()` (the `[logging]` section's, re-exported) is what the config check says when wandb is asked for and
not installed, so that error comes before any model is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.config.report import wandb_missing

__all__ = ["WandbSink", "wandb_missing", "wandb_row"]

_AXES = ("step", "time", "kind")


def wandb_row(record: Mapping[str, Any]) -> dict[str, float | int]:
    """The metrics of one metrics.jsonl row as wandb takes them: numbers only, the axes left out."""
    return {k: v for k, v in record.items() if k not in _AXES and isinstance(v, (int, float))}


class WandbSink:
    """One wandb run: `log(record)` per metrics row, `close()` at the end (rank 0 only; the logger sees to it)."""

    def __init__(self, run_dir: Path, *, project: str, name: str, mode: str, config: Mapping[str, Any]) -> None:
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project, name=name or run_dir.name, mode=mode, dir=str(run_dir), config=dict(config)
        )

    def log(self, record: Mapping[str, Any]) -> None:
        self.run.log(wandb_row(record), step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()
