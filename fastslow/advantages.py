"""Group-relative advantages of GRPO (and Dr. GRPO's unnormalised variant), as used by FAST-GRPO (arXiv 2504.18458).

Rewards arrive group by group: the `group_size` rollouts of prompt 0, then those of prompt 1, and so on, so a flat
`[N]` tensor reshapes to `[G, group_size]`. Each response's advantage is its reward relative to its own group:

    A_i = (r_i - mean_g) / (std_g + eps)        (std_normalize=True, GRPO; std_g unbiased, as torch.std)
    A_i =  r_i - mean_g                         (std_normalize=False, Dr. GRPO)

The advantage is per sequence; the loss broadcasts it over the sequence's tokens.

Departures from the seed code: none in the formula. Three definitions the seed leaves to float rounding or torch:
- a group whose rewards are all equal gets exactly 0 (the seed's float32 mean of eight 0.7s is off by an ulp, which
  `/ (std + eps)` turns into an advantage of 0.056 that pushes the policy every step);
- the mean and std are taken in float64 (the result is float32), so equal rewards get equal advantages, rewards a
  few ulps apart get their exact small advantages, and a reward of 1e30 does not overflow the std into inf;
- with `group_size == 1` the unbiased std of a single value is NaN in torch; we define it as 0, so a lone response
  gets advantage 0 (it has nothing to be compared with) instead of NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastslow._checks import check_1d_real, check_finite_number, check_int

__all__ = ["group_advantages"]


def group_advantages(rewards: Tensor, group_size: int, *, std_normalize: bool = True, eps: float = 1e-6) -> Tensor:
    """Per-response advantages relative to each group's mean (and unbiased std).

    Args:
        rewards: `[N]` real (float, int or bool) scalar rewards laid out group by group, `N = G * group_size`.
        group_size: responses per prompt, `>= 1`.
        std_normalize: divide by the group's unbiased std plus `eps` (GRPO); False gives Dr. GRPO's `r - mean`.
        eps: added to the std so an all-equal group gives 0 rather than 0/0; finite and `> 0`.

    Returns:
        `[N]` float32 advantages on `rewards`' device.

    Raises:
        ValueError: naming the argument, if `rewards` is not a finite 1-D real tensor, `group_size < 1` or does not
            divide `N`, or `eps` is not a finite positive number.
    """
    check_int("group_size", group_size, minimum=1)
    if check_finite_number("eps", eps) <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    check_1d_real("rewards", rewards)
    if not (rewards.is_floating_point() or rewards.dtype == torch.bool or _is_int(rewards)):
        raise ValueError(f"rewards must have a real dtype (float, int or bool), got {rewards.dtype}")
    n = rewards.numel()
    if n % group_size != 0:
        raise ValueError(f"rewards has {n} entries, not a multiple of group_size={group_size}")
    # float64 statistics: the mean of equal float32 rewards is then exact (n copies sum exactly and divide back),
    # and squares of rewards up to float32's range cannot overflow.
    r_GS = rewards.to(torch.float64).view(-1, group_size)
    if not bool(torch.isfinite(r_GS).all()):
        # A NaN from one reward function would silently poison its whole group's advantages.
        raise ValueError("rewards must be finite; got NaN or inf")
    if n == 0:
        return torch.zeros(0, dtype=torch.float32, device=rewards.device)

    # A group whose rewards are all equal carries no signal: its advantage is exactly 0, whatever rounding the
    # mean of float64 inputs would leave (without this, eps would blow a rounding error up to a visible push).
    tied_G1 = r_GS.amax(dim=1, keepdim=True) == r_GS.amin(dim=1, keepdim=True)
    centred_GS = torch.where(tied_G1, 0.0, r_GS - r_GS.mean(dim=1, keepdim=True))
    if not std_normalize or group_size == 1:
        # group_size 1: torch.std of one value is NaN; we take std = 0, and the centred value is already 0.
        return centred_GS.reshape(-1).to(torch.float32)
    # Unbiased (n - 1), as the seed; from the centred values, so it is exactly 0 for a tied group.
    std_G1 = torch.sqrt((centred_GS * centred_GS).sum(dim=1, keepdim=True) / (group_size - 1))
    return (centred_GS / (std_G1 + eps)).reshape(-1).to(torch.float32)


def _is_int(t: Tensor) -> bool:
    return t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
