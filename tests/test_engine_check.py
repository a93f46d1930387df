"""The stale-weights check (trainer/engine_check.py, `rollout.max_logp_diff`): its bound, its gap against float64
hand cases, and a trainer step that stops when the engine's weights were not synced.

The real engine's side (vLLM's log-probs after several updates, a skipped sync caught) is tests/test_vllm_cpu.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fastslow.kernels._dispatch import force_backend
from trainer.config import ConfigError, from_dict
from trainer.engine_check import AUTO_BOUND, StaleEngineError, check_engine, logp_bound, mean_logp_gap


def _rollout(engine: str, bound: float) -> SimpleNamespace:
    return SimpleNamespace(engine=engine, max_logp_diff=bound)


def test_the_bound_in_force() -> None:
    assert logp_bound(_rollout("vllm", -1), torch.float32) == AUTO_BOUND[torch.float32] == 1e-3
    assert logp_bound(_rollout("vllm", -1), torch.bfloat16) == AUTO_BOUND[torch.bfloat16]
    assert logp_bound(_rollout("vllm", -1), None) == 1e-3  # no wire dtype: the parameters' (fp32)
    assert logp_bound(_rollout("hf", -1), torch.float32) == 0.0  # auto: off for the in-process copy
    assert logp_bound(_rollout("vllm", 0), torch.float32) == 0.0  # off
    assert logp_bound(_rollout("hf", 0.25), torch.bfloat16) == 0.25  # explicit, any engine
    with pytest.raises(ConfigError, match="max_logp_diff"):
        from_dict({"rollout": {"max_logp_diff": -0.5}})


def test_gap_against_hand_cases(one_rank) -> None:
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, 7.0]], dtype=torch.float64)
    eng = torch.tensor([[-1.5, -2.0, -9.0], [-0.5, -0.75, -7.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    # |0.5| + 0 + 0 + |0.5| over 4 response tokens; the padded positions (6 and 14 apart) do not count
    assert mean_logp_gap(old, eng, mask) == 0.25
    assert mean_logp_gap(old.float(), eng.float(), mask) == 0.25
    assert mean_logp_gap(old, eng, torch.zeros_like(mask)) == 0.0
    eng_nan = eng.clone()
    eng_nan[0, 0] = math.nan
    gap = mean_logp_gap(old, eng_nan, mask)
    with pytest.raises(StaleEngineError):
        check_engine(gap, 1e-3)  # a NaN gap is never "within the bound"


def test_check_fires_above_the_bound_only() -> None:
    check_engine(1e-3, 1e-3)
    check_engine(5.0, 0.0)  # off
    with pytest.raises(StaleEngineError, match=r"differ from the trainer's by 0\.002 .*max_logp_diff = 0\.001"):
        check_engine(2e-3, 1e-3)
    with pytest.raises(StaleEngineError):
        check_engine(math.inf, 1e-3)


@pytest.mark.slow
def test_a_step_after_a_skipped_sync_stops(one_rank, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hf engine with the check on: a synced step passes with a ~1e-7 gap and keeps the old-log-prob pass; when
    the sync after an update is skipped, the next step's engine samples with the previous weights and stops."""
    from trainer import step as step_module
    from trainer.trainer import Trainer

    cfg = from_dict({
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 6, "max_logp_diff": 1e-4},
        "warm_start": {"steps": 30, "cache": str(tmp_path / "warm_start")},
        "optim": {"lr": 5e-3},
        "logging": {"run_dir": str(tmp_path / "run"), "tensorboard": False},
    })  # fmt: skip
    trainer = Trainer(cfg, one_rank)
    try:
        with force_backend("torch"):
            first = step_module.train_step(trainer.ctx, 0).metrics
            assert first["rollout/logp_abs_diff"] < 1e-5 and first["actor/old_logp_pass"] == 1.0
            skipped = {"bytes": 0.0, "seconds": 0.0, "buckets": 0.0}
            monkeypatch.setattr(step_module, "sync_policy", lambda ctx: skipped)  # the update is not synced
            step_module.train_step(trainer.ctx, 1)  # samples with the synced weights; its update is not synced
            with pytest.raises(StaleEngineError, match="other weights than the trainer's"):
                step_module.train_step(trainer.ctx, 2)
    finally:
        trainer.close()
