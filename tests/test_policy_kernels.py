"""`model.kernels`: the reference policy (eager full logits) computes what the fused one does, end to end.

On a tiny Qwen2: the same log-probs and entropies, the same loss, metrics and parameter gradients under every
loss aggregation (each backend of the fused kernels); a whole trainer step with `model.kernels = "reference"`
gives the fused run's metrics; a bad value is a config error naming the key.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from _tiny import tiny_lm
from _tolerance import assert_close
from conftest import DEVICE

from fastslow.kernels import IGNORE_INDEX, LOSS_AGGS, LossSettings
from fastslow.kernels._dispatch import force_backend
from trainer.config import ConfigError, from_dict, load_config
from trainer.objective import LossArgs
from trainer.policy import KERNELS, Policy

VOCAB = 40  # tests/_tiny.py


def make_batch(B: int = 3, L: int = 12, prompt: int = 4) -> dict[str, torch.Tensor]:
    """Right-padded sequences of random lengths: ids [B, L], attention mask [B, L], targets and mask [B, L - 1]."""
    lengths = torch.tensor([L, L - 3, prompt + 2])[:B]
    ids_BL = torch.randint(4, VOCAB, (B, L))
    attention_BL = (torch.arange(L)[None, :] < lengths[:, None]).long()
    ids_BL = ids_BL * attention_BL  # pad id 0
    targets_BT = torch.full((B, L - 1), IGNORE_INDEX)
    for i, n in enumerate(lengths.tolist()):
        targets_BT[i, prompt - 1 : n - 1] = ids_BL[i, prompt:n]
    to = lambda t: t.to(DEVICE)
    return {
        "input_ids": to(ids_BL),
        "attention_mask": to(attention_BL),
        "targets": to(targets_BT),
        "mask": to(targets_BT != IGNORE_INDEX),
    }


def policies() -> dict[str, Policy]:
    """The same weights under each kernel choice (float32)."""
    return {k: Policy(tiny_lm(seed=2), kernels=k).to(DEVICE) for k in KERNELS}


def test_logprobs_agree(backend: str) -> None:
    batch = make_batch()
    out = {}
    with torch.no_grad():
        for name, policy in policies().items():
            out[name] = policy(batch["input_ids"], batch["attention_mask"], batch["targets"], temperature=0.9)
    (logp_f, ent_f), (logp_r, ent_r) = out["fused"], out["reference"]
    assert logp_f.dtype == logp_r.dtype == torch.float32
    assert logp_f.shape == logp_r.shape == batch["targets"].shape
    # both float32 from the same float32 logits, summed in different orders: the float32 row of the table
    assert_close(logp_f, logp_r, torch.float32, "value")
    assert_close(ent_f, ent_r, torch.float32, "value")
    assert (logp_r[~batch["mask"]] == 0).all() and (logp_r[batch["mask"]] < 0).all()


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_loss_and_gradients_agree(backend: str, loss_agg: str) -> None:
    batch = make_batch()
    B = batch["targets"].shape[0]
    with torch.no_grad():
        logp, _ = Policy(tiny_lm(seed=2)).to(DEVICE)(batch["input_ids"], batch["attention_mask"], batch["targets"])
    loss_args = LossArgs(
        old_logp=logp + 0.1 * torch.randn_like(logp), ref_logp=logp + 0.1 * torch.randn_like(logp),
        advantages=torch.randn(B, device=DEVICE), mask=batch["mask"], kl_coef=torch.rand(B, device=DEVICE) * 0.05,
        settings=LossSettings(clip_low=0.2, clip_high=0.28, dual_clip=3.0, loss_agg=loss_agg, entropy_coef=0.01),
    )  # fmt: skip
    results = {}
    for name, policy in policies().items():
        loss, metrics = policy.loss(
            batch["input_ids"], batch["attention_mask"], batch["targets"], loss_args, temperature=0.9
        )
        (loss * 1.7).backward()
        grads = {n: p.grad for n, p in policy.named_parameters()}
        results[name] = loss.detach(), metrics, grads
    (loss_f, metrics_f, grads_f), (loss_r, metrics_r, grads_r) = results["fused"], results["reference"]
    assert_close(loss_f, loss_r, torch.float32, "value")
    assert set(metrics_f) == set(metrics_r)
    for key in metrics_f:
        assert_close(metrics_f[key].float(), metrics_r[key].float(), torch.float32, "value")
    assert grads_f.keys() == grads_r.keys()
    for name in grads_f:
        assert grads_f[name] is not None and grads_r[name] is not None, name
        assert_close(grads_f[name], grads_r[name], torch.float32, "grad")


def test_bad_kernels_value() -> None:
    with pytest.raises(ConfigError, match=re.escape("model.kernels = 'triton': expected one of 'fused', 'reference'")):
        load_config(["model.kernels=triton"])
    with pytest.raises(ConfigError, match=re.escape("model.kernels = 'refrence'")):
        from_dict({"model": {"kernels": "refrence"}})
    with pytest.raises(ValueError, match="kernels = 'eager'"):
        Policy(tiny_lm(), kernels="eager")  # type: ignore[arg-type]
    assert load_config(["model.kernels=reference"]).model.kernels == "reference"
    assert load_config([]).model.kernels == "fused"


@pytest.mark.slow
def test_reference_trainer_step_matches_fused(one_rank, tmp_path: Path) -> None:
    """One whole step (rollout, log-probs of policy and reference model, update) under each choice: same metrics."""
    from trainer.step import train_step
    from trainer.trainer import Trainer

    metrics = {}
    for kernels in KERNELS:
        cfg = from_dict({
            "model": {"kernels": kernels},
            "warm_start": {"steps": 30, "cache": str(tmp_path / "warm_start")},  # a signal for the reward
            "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 6},
            "algorithm": {"kl_coef": 0.01},
            "logging": {"run_dir": str(tmp_path / kernels), "tensorboard": False},
        })  # fmt: skip
        trainer = Trainer(cfg, one_rank)
        try:
            assert trainer.policy.kernels == kernels and trainer.ref is not None and trainer.ref.kernels == kernels
            with force_backend("torch"):  # the fused path's CPU implementation, not Triton's interpreter
                metrics[kernels] = train_step(trainer.ctx, 0).metrics
        finally:
            trainer.close()
    fused, reference = metrics["fused"], metrics["reference"]
    assert fused["actor/grad_norm"] > 0
    for key in ("reward", "response_length", "actor/pg_loss", "actor/kl", "actor/ratio", "entropy", "actor/grad_norm"):
        assert reference[key] == pytest.approx(fused[key], rel=1e-4, abs=1e-6), key
