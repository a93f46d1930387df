"""`LossSettings`: checked once when made, taken by both GRPO losses, and the same as the knobs given one by one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastslow.kernels import LossSettings, grpo_loss, grpo_loss_ref, linear_grpo_loss, linear_grpo_loss_ref

KNOBS = {"clip_low": 0.1, "clip_high": 0.3, "dual_clip": 2.5, "loss_agg": "seq-mean-token-mean"}


def _inputs(B: int = 3, T: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(B, T, generator=g) - 0.1
    return {
        "logp": logp,
        "old_logp": logp + 0.3 * torch.randn(B, T, generator=g),
        "advantages": torch.randn(B, generator=g),
        "mask": torch.rand(B, T, generator=g) > 0.3,
        "ref_logp": logp + 0.1,
    }


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"clip_low": 1.0}, "clip_low must be in (0, 1)"),
        ({"clip_high": 0.0}, "clip_high must be > 0"),
        ({"dual_clip": 1.0}, "dual_clip must be > 1"),
        ({"loss_agg": "mean"}, "loss_agg must be one of"),
        ({"entropy_coef": float("nan")}, "entropy_coef must be finite"),
        ({"kl_estimator": "k9"}, "kl_estimator must be one of ('k3',)"),
    ],
)
def test_bad_settings_are_named_when_made(knobs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LossSettings(**knobs)


def test_settings_are_frozen_floats() -> None:
    s = LossSettings(clip_low=torch.tensor(0.1), dual_clip=3)
    assert s.clip_low == pytest.approx(0.1) and isinstance(s.clip_low, float)
    assert s.dual_clip == 3.0 and isinstance(s.dual_clip, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.clip_low = 0.3  # type: ignore[misc]


@pytest.mark.parametrize("loss", [grpo_loss, grpo_loss_ref])
def test_settings_equal_the_knobs_one_by_one(backend: str, loss) -> None:
    x = _inputs()
    args = (x["logp"], x["old_logp"], x["advantages"], x["mask"])
    one_by_one, m1 = loss(*args, ref_logp=x["ref_logp"], kl_coef=0.05, **KNOBS)
    settings, m2 = loss(*args, ref_logp=x["ref_logp"], kl_coef=0.05, settings=LossSettings(**KNOBS))
    assert torch.equal(one_by_one, settings)
    assert all(torch.equal(m1[k], m2[k]) for k in m1)


@pytest.mark.parametrize("eager", [False, True])
def test_linear_loss_takes_settings(eager: bool) -> None:
    B, T, H, V = 2, 5, 8, 30
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(B, T, H, generator=g), torch.randn(V, H, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    old, adv, mask = -torch.rand(B, T, generator=g) - 3.0, torch.randn(B, generator=g), torch.ones(B, T, dtype=bool)
    knobs = {**KNOBS, "entropy_coef": 0.01}
    fused = linear_grpo_loss(hidden, weight, targets, old, adv, mask, settings=LossSettings(**knobs))[0]
    assert torch.equal(fused, linear_grpo_loss(hidden, weight, targets, old, adv, mask, **knobs)[0])
    ref = linear_grpo_loss_ref(hidden, weight, targets, old, adv, mask, settings=LossSettings(**knobs), eager=eager)
    torch.testing.assert_close(ref[0], fused, rtol=1e-5, atol=1e-6)


def test_settings_and_knobs_together_or_unknown() -> None:
    x = _inputs()
    args = (x["logp"], x["old_logp"], x["advantages"], x["mask"])
    with pytest.raises(ValueError, match="not both: got settings and clip_high, dual_clip"):
        grpo_loss(*args, settings=LossSettings(), dual_clip=3.0, clip_high=0.3)
    with pytest.raises(ValueError, match="settings must be a LossSettings, got dict"):
        grpo_loss(*args, settings={"clip_low": 0.1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clip_hgih"):
        grpo_loss(*args, clip_hgih=0.3)


def test_grpo_loss_refuses_an_entropy_bonus_it_cannot_compute() -> None:
    x = _inputs()
    with pytest.raises(ValueError, match="grpo_loss has no entropy term"):
        grpo_loss(x["logp"], x["old_logp"], x["advantages"], x["mask"], settings=LossSettings(entropy_coef=0.01))
