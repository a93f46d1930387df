"""The old-log-prob pass skipped when it is redundant (issue 28): `old_logp=None` in the loss kernels, and the step
that uses it when the batch is trained on once from the weights that sampled it.

With `old_logp=None` each chunk's own log-probs stand for the old ones: the ratio is exactly 1 and its gradient that
of `exp(logp - logp.detach())`. Loss, gradients and metrics equal those of the full path (a separate log-prob pass
fed in as `old_logp`) to float32 rounding, on every backend; a whole trainer step too.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _tolerance import PAIR
from conftest import DEVICE
from test_linear_grpo import make, run
from torch.distributed.tensor import DTensor

from fastslow.kernels import LOSS_AGGS, grpo_loss, linear_grpo_loss, linear_grpo_loss_ref, token_logprobs
from fastslow.kernels._dispatch import force_backend
from fastslow.kernels.grpo import grpo_loss_ref
from trainer.config import from_dict
from trainer.step import skips_old_logprobs


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
@pytest.mark.parametrize("chunk_tokens", [5, None], ids=["sub-row", "default"])
def test_on_policy_loss_equals_the_full_path(backend, loss_agg, chunk_tokens):
    hidden, weight, targets, _, ref, adv, mask, beta = make(3, 11, 16, 97)
    kw = dict(
        ref_logp=ref, kl_coef=beta, clip_low=0.2, clip_high=0.28, dual_clip=3.0, loss_agg=loss_agg,
        temperature=0.9, entropy_coef=0.01, chunk_tokens=chunk_tokens,
    )  # fmt: skip
    with torch.no_grad():  # the separate pass the skip saves
        old = token_logprobs(hidden, weight, targets, temperature=0.9)[0]
    skipped = run(linear_grpo_loss, hidden, weight, targets, None, adv, mask, **kw)
    full = run(linear_grpo_loss, hidden, weight, targets, old, adv, mask, **kw)
    torch.testing.assert_close(skipped[0], full[0], **PAIR["reorder"])
    assert set(skipped[1]) == set(full[1])
    for name in skipped[1]:
        torch.testing.assert_close(skipped[1][name], full[1][name], **PAIR["reorder"])
    torch.testing.assert_close(skipped[2], full[2], **PAIR["reorder_grad"])
    torch.testing.assert_close(skipped[3], full[3], **PAIR["reorder_grad"])
    assert skipped[1]["ratio"].item() == 1.0 and skipped[1]["clip_frac"].item() == 0.0
    eager = run(linear_grpo_loss_ref, hidden, weight, targets, None, adv, mask, eager=True, **kw)
    torch.testing.assert_close(skipped[0], eager[0], **PAIR["reorder"])
    torch.testing.assert_close(skipped[2], eager[2], **PAIR["reorder_grad"])


def test_grpo_loss_on_policy_is_old_equal_to_logp(backend):
    torch.manual_seed(0)
    logp = (torch.randn(4, 9, device=DEVICE) - 2).requires_grad_()
    adv, mask = torch.randn(4, device=DEVICE), torch.rand(4, 9, device=DEVICE) > 0.3
    a_loss, a_m = grpo_loss(logp, None, adv, mask, clip_high=0.28)
    (ga,) = torch.autograd.grad(a_loss, logp)
    b_loss, b_m = grpo_loss(logp, logp.detach(), adv, mask, clip_high=0.28)
    (gb,) = torch.autograd.grad(b_loss, logp)
    assert torch.equal(a_loss, b_loss) and torch.equal(ga, gb) and all(torch.equal(a_m[k], b_m[k]) for k in a_m)
    r_loss, _ = grpo_loss_ref(logp.double(), None, adv.double(), mask, clip_high=0.28)
    torch.testing.assert_close(a_loss.double(), r_loss, **PAIR["reorder"])


def _local(p: torch.Tensor) -> torch.Tensor:
    """A parameter's local values: its shard under FSDP2, itself on one unsharded rank."""
    return p.to_local() if isinstance(p, DTensor) else p


def _first_step(cfg, info, *, noisy: bool = False) -> tuple[dict[str, float], list[torch.Tensor]]:
    """Step 0 of a trainer on `cfg` (torch kernels): its metrics and the updated parameters' local values;
    `noisy`: the engine's log-probs moved (`_noisy`)."""
    from trainer.step import train_step
    from trainer.trainer import Trainer

    trainer = Trainer(cfg, info)
    try:
        if noisy:
            trainer.ctx.engine.generate = _noisy(trainer.ctx.engine.generate)
        with force_backend("torch"):
            metrics = train_step(trainer.ctx, 0).metrics
        return metrics, [_local(p).detach().clone() for p in trainer.policy.parameters()]
    finally:
        trainer.close()


def _cfg(**optim) -> SimpleNamespace:
    o = SimpleNamespace(**{"skip_old_logprobs": True, "epochs": 1, "minibatches": 1, **optim})
    return SimpleNamespace(optim=o, rollout=SimpleNamespace(is_correction=False))


def test_the_pass_is_skipped_only_when_redundant() -> None:
    assert skips_old_logprobs(_cfg(), sfpo_on=False)
    assert not skips_old_logprobs(_cfg(), sfpo_on=True)  # K inner steps move the weights before the slow one
    assert not skips_old_logprobs(_cfg(epochs=2), sfpo_on=False)
    assert not skips_old_logprobs(_cfg(minibatches=2), sfpo_on=False)
    assert not skips_old_logprobs(_cfg(skip_old_logprobs=False), sfpo_on=False)
    with_is = _cfg()
    with_is.rollout.is_correction = True  # the proximal log-probs come from the update's forward then
    assert skips_old_logprobs(with_is, sfpo_on=False)


@pytest.mark.slow
def test_a_trainer_step_is_the_same_either_way(one_rank, tmp_path: Path) -> None:
    metrics, params = {}, {}
    for skip in (True, False):
        cfg = from_dict({
            "optim": {"skip_old_logprobs": skip},
            "warm_start": {"steps": 30, "cache": str(tmp_path / "warm_start")},  # a signal for the reward
            "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 6},
            "algorithm": {"kl_coef": 0.01},
            "logging": {"run_dir": str(tmp_path / str(skip)), "tensorboard": False},
        })  # fmt: skip
        metrics[skip], params[skip] = _first_step(cfg, one_rank)
    on, full = metrics[True], metrics[False]
    assert on["actor/old_logp_pass"] == 0.0 and full["actor/old_logp_pass"] == 1.0
    assert on["actor/ratio"] == 1.0 and full["actor/grad_norm"] > 0
    for key in ("reward", "actor/pg_loss", "actor/kl", "actor/ratio", "actor/clip_frac", "entropy", "actor/grad_norm"):
        assert on[key] == pytest.approx(full[key], rel=1e-5, abs=1e-6), key
    for a, b in zip(params[True], params[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _noisy(generate):
    """The engine's `generate` with its log-probs moved by up to +-1 (seeded): importance weights past the bounds."""
    gen = torch.Generator().manual_seed(7)

    def wrapped(prompts, sampling):
        out = generate(prompts, sampling)
        for group in out:
            for c in group:
                noise = (torch.rand(len(c.logprobs), generator=gen) - 0.5) * 2.0
                c.logprobs = [x + float(d) for x, d in zip(c.logprobs, noise, strict=True)]
        return out

    return wrapped


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "packing"), [("token_truncate", True), ("sequence_mask", False), ("icepop", True)])
def test_a_correction_from_the_forward_equals_the_pass(one_rank, tmp_path: Path, mode: str, packing: bool) -> None:
    """`rollout.is_correction` with one optimizer step: the importance weights taken from the update's own forward
    (no old-log-prob pass, `trainer.offpolicy.ForwardCorrection`) give the step the pass gives, weights, metrics and
    parameters alike, packed and padded, with engine log-probs far enough off that the bounds act."""
    metrics, params = {}, {}
    bounds = {"sequence_mask": [0.9, 1.1]}.get(mode)
    for skip in (True, False):
        cfg = from_dict({
            "optim": {"skip_old_logprobs": skip, "packing": packing},
            "warm_start": {"steps": 30, "cache": str(tmp_path / "warm_start")},
            "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 6, "is_correction": mode,
                        **({"is_bounds": bounds} if bounds else {})},
            "logging": {"run_dir": str(tmp_path / f"{skip}"), "tensorboard": False},
        })  # fmt: skip
        metrics[skip], params[skip] = _first_step(cfg, one_rank, noisy=True)
    forward, full = metrics[True], metrics[False]
    assert forward["actor/old_logp_pass"] == 0.0 and full["actor/old_logp_pass"] == 1.0
    assert full["rollout/is_capped"] > 0  # the bounds acted: the weights are not all 1
    keys = ("rollout/is_weight", "rollout/is_weight_max", "rollout/is_capped", "rollout/is_masked",
            "rollout/mismatch_kl", "actor/pg_loss", "entropy", "actor/grad_norm")  # fmt: skip
    for key in keys:
        assert forward[key] == pytest.approx(full[key], rel=1e-5, abs=1e-6), key
    for a, b in zip(params[True], params[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
