"""Off-policy corrections: per-token weights for samples drawn by another policy than the one the trainer scores.

The gap between the behaviour policy (the engine that sampled, with its numerics and possibly older weights) and the
trainer's proximal policy (its own log-probs of the same tokens before the update, the old-log-prob pass) is
corrected in the decoupled PPO form (Hilton et al. 2021, as verl's rollout correction and AReaL do it): the PPO ratio
and its clip are taken against the proximal log-probs, and the importance weight `rho = exp(proximal - behaviour)`
multiplies each token's clipped surrogate. As `rho >= 0`, weighting the surrogate equals weighting the token's
advantage, which is how the step applies it (`adv[:, None] * weights`).

`rollout.is_correction` picks the mode, `rollout.is_bounds` its [low, high] (unset: the anchor's default below):

- "token_truncate" (TIS): `clamp(rho, low, high)`. Default [0, 2]: verl's token-level TIS preset
  (`rollout_is_threshold: 2.0`).
- "token_mask" (MIS): `rho` where `low <= rho <= high`, else 0. Default [0, 2]: masked IS as in the mismatch study
  (Liu, Li et al. 2025), one-sided, at verl's 2.0.
- "icepop": the same formula, two-sided. Default [0.5, 5]: IcePop (Ring-1T).
- "sequence_mask": 1 for every token of a sequence whose geometric-mean ratio `exp(mean_t log rho_t)` is inside
  [low, high], else 0. Default [0.999, 1.001]: verl's geometric rejection preset (`geo_rs`).

"token_mask" and "icepop" share their formula and differ in their bounds (one-sided vs two-sided). A token whose
`rho` is not finite (a NaN or inf log-prob on either side) gets weight 0 in every mode and is counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from trainer.dist import all_reduce

if TYPE_CHECKING:
    from trainer.packing import Row

ANCHOR_BOUNDS: dict[str, tuple[float, float]] = {
    "token_truncate": (0.0, 2.0),
    "token_mask": (0.0, 2.0),
    "icepop": (0.5, 5.0),
    "sequence_mask": (0.999, 1.001),
}
"""Each mode's [low, high] when `rollout.is_bounds` is unset (see the module docstring for where they come from)."""


def correction_on(rollout: object) -> bool:
    """Whether `rollout.is_correction` asks for a correction (a mode other than "off"; a bool from older code)."""
    mode = getattr(rollout, "is_correction", "off")
    return mode not in ("off", "false", False, None)


def bounds_for(mode: str, bounds: tuple[float, float] | None, cap: float | None = None) -> tuple[float, float]:
    """The [low, high] in force: `bounds` when given, else the mode's anchor default; `cap` (the former
    `rollout.is_cap`) replaces the upper bound of "token_truncate" when `bounds` is unset."""
    if bounds is not None:
        return float(bounds[0]), float(bounds[1])
    low, high = ANCHOR_BOUNDS[mode]
    if mode == "token_truncate" and cap is not None:
        high = float(cap)
    return low, high


def _local(
    proximal_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, mode: str, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's part of `correction_weights`: float64 `(weights, changed, finite, log_rho, rho)`, all `[B, T]`."""
    if mode not in ANCHOR_BOUNDS:
        raise ValueError(f"correction_weights: mode {mode!r}; expected one of {', '.join(ANCHOR_BOUNDS)}")
    if not low <= high:
        raise ValueError(f"correction_weights: bounds [{low}, {high}]: low must be <= high")
    log_rho = proximal_logp.double() - behaviour_logp.double()
    finite = torch.isfinite(log_rho) & mask
    log_rho = torch.where(finite, log_rho, torch.zeros_like(log_rho))
    rho = torch.exp(log_rho)
    if mode == "token_truncate":
        weights = rho.clamp(min=low, max=high)
        changed = (rho < low) | (rho > high)
    elif mode in ("token_mask", "icepop"):
        keep = (rho >= low) & (rho <= high)
        weights = torch.where(keep, rho, torch.zeros_like(rho))
        changed = ~keep
    else:  # sequence_mask: the geometric mean of each sequence's ratios decides for all of its tokens
        count = finite.sum(-1).clamp(min=1)
        geo = torch.exp((log_rho * finite).sum(-1) / count)  # [B]
        keep_row = (geo >= low) & (geo <= high)
        weights = keep_row[:, None].to(rho.dtype).expand_as(rho).clone()
        changed = ~keep_row[:, None].expand_as(rho)
    weights = torch.where(finite, weights, torch.zeros_like(weights))
    changed = (changed & finite) | (mask & ~finite)
    return weights, changed, finite, log_rho, rho


def token_weights(
    proximal_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, mode: str, low: float, high: float
) -> torch.Tensor:
    """`correction_weights`' weights alone (float32 `[B, T]`, 1 outside the mask), with no collective: for some
    sequences of the batch at a time (`ForwardCorrection`)."""
    weights = _local(proximal_logp, behaviour_logp, mask, mode, low, high)[0]
    return weights.to(torch.float32).masked_fill(~mask, 1.0)


def correction_weights(
    proximal_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    low: float,
    high: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token weights for the decoupled PPO objective, and their metrics over all ranks' response tokens.

    Args: `proximal_logp`, `behaviour_logp` `[B, T]` (the trainer's and the engine's log-probs of the sampled
    tokens), `mask` `[B, T]` bool (response tokens), `mode` one of `trainer.rollout.config.IS_MODES` other than
    "off", `low <= high`.
    Returns the weights `[B, T]` (float32, 1 outside the mask) and:
    "rollout/is_weight" (mean weight), "rollout/is_weight_max", "rollout/is_capped" (tokens whose weight the bounds
    changed: truncated or masked), "rollout/is_masked" (tokens at weight 0), "rollout/is_nonfinite",
    "rollout/mismatch_kl" (the k3 estimate of KL(behaviour || proximal) per token, `rho - 1 - log rho`, over the
    finite tokens) and "rollout/logp_abs_diff" (mean |proximal - behaviour|, finite tokens).
    """
    weights, changed, finite, log_rho, rho = _local(proximal_logp, behaviour_logp, mask, mode, low, high)
    m, f = mask.double(), finite.double()
    k3 = (rho - 1.0 - log_rho) * f
    local_max = (weights * m).amax() if mask.any() else weights.new_zeros(())
    sums = torch.stack([
        (weights * m).sum(), (changed.double() * m).sum(), ((weights == 0).double() * m).sum(),
        (m - f).sum(), k3.sum(), (log_rho.abs() * f).sum(), f.sum(), m.sum(),
    ])  # fmt: skip
    w_sum, changed_n, zero_n, bad_n, k3_sum, abs_sum, finite_n, count = all_reduce(sums).tolist()
    peak = float(all_reduce(local_max.reshape(1).clone(), "max").item())
    count, finite_n = max(count, 1.0), max(finite_n, 1.0)
    out = weights.to(torch.float32).masked_fill(~mask, 1.0)
    return out, {
        "rollout/is_weight": w_sum / count,
        "rollout/is_weight_max": peak,
        "rollout/is_capped": changed_n / count,
        "rollout/is_masked": zero_n / count,
        "rollout/is_nonfinite": bad_n / count,
        "rollout/mismatch_kl": k3_sum / finite_n,
        "rollout/logp_abs_diff": abs_sum / finite_n,
    }


class ForwardCorrection:
    """The correction with the proximal log-probs taken in the update's own forward passes, not a pass before it.

    When the batch gets one optimizer step (one epoch, one minibatch, no SFPO inner steps), the proximal policy is
    the weights the update starts from, so each micro-batch's own log-probs are the proximal ones: the clip ratio is
    exactly 1 (the kernels' `old_logp=None`) and the importance weights come from the micro-batch's log-probs,
    computed without a gradient from the hidden states the loss uses (`trainer.policy.Policy.loss`'s
    `advantages_of`). Whatever the staleness, this saves the old-log-prob pass; the weights and metrics equal the
    pass's to float32 rounding (tests/test_on_policy.py).

    `behaviour_logp`, `mask` `[B, T]` (the engine's log-probs, response tokens); `advantages` `[B]` or `[B, T]`.
    """

    def __init__(
        self,
        mode: str,
        low: float,
        high: float,
        behaviour_logp: torch.Tensor,
        mask: torch.Tensor,
        advantages: torch.Tensor,
    ) -> None:
        self.mode, self.low, self.high = mode, low, high
        self.behaviour, self.mask = behaviour_logp, mask
        self.base = (advantages[:, None] if advantages.dim() == 1 else advantages).expand_as(mask).float()
        self.proximal = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # filled row by row
        self.weighted = self.base.clone()

    def advantages_of(self, row: Row) -> Callable[[torch.Tensor], torch.Tensor]:
        """The hook for `row` (a `trainer.packing` micro-batch): its log-probs in, its weighted advantages out."""

        def weigh(logp: torch.Tensor) -> torch.Tensor:
            row.scatter(self.proximal, logp)
            idx = row.batch_indices
            w = token_weights(self.proximal[idx], self.behaviour[idx], self.mask[idx], self.mode, self.low, self.high)
            self.weighted[idx] = self.base[idx] * w
            return row.gather(self.weighted)

        return weigh

    def metrics(self) -> dict[str, float]:
        """`correction_weights`' metrics over the whole batch (every rank; call once every row has been through)."""
        return correction_weights(self.proximal, self.behaviour, self.mask, self.mode, self.low, self.high)[1]
