"""Entry point: `torchrun --nproc_per_node=N -m trainer.main [--config FILE.toml] [key=value ...]`.

The trainer itself is not built yet (its own issue). Until then this says what the command will run and exits
with status 3, so `make run` fails loudly instead of pretending to train.
"""

from __future__ import annotations

import sys

PLANNED = (
    "fastslow trainer: not built yet.\n"
    "When it lands, `make run` will run `torchrun --standalone --nproc_per_node=1 -m trainer.main`, i.e. the\n"
    "built-in job: a tiny causal LM built from a config, GRPO on a synthetic verifiable task, on this machine's\n"
    "devices (CPU included), writing metrics and checkpoints under runs/.\n"
    "What works today: the kernels (`from kernels import grpo_loss, low_var_kl, reposition_, snapshot`)."
)


def main(argv: list[str] | None = None) -> int:
    """Print the plan and return a non-zero status (the trainer does not exist yet)."""
    del argv
    print(PLANNED, file=sys.stderr)
    return 3


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
