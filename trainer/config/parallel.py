"""The `[parallel]` config section: the device mesh (FSDP or HSDP) and the process group's timeout."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config.base import _Section

MIN_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 1_000_000.0
"""`parallel.timeout_s` bounds: ~11.5 days fits the collectives' 32-bit millisecond timeout (24.8 days)."""


@dataclass
class ParallelConfig(_Section):
    """How the ranks split the model (`trainer.dist`): FSDP over all of them (the default), or HSDP across nodes."""

    SECTION = "parallel"
    replicate: int = 1
    """Replica groups (HSDP's outer mesh dimension, e.g. the number of nodes): the model is sharded within a group
    and replicated across groups. 1: plain FSDP, sharded over every rank. The number of processes: every rank a
    full replica (no mixed precision or CPU offload: the plain module, gradients all-reduced once per optimizer
    step, as DDP; the fastest layout for a model that fits a rank several times over, `trainer.dist`)."""
    shard: int = 0
    """Ranks per replica group (the inner dimension, e.g. GPUs per node); 0: world size / `replicate`. Checked at
    start: `replicate * shard` must equal the number of processes."""
    timeout_s: float = 1800.0
    """Timeout of every collective (the process group's): how long a rank waits for the others (a slow rank 0 load,
    a long rollout on another node) before the run fails. torch's default is 600 s."""

    def validate(self) -> None:
        self._at_least(1, "replicate")
        self._at_least(0, "shard")
        self._require(
            MIN_TIMEOUT_S <= self.timeout_s <= MAX_TIMEOUT_S,
            "timeout_s",
            f"must be in [{MIN_TIMEOUT_S:g}, {MAX_TIMEOUT_S:g}] seconds (torch keeps the timeout as a 32-bit count of "
            "milliseconds; below that the group times out while forming)",
        )
