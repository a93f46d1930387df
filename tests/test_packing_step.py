"""One whole trainer step with `optim.packing` on and off, from the same seed: the same loss and gradient norm."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastslow.kernels._dispatch import force_backend
from trainer.config import from_dict


def test_packed_step_matches_padded(one_rank, tmp_path: Path) -> None:
    from trainer.step import train_step
    from trainer.trainer import Trainer

    metrics = {}
    for packing in (False, True):
        cfg = from_dict({
            "warm_start": {"mode": "off"},
            "eval": {"enabled": False},
            "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 12},
            # the entropy bonus gives random weights a gradient (all answers wrong: zero advantages)
            "algorithm": {"kl_coef": 0.01, "entropy_coef": 0.01},
            "optim": {"packing": packing, "micro_batch_tokens": 40, "micro_batch_size": 3},
            "checkpoint": {"export_hf": False},
            "logging": {"run_dir": str(tmp_path / str(packing)), "tensorboard": False},
        })  # fmt: skip
        trainer = Trainer(cfg, one_rank)
        try:
            with force_backend("torch"):  # the kernels' CPU path, not Triton's interpreter
                metrics[packing] = train_step(trainer.ctx, 0).metrics
        finally:
            trainer.close()
    padded, packed = metrics[False], metrics[True]
    assert padded["actor/grad_norm"] > 0
    assert packed["batch/padding_frac"] < padded["batch/padding_frac"]
    assert packed["batch/rows"] < padded["batch/rows"]
    for key in ("reward", "response_length", "actor/pg_loss", "actor/kl", "actor/ratio", "entropy", "actor/grad_norm"):
        assert packed[key] == pytest.approx(padded[key], rel=1e-5, abs=1e-7), key
