"""An off-policy correction mode wired through a trainer step (the modes themselves: tests/test_offpolicy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import ConfigError, from_dict


def _first_step(info, tmp_path: Path, rollout: dict, **sections: dict) -> dict[str, float]:
    """The metrics of step 0 of a small built-in job (hf engine, torch kernels) with these `rollout` keys."""
    from fastslow.kernels._dispatch import force_backend
    from trainer.step import train_step
    from trainer.trainer import Trainer

    cfg = from_dict({
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 6, **rollout},
        "warm_start": {"steps": 30, "cache": str(tmp_path / "warm_start")},
        "logging": {"run_dir": str(tmp_path / "run"), "tensorboard": False},
        **sections,
    })  # fmt: skip
    trainer = Trainer(cfg, info)
    try:
        with force_backend("torch"):
            return train_step(trainer.ctx, 0).metrics
    finally:
        trainer.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["token_mask", "sequence_mask"])
def test_a_trainer_step_applies_the_mode(one_rank, tmp_path, mode: str) -> None:
    """Wired through the step: the engine is asked for log-probs, the proximal log-probs come from the update's own
    forward (one optimizer step: no old-log-prob pass), and the metrics come out (the hf engine agrees with the
    trainer to ~1e-7 on CPU: every weight is 1, nothing is masked). Against the pass: tests/test_on_policy.py."""
    m = _first_step(one_rank, tmp_path, {"is_correction": mode})
    assert m["actor/old_logp_pass"] == 0.0
    assert m["rollout/is_weight"] == pytest.approx(1.0, abs=1e-4) and m["rollout/is_masked"] == 0.0
    assert m["rollout/mismatch_kl"] < 1e-6 and m["rollout/logp_abs_diff"] < 1e-4


@pytest.mark.slow
def test_bypass_takes_the_engines_logprobs_as_the_old_ones(one_rank, tmp_path) -> None:
    """`rollout.is_form = "bypass"`: no old-log-prob pass, the ratio is taken against the engine's log-probs (which
    the hf engine gives to ~1e-7 of the trainer's on CPU, so the ratio is ~1); with a correction mode it is refused."""
    with pytest.raises(ConfigError, match="is_form"):
        from_dict({"rollout": {"is_form": "bypass", "is_correction": "icepop"}})
    # the pass would run in the decoupled form
    m = _first_step(one_rank, tmp_path, {"is_form": "bypass"}, optim={"skip_old_logprobs": False})
    assert m["actor/old_logp_pass"] == 0.0
    assert m["actor/ratio"] == pytest.approx(1.0, abs=1e-4) and m["actor/grad_norm"] > 0
