"""The `[algorithm]` section: GRPO / FAST-GRPO / SFPO and their settings, and what the FAST names imply.

Re-exported by `trainer.config`, whose `Config.resolved()` applies `FAST_DEFAULTS` to the keys not set explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from trainer.config_base import ConfigError, _Section

FAST_DEFAULTS: dict[str, Any] = {"kl_type": "group_accuracy", "kl_coef": 0.01, "filter": "slow2fast"}
"""`algorithm.*` values a FAST name (`fast_grpo`, `fast_sfpo`) implies, applied where not set explicitly."""


@dataclass
class AlgorithmConfig(_Section):
    """The RL objective: GRPO, FAST-GRPO, SFPO or FAST+SFPO, and their knobs (formulas: docs/algorithms.md)."""

    SECTION = "algorithm"
    name: Literal["grpo", "fast_grpo", "sfpo", "fast_sfpo"] = "grpo"
    """fast_*: thinking reward, and (unless set) group KL and Slow2Fast. *sfpo: SFPO updates."""
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
    rate to compare)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (0: off)."""
    kl_estimator: Literal["k3"] = "k3"
    """Per-token KL estimator to the reference model: "k3" (low-variance, `exp(d) - d - 1`). Its coefficient is
    `kl_type`'s."""
    kl_type: Literal["fixed", "batch_accuracy", "group_accuracy"] = "fixed"
    """KL coefficient: fixed `kl_coef`, or from batch / group accuracy between `kl_min` and `kl_max`."""
    kl_coef: float = 0.0
    """Fixed KL coefficient (low_var_kl to the frozen reference); 0 with kl_type fixed: no reference model."""
    kl_min: float = 0.001
    """Accuracy-based KL: coefficient of an all-correct group (beta_min)."""
    kl_max: float = 0.01
    """Accuracy-based KL: coefficient of an all-wrong group (beta_max)."""
    length_weight: float = 0.5
    """FAST thinking reward: weight of the length score."""
    format_weight: float = 0.5
    """FAST thinking reward: weight of the format score."""
    percentile: float = 80.0
    """FAST thinking reward: difficulty percentile above which a group is hard, in [0, 100]."""
    length_unit: Literal["tokens", "chars"] = "tokens"
    """FAST thinking reward: response length in tokens, or characters as the seed's code counts them (after
    removing the whitespace around `<`, `>` and `/`)."""
    brevity_cap: float = 0.8
    """FAST thinking reward: the seed's `punish_count`. Of the easy-and-correct responses of a generation chunk
    (all ranks' responses, rank 0's first, each rank's in prompt then sample order), only those met while
    `brevity_cap * N - (those already scored) > 0` get the brevity score `1 - len / L`; later ones get 0. 1.0 (or
    more) scores all of them (no cap); 0 none."""
    filter: Literal["none", "dapo", "slow2fast", "custom"] = "none"
    """Online group filter with refill: none; dapo (drop all-right and all-wrong groups); slow2fast (FAST-GRPO's
    curriculum, as the seed's code does it: 0.3 < acc < 0.99 for the first half of total_steps, then 0.01..0.7);
    custom (the entries of `filter_schedule`)."""
    filter_schedule: str = ""
    """With filter = "custom": entries "until_ratio:low:high" separated by commas, e.g. "0.5:0.3:0.99,1.0:0.01:0.7"
    (the first entry whose until_ratio >= step / total_steps applies; groups kept iff low < accuracy < high)."""
    sfpo_inner_steps: int = 3
    """SFPO: K fast updates before the reposition (0: plain GRPO)."""
    sfpo_alpha: float = 0.8
    """SFPO: reposition step size alpha in [0, 1] (0: the weights return to the slow point, but the optimizer state
    keeps the K fast updates: plain GRPO only with K = 0)."""
    sfpo_entropy_window: int = 30
    """SFPO entropy switch: W, the number of recent step entropies the z-score looks at (>= 2)."""
    sfpo_entropy_threshold: float = 1.0
    """SFPO entropy switch: tau; once z >= tau, switch to plain GRPO for good."""
    sfpo_stop_step: int | None = None
    """SFPO: run it for at most the first N steps (steps 1..N; plain GRPO from step N + 1 on), regardless of
    entropy, as the seed's `stop_sfpo_step`; None: only the entropy switch ends it."""

    @property
    def fast(self) -> bool:
        """FAST-GRPO pieces on (thinking reward; group KL and Slow2Fast by default)."""
        return self.name in ("fast_grpo", "fast_sfpo")

    @property
    def sfpo(self) -> bool:
        """SFPO updates (fast steps, reposition, slow correction) on."""
        return self.name in ("sfpo", "fast_sfpo")

    def validate(self) -> None:
        self._require(0 < self.clip_low < 1, "clip_low", "must be in (0, 1)")
        self._require(self.clip_high > 0, "clip_high", "must be > 0")
        self._require(self.dual_clip is None or self.dual_clip > 1, "dual_clip", "must be > 1 (or none)")
        self._at_least(0, "kl_coef", "kl_min", "kl_max", "length_weight", "format_weight", "sfpo_inner_steps")
        self._require(self.brevity_cap >= 0, "brevity_cap", "must be >= 0 (1.0: no cap)")
        self._require(self.kl_min <= self.kl_max, "kl_min", f"must be <= algorithm.kl_max ({self.kl_max})")
        self._require(0 <= self.percentile <= 100, "percentile", "must be in [0, 100]")
        self._require(0 <= self.sfpo_alpha <= 1, "sfpo_alpha", "must be in [0, 1]")
        self._at_least(2, "sfpo_entropy_window")
        self._require(self.sfpo_stop_step is None or self.sfpo_stop_step >= 0, "sfpo_stop_step", "must be >= 0")
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
