"""Off-policy corrections (trainer/offpolicy.py): every mode against float64 hand cases, the decoupled PPO form of
the objective, NaN handling, the metrics, and the config that picks them."""

from __future__ import annotations

import math

import pytest
import torch

from fastslow.kernels.grpo import grpo_loss_ref
from trainer.config import ConfigError, from_dict
from trainer.offpolicy import ANCHOR_BOUNDS, bounds_for, correction_on, correction_weights

E = math.exp
# proximal (trainer) and behaviour (engine) log-probs; log rho = prox - behav per token:
#   row 0: [ln 3, -ln 4, 0.5, (pad)]   row 1: [0.1, -0.1, 0.05, 0.02]   row 2: [2.0, (pad) x3]
PROX = (
    torch.tensor(
        [[math.log(3.0), -math.log(4.0), 0.5, 9.0], [0.1, -0.1, 0.05, 0.02], [2.0, 0.0, 0.0, 0.0]], dtype=torch.float64
    )
    - 1.0
)
BEHAV = torch.full_like(PROX, -1.0)
MASK = torch.tensor([[True, True, True, False], [True, True, True, True], [True, False, False, False]])
RHO = [[3.0, 0.25, E(0.5)], [E(0.1), E(-0.1), E(0.05), E(0.02)], [E(2.0)]]


def _weights(mode: str, low: float, high: float) -> tuple[list[list[float]], dict[str, float]]:
    w, m = correction_weights(PROX, BEHAV, MASK, mode, low, high)
    assert w.dtype == torch.float32 and (w[~MASK] == 1).all()  # padding keeps weight 1 (its advantage is unused)
    return [w[i][MASK[i]].double().tolist() for i in range(3)], m


def _close(got: list[list[float]], want: list[list[float]]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=1e-6, abs=1e-7)


def test_token_truncate(group_of_one) -> None:
    got, m = _weights("token_truncate", 0.5, 2.0)
    _close(got, [[2.0, 0.5, E(0.5)], [E(0.1), E(-0.1), E(0.05), E(0.02)], [2.0]])
    assert m["rollout/is_capped"] == pytest.approx(3 / 8)  # 3.0 and e^2 truncated, 0.25 raised
    assert m["rollout/is_masked"] == 0.0
    assert m["rollout/is_weight_max"] == pytest.approx(2.0)


def test_token_mask_keeps_rho_inside_and_zeroes_outside(group_of_one) -> None:
    got, m = _weights("token_mask", 0.0, 2.0)
    _close(got, [[0.0, 0.25, E(0.5)], [E(0.1), E(-0.1), E(0.05), E(0.02)], [0.0]])
    assert m["rollout/is_masked"] == pytest.approx(2 / 8) and m["rollout/is_capped"] == pytest.approx(2 / 8)


def test_icepop_is_two_sided(group_of_one) -> None:
    got, m = _weights("icepop", 0.5, 5.0)
    _close(got, [[3.0, 0.0, E(0.5)], [E(0.1), E(-0.1), E(0.05), E(0.02)], [0.0]])  # e^2 = 7.39 > 5, 0.25 < 0.5
    assert m["rollout/is_masked"] == pytest.approx(2 / 8)


def test_sequence_mask_uses_the_geometric_mean(group_of_one) -> None:
    # geometric means: row 0 exp((ln 3 - ln 4 + 0.5) / 3) = 1.0720; row 1 exp(0.07 / 4) = 1.0177; row 2 e^2
    got, m = _weights("sequence_mask", 0.9, 1.05)
    _close(got, [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0]])
    assert m["rollout/is_masked"] == pytest.approx(4 / 8)
    got, _ = _weights("sequence_mask", 0.9, 1.1)
    _close(got, [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0]])


def test_metrics_hand_computed(group_of_one) -> None:
    _, m = _weights("token_truncate", 0.0, 100.0)
    rhos = [r for row in RHO for r in row]
    logs = [math.log(r) for r in rhos]
    assert m["rollout/is_weight"] == pytest.approx(sum(rhos) / 8)
    assert m["rollout/mismatch_kl"] == pytest.approx(sum(r - 1 - math.log(r) for r in rhos) / 8)
    assert m["rollout/logp_abs_diff"] == pytest.approx(sum(abs(x) for x in logs) / 8)
    assert m["rollout/is_weight_max"] == pytest.approx(E(2.0)) and m["rollout/is_nonfinite"] == 0.0


def test_identical_policies_give_weight_one_everywhere(group_of_one) -> None:
    for mode, (low, high) in ANCHOR_BOUNDS.items():
        w, m = correction_weights(BEHAV, BEHAV, MASK, mode, low, high)
        assert (w == 1).all(), mode
        assert m["rollout/mismatch_kl"] == 0.0 and m["rollout/is_capped"] == 0.0


@pytest.mark.parametrize("mode", list(ANCHOR_BOUNDS))
def test_a_non_finite_token_gets_weight_zero_and_is_counted(group_of_one, mode: str) -> None:
    behav = BEHAV.clone()
    behav[1, 0] = math.nan
    behav[1, 1] = -math.inf
    low, high = ANCHOR_BOUNDS[mode]
    w, m = correction_weights(PROX, behav, MASK, mode, low, high)
    assert torch.isfinite(w).all() and w[1, 0] == 0 and w[1, 1] == 0
    assert m["rollout/is_nonfinite"] == pytest.approx(2 / 8)
    assert all(math.isfinite(v) for v in m.values())


def test_decoupled_form_clip_against_proximal_weight_against_behaviour(group_of_one) -> None:
    """The objective in float64 by hand: token loss -w * min(r A, clip(r, 1-e, 1+e) A), r = exp(logp - proximal),
    w from rho = exp(proximal - behaviour); the step's `adv * w` through the GRPO loss is the same number."""
    torch.manual_seed(0)
    logp = PROX + 0.3 * torch.randn_like(PROX)
    adv = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    w, _ = correction_weights(PROX, BEHAV, MASK, "token_truncate", 0.0, 2.0)
    per_token_adv = adv[:, None] * w.double()
    loss, _ = grpo_loss_ref(logp, PROX, per_token_adv, MASK, clip_low=0.2, clip_high=0.2, loss_agg="token-mean")
    hand, count = 0.0, 0
    for i in range(3):
        for t in range(4):
            if not MASK[i, t]:
                continue
            r = math.exp(logp[i, t].item() - PROX[i, t].item())
            weight = min(math.exp(PROX[i, t].item() - BEHAV[i, t].item()), 2.0)
            a = adv[i].item()
            hand += -weight * min(r * a, min(max(r, 0.8), 1.2) * a)
            count += 1
    assert loss.item() == pytest.approx(hand / count, rel=1e-6)  # the weights are float32


def test_config_picks_the_mode_and_its_anchor_bounds() -> None:
    assert from_dict({}).rollout.is_correction == "off" and not correction_on(from_dict({}).rollout)
    legacy = from_dict({"rollout": {"is_correction": True}}).rollout
    assert legacy.is_correction == "token_truncate" and correction_on(legacy)
    assert from_dict({"rollout": {"is_correction": False}}).rollout.is_correction == "off"
    assert bounds_for("token_truncate", None, 2.0) == (0.0, 2.0)
    assert bounds_for("token_truncate", None, 3.0) == (0.0, 3.0)  # the former is_cap
    assert bounds_for("icepop", None, 2.0) == (0.5, 5.0)
    assert bounds_for("sequence_mask", None) == (0.999, 1.001)
    assert bounds_for("icepop", (0.2, 9.0)) == (0.2, 9.0)
    cfg = from_dict({"rollout": {"is_correction": "icepop", "is_bounds": [0.4, 4.0]}}).rollout
    assert cfg.is_bounds == (0.4, 4.0)
    with pytest.raises(ConfigError, match="is_bounds"):
        from_dict({"rollout": {"is_correction": "icepop", "is_bounds": [3.0, 1.0]}})
    with pytest.raises(ConfigError, match="is_correction"):
        from_dict({"rollout": {"is_correction": "tokn_mask"}})
