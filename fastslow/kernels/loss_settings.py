"""The GRPO loss's settings: one frozen value, checked once, that `grpo_loss` and `linear_grpo_loss` take.

What a run fixes once lives here (the clip range, the dual clip, the aggregation, the entropy bonus, the KL
estimator); what changes from call to call stays a loss function's own argument (the tensors, `kl_coef`, and the
micro-batch's `num_tokens`, `norm_len` and `seq_ids`). The fused ops take these fields as flat scalars, as a
`torch.library` schema requires (`dual_clip` 0.0 when off): `GRPOTerms` carries them there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from fastslow.kernels._checks import check_finite_number
from fastslow.kernels.kl import KL_ESTIMATORS, KLEstimator

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
LOSS_AGGS: tuple[str, ...] = get_args(LossAgg)


@dataclass(frozen=True)
class LossSettings:
    """The GRPO loss's fixed knobs (formulas: `fastslow.kernels.grpo_loss`). Each bad field is a ValueError naming
    it, raised when the settings are made; numbers are stored as floats."""

    clip_low: float = 0.2
    """The ratio's clip below: `ratio >= 1 - clip_low`, in (0, 1)."""
    clip_high: float = 0.2
    """The ratio's clip above: `ratio <= 1 + clip_high`, > 0 (clip-higher when it exceeds `clip_low`)."""
    dual_clip: float | None = None
    """`c > 1`: the dual clip `pg <= -A * c` where the advantage `A < 0`; None: off."""
    loss_agg: LossAgg = "token-mean"
    """"token-mean", "seq-mean-token-mean" or "seq-mean-token-sum-norm" (Dr. GRPO): how token losses become one."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus, aggregated as the loss (`linear_grpo_loss`; `grpo_loss` has no entropies)."""
    kl_estimator: KLEstimator = "k3"
    """The per-token KL estimator to the reference model, one of `fastslow.kernels.kl.KL_ESTIMATORS`."""

    def __post_init__(self) -> None:
        number = lambda name: object.__setattr__(self, name, check_finite_number(name, getattr(self, name)))
        for name in ("clip_low", "clip_high", "entropy_coef"):
            number(name)
        if self.clip_low <= 0 or self.clip_low >= 1:
            raise ValueError(f"clip_low must be in (0, 1), got {self.clip_low}")
        if self.clip_high <= 0:
            raise ValueError(f"clip_high must be > 0, got {self.clip_high}")
        if self.dual_clip is not None:
            number("dual_clip")
            if self.dual_clip <= 1.0:
                raise ValueError(f"dual_clip must be > 1 (or None to disable), got {self.dual_clip}")
        if self.loss_agg not in LOSS_AGGS:
            raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {self.loss_agg!r}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")


def settings_of(settings: LossSettings | None, knobs: dict[str, Any]) -> LossSettings:
    """`settings`, or the settings made of `knobs`: `LossSettings`' fields given one by one, as keywords of the loss
    functions (how they were called before `settings`). Both at once is a ValueError; an unknown knob a TypeError."""
    if settings is None:
        return LossSettings(**knobs)
    if not isinstance(settings, LossSettings):
        raise ValueError(f"settings must be a LossSettings, got {type(settings).__name__}")
    if knobs:
        given = ", ".join(sorted(knobs))
        raise ValueError(f"the loss settings come in settings= or one by one, not both: got settings and {given}")
    return settings
