"""FAST-GRPO's dynamic KL penalty (arXiv 2504.18458): a per-group coefficient that loosens as the group succeeds.

    beta_g = beta_min + (beta_max - beta_min) * (1 - acc_g)        defaults beta_min = 0.001, beta_max = 0.01

A group the policy fails (acc 0 -> beta_max) is held close to the reference while it explores; a group it already
solves (acc 1 -> beta_min) is let move, e.g. towards shorter answers. The coefficient is expanded to one value per
sequence, `[B]`, which `fastslow.kernels.grpo_loss` takes as `kl_coef` and applies to every token of that sequence (with
`low_var_kl`).

Modes (`kl_type` in the config):
    "fixed"           `coef` for every sequence (plain GRPO);
    "batch_accuracy"  the formula with the batch's mean accuracy, one value for all sequences;
    "group_accuracy"  the formula with each group's accuracy, repeated over its `group_size` sequences.

Departures from the seed code: the seed's released code computes the per-group value but drops it and trains with
a fixed 0.01; we apply it per group, per token, as the paper intends (see docs/algorithms.md, "KL penalty").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fastslow._checks import check_accuracy, check_finite_number, check_int
from fastslow.choices import KL_MODES

__all__ = ["KL_MODES", "KLController", "group_kl_coef"]


def group_kl_coef(group_accuracy: Tensor, beta_min: float = 0.001, beta_max: float = 0.01) -> Tensor:
    """The KL coefficient of each group from its accuracy.

    Args:
        group_accuracy: `[G]` real, each in [0, 1].
        beta_min: the coefficient at accuracy 1; `0 <= beta_min <= beta_max`.
        beta_max: the coefficient at accuracy 0.

    Returns:
        `[G]` float32 `beta_min + (beta_max - beta_min) * (1 - acc)`, on `group_accuracy`'s device.

    Raises:
        ValueError: naming the argument, for a bad tensor or out-of-range values.
    """
    beta_min, beta_max = _check_betas(beta_min, beta_max)
    acc_G = check_accuracy("group_accuracy", group_accuracy, dtype=torch.float32)
    return (beta_min + (beta_max - beta_min) * (1.0 - acc_G.to(torch.float64))).to(torch.float32)


class KLController:
    """Chooses the per-sequence KL coefficient each step and keeps what it chose for logging and resuming.

    The coefficients depend only on the inputs; the state is the step count and a summary of the last
    coefficients, so `metrics()` after a resume reports exactly what the run would have.
    """

    def __init__(self, mode: str, *, coef: float = 0.01, beta_min: float = 0.001, beta_max: float = 0.01):
        """
        Args:
            mode: one of `KL_MODES`.
            coef: the coefficient of mode "fixed"; finite and `>= 0`.
            beta_min: the coefficient at accuracy 1 (accuracy modes).
            beta_max: the coefficient at accuracy 0 (accuracy modes); `0 <= beta_min <= beta_max`.
        """
        if mode not in KL_MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, KL_MODES))}; got {mode!r}")
        self.mode = mode
        self.coef = _nonneg("coef", coef)
        self.beta_min, self.beta_max = _check_betas(beta_min, beta_max)
        self.steps = 0
        self._last: dict[str, float] | None = None

    def coefficients(self, correct: Tensor, group_size: int) -> Tensor:
        """Per-sequence coefficients from per-response correctness.

        Args:
            correct: `[B]` bool, or accuracies in [0, 1], laid out group by group (`B = G * group_size`).
            group_size: responses per prompt, `>= 1`, dividing `B`.

        Returns:
            `[B]` float32 coefficients, on `correct`'s device.
        """
        check_int("group_size", group_size, minimum=1)
        acc_B = check_accuracy("correct", correct, dtype=torch.float32)
        if acc_B.numel() % group_size != 0:
            raise ValueError(f"correct has {acc_B.numel()} entries, not a multiple of group_size={group_size}")
        return self.group_coefficients(acc_B.view(-1, group_size).mean(dim=1), group_size)

    def group_coefficients(self, group_accuracy: Tensor, group_size: int) -> Tensor:
        """Per-sequence coefficients from group accuracies (as the curriculum filter already has them).

        Args:
            group_accuracy: `[G]` real, each in [0, 1].
            group_size: responses per prompt, `>= 1`.

        Returns:
            `[G * group_size]` float32 coefficients, each group's value repeated over its sequences.
        """
        check_int("group_size", group_size, minimum=1)
        acc_G = check_accuracy("group_accuracy", group_accuracy, dtype=torch.float32)
        if acc_G.numel() == 0:
            raise ValueError("group_accuracy is empty: a step needs at least one group")
        b = acc_G.numel() * group_size
        if self.mode == "fixed":
            coef_B = torch.full((b,), self.coef, dtype=torch.float32, device=acc_G.device)
        elif self.mode == "batch_accuracy":
            # Groups are equal in size, so the batch's mean accuracy is the mean of the group accuracies.
            beta = group_kl_coef(acc_G.mean().reshape(1), self.beta_min, self.beta_max)
            coef_B = beta.expand(b).clone()
        else:
            coef_B = group_kl_coef(acc_G, self.beta_min, self.beta_max).repeat_interleave(group_size)
        self.steps += 1
        # One device sync for the four numbers.
        summary = torch.stack([coef_B.mean(), coef_B.min(), coef_B.max(), acc_G.mean()]).tolist()
        self._last = dict(zip(("coef_mean", "coef_min", "coef_max", "accuracy"), summary))
        return coef_B

    def merge_summary(
        self, mean: Callable[[list[float]], list[float]], maximum: Callable[[list[float]], list[float]]
    ) -> None:
        """Replace the summary of the last coefficients by the one over all ranks, so the state (and the metrics)
        are the run's: `mean(values)` averages each value over the ranks (every rank holds equally many groups, so
        the mean of means is the global mean), `maximum(values)` takes each value's maximum. The minimum is the
        maximum of the negated value. No-op before the first call."""
        last = self._last
        if last is None:
            return
        coef_mean, accuracy = mean([last["coef_mean"], last["accuracy"]])
        low, high = maximum([-last["coef_min"], last["coef_max"]])
        self._last = {"coef_mean": coef_mean, "coef_min": -low, "coef_max": high, "accuracy": accuracy}

    def metrics(self) -> dict[str, float]:
        """The last coefficients' mean/min/max and the accuracy they came from; empty before the first call."""
        if self._last is None:
            return {}
        return {f"kl/{k}": v for k, v in self._last.items()}

    def state_dict(self) -> dict[str, Any]:
        """Python numbers only (loads with `weights_only=True`); the mode and betas come from the config."""
        return {"steps": self.steps, "last": None if self._last is None else dict(self._last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict()` exactly; raises ValueError naming a missing or malformed key."""
        if not isinstance(state, dict) or set(state) != {"steps", "last"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"KLController state must have keys ['last', 'steps'], got {keys}")
        steps, last = state["steps"], state["last"]
        check_int("KLController state 'steps'", steps, minimum=0)
        expected = {"coef_mean", "coef_min", "coef_max", "accuracy"}
        if last is not None and (not isinstance(last, dict) or set(last) != expected):
            raise ValueError(f"KLController state 'last' must be None or a dict with keys {sorted(expected)}")
        self.steps = steps
        self._last = None if last is None else {k: float(v) for k, v in last.items()}


def _nonneg(name: str, x: object) -> float:
    x = check_finite_number(name, x)
    if x < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    return x


def _check_betas(beta_min: object, beta_max: object) -> tuple[float, float]:
    lo, hi = _nonneg("beta_min", beta_min), _nonneg("beta_max", beta_max)
    if lo > hi:
        raise ValueError(f"beta_min must be <= beta_max, got beta_min={lo}, beta_max={hi}")
    return lo, hi
