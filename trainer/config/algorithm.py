"""The `[algorithm]` section and its `[algorithm.sfpo]` table: the RL recipe as orthogonal switches, and their knobs.

The switches: `update` (the update rule: GRPO, or SFPO's fast steps, reposition and slow correction),
`reward_shaping` (none, or FAST-GRPO's thinking reward, set in `[reward.thinking]`), `filter` (the online group
filter) and `kl_type` / `kl_coef` (the KL to the reference). FAST-GRPO, SFPO and FAST+SFPO are preset files
(`--config fast_grpo`, `sfpo`, `fast_sfpo`); the former `algorithm.name` expands to the same (`trainer.config.aliases`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fastslow.choices import FilterPreset, KlMode
from trainer.config.base import ConfigError, _Section

__all__ = ["AlgorithmConfig", "SfpoConfig"]


@dataclass
class SfpoConfig(_Section):
    """SFPO (arXiv 2510.04072; `algorithm.update = "sfpo"`): K fast updates, a reposition, one slow correction, and
    the entropy switch that falls back to GRPO for good."""

    SECTION = "algorithm.sfpo"
    inner_steps: int = 3
    """K fast updates before the reposition (0: plain GRPO)."""
    alpha: float = 0.8
    """Reposition step size alpha in [0, 1] (0: the weights return to the slow point, but the optimizer state keeps
    the K fast updates: plain GRPO only with K = 0)."""
    entropy_window: int = 30
    """Entropy switch: W, the number of recent step entropies the z-score looks at (>= 2)."""
    entropy_threshold: float = 1.0
    """Entropy switch: tau; once z >= tau, switch to plain GRPO for good."""
    stop_step: int | None = None
    """Run SFPO for at most the first N steps (steps 1..N; plain GRPO from step N + 1 on), regardless of entropy, as
    the seed's `stop_sfpo_step`; None: only the entropy switch ends it."""

    def validate(self) -> None:
        self._at_least(0, "inner_steps")
        self._require(0 <= self.alpha <= 1, "alpha", "must be in [0, 1]")
        self._at_least(2, "entropy_window")
        self._require(self.stop_step is None or self.stop_step >= 0, "stop_step", "must be >= 0")


@dataclass
class AlgorithmConfig(_Section):
    """The RL recipe: the update rule, the reward shaping, the filter, the KL, and the loss (formulas:
    docs/algorithms.md)."""

    SECTION = "algorithm"
    update: Literal["grpo", "sfpo"] = "grpo"
    """The update rule: "grpo" (PPO-clipped policy gradient on group advantages) or "sfpo" (SFPO's fast steps,
    reposition and slow correction on each batch, `[algorithm.sfpo]`)."""
    reward_shaping: Literal["none", "thinking"] = "none"
    """"none": the reward as scored (correctness, or `reward.function`); "thinking": FAST-GRPO's thinking reward,
    which adds a format term and a difficulty-aware length term (`[reward.thinking]`)."""
    std_normalize: bool = True
    """Divide group advantages by the group std (false: Dr. GRPO)."""
    clip_low: float = 0.2
    """PPO ratio clip below: ratio >= 1 - clip_low; in (0, 1)."""
    clip_high: float = 0.28
    """PPO ratio clip above: ratio <= 1 + clip_high (DAPO's clip-higher); > 0."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages, or None."""
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    """How per-token losses become one number (token-mean is global across micro-batches and ranks).
    "seq-mean-token-sum-norm" (Dr. GRPO) is `(1/B) * sum_i sum_t(l * m) / T`, as Liger-Kernel's `dr_grpo`; verl's
    mode of the same name does not divide by B (its loss, and so its gradient, is B times ours: scale the learning
    rate to compare). The kernels' `LOSS_AGGS` (a test keeps the two equal: the kernels import torch, which the
    config does not)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (0: off)."""
    kl_estimator: Literal["k3"] = "k3"
    """Per-token KL estimator to the reference model: "k3" (low-variance, `exp(d) - d - 1`). Its coefficient is
    `kl_type`'s. The kernels' `KL_ESTIMATORS` (a test keeps the two equal, as for `loss_agg`)."""
    kl_type: KlMode = "fixed"
    """KL coefficient: fixed `kl_coef`, or from batch / group accuracy between `kl_min` and `kl_max`."""
    kl_coef: float = 0.0
    """Fixed KL coefficient (low_var_kl to the frozen reference); 0 with kl_type fixed: no reference model."""
    kl_min: float = 0.001
    """Accuracy-based KL: coefficient of an all-correct group (beta_min)."""
    kl_max: float = 0.01
    """Accuracy-based KL: coefficient of an all-wrong group (beta_max)."""
    filter: Literal["none", FilterPreset, "custom"] = "none"
    """Online group filter with refill: none; dapo (drop all-right and all-wrong groups); slow2fast (FAST-GRPO's
    curriculum, as the seed's code does it: 0.3 < acc < 0.99 for the first half of total_steps, then 0.01..0.7);
    custom (the entries of `filter_schedule`)."""
    filter_schedule: str = ""
    """With filter = "custom": entries "until_ratio:low:high" separated by commas, e.g. "0.5:0.3:0.99,1.0:0.01:0.7"
    (the first entry whose until_ratio >= step / total_steps applies; groups kept iff low < accuracy < high)."""
    sfpo: SfpoConfig = field(default_factory=SfpoConfig)
    """SFPO's settings (`[algorithm.sfpo]`), read with `update = "sfpo"`."""

    @property
    def label(self) -> str:
        """The recipe's short name from its switches, as the former `algorithm.name` said it: "grpo", "sfpo",
        "fast_grpo" or "fast_sfpo" (run folders are `runs/<label>-<time>`)."""
        return ("fast_" if self.reward_shaping == "thinking" else "") + self.update

    def validate(self) -> None:
        self._require(0 < self.clip_low < 1, "clip_low", "must be in (0, 1)")
        self._require(self.clip_high > 0, "clip_high", "must be > 0")
        self._require(self.dual_clip is None or self.dual_clip > 1, "dual_clip", "must be > 1 (or none)")
        self._at_least(0, "kl_coef", "kl_min", "kl_max")
        self._require(self.kl_min <= self.kl_max, "kl_min", f"must be <= algorithm.kl_max ({self.kl_max})")
        if self.filter == "custom" or self.filter_schedule:
            self._require(self.filter == "custom", "filter_schedule", 'is used only with algorithm.filter = "custom"')
            try:
                self.schedule_entries()
            except ValueError as err:
                raise ConfigError(f"algorithm.filter_schedule = {self.filter_schedule!r}: {err}") from None

    def schedule_entries(self) -> list[tuple[float, float, float]]:
        """The custom schedule as `(until_ratio, low, high)` entries, checked by `fastslow.FilterSchedule`."""
        from fastslow import FilterSchedule

        try:
            entries = [tuple(float(x) for x in e.split(":")) for e in self.filter_schedule.split(",") if e.strip()]
        except ValueError:
            raise ValueError('expected entries "until_ratio:low:high" separated by commas') from None
        if not entries or any(len(e) != 3 for e in entries):
            raise ValueError('expected entries "until_ratio:low:high" separated by commas')
        FilterSchedule(entries)
        return entries
