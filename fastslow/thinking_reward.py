"""FAST-GRPO's difficulty-aware thinking reward (arXiv 2504.18458): short answers to easy prompts, effort on hard ones.

All statistics are taken over one generation chunk: `G` prompts with `group_size` responses each, laid out group by
group (`N = G * group_size`). For group g with pass rate `p_g` (mean correctness) and complexity `c_g`:

    c_g  = (avg_rank(complexity_g) - 1) / (G - 1)   over the chunk's groups (ties share their average rank;
           all equal, or G == 1 -> 0.5); without a complexity, c_g = 0.5
    d_g  = (1 - p_g) * c_g                          difficulty
    thr  = percentile(d, 80)                        linear interpolation (numpy's default)
    hard = d_g > thr                                strict: a group tied at the threshold is not hard
    L    = mean response length over the chunk's N responses
    len_score_i =  1 - len_i / L                    easy and correct, while the brevity budget lasts
                = min(len_i / L - 1, 1)             hard and incorrect (reward exploring longer)
                =  0                                otherwise
    reward_i    = correct_i + format_weight * formatted_i + length_weight * len_score_i

The brevity budget is the seed's `punish_count`: it starts at `brevity_cap * N` and each easy-and-correct response,
taken in the chunk's order (the order of `lengths`), spends one unit of it; a response gets the brevity score only
while the budget before it is still > 0, later easy-and-correct responses get a length score of 0. With the seed's
0.8 and one group of 8 responses, all easy and correct, the first 7 are scored (6.4, 5.4, ..., 0.4 > 0) and the
8th is not. `brevity_cap = None` (or >= 1.0) scores every one of them.

Lengths are counts of whatever unit the caller chooses: tokens by default in this project, characters when the
config asks for the seed's unit. The rule is scale-free (only `len / L` enters), so the unit changes the result only
through the different relative lengths.

Departures from the seed code: the seed counts characters (after removing whitespace around `<`, `>` and `/`, see
`trainer.reward.builtin.lengths`); we count tokens by default (characters as an option, chosen by the caller).
`L == 0` (every response empty) gives a length score of 0 rather than 0/0 = NaN. Everything else, the brevity budget
included, is the seed's rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fastslow._checks import check_1d_real, check_finite_number, check_int

__all__ = ["ThinkingReward", "normalized_complexity", "thinking_reward"]


@dataclass(frozen=True)
class ThinkingReward:
    """The thinking reward of one chunk and the statistics behind it (all float32 unless said)."""

    rewards: Tensor
    """`[N]` the reward of each response."""
    difficulty: Tensor
    """`[G]` `d_g = (1 - p_g) * c_g`."""
    hard: Tensor
    """`[G]` bool, `d_g > threshold`."""
    threshold: Tensor
    """`[]` the percentile of `difficulty`."""
    pass_rate: Tensor
    """`[G]` mean correctness of each group."""
    complexity: Tensor
    """`[G]` the rank-normalised complexity `c_g` in [0, 1] (0.5 everywhere without one)."""
    length_score: Tensor
    """`[N]` the length term before `length_weight`."""
    mean_length: Tensor
    """`[]` `L`, the mean response length over the chunk."""


def normalized_complexity(complexity: Tensor) -> Tensor:
    """Average-rank normalisation of per-group complexities to [0, 1].

    `(rank - 1) / (M - 1)` where tied values share their average rank (scipy's `rankdata(method="average")`); all
    equal, or a single group, gives 0.5 everywhere.

    Args:
        complexity: `[M]` real, finite.

    Returns:
        `[M]` float32 on `complexity`'s device.
    """
    return _avg_rank01(complexity).to(torch.float32)


def _avg_rank01(complexity: Tensor) -> Tensor:
    """`normalized_complexity` in float64."""
    x_M = complexity.to(torch.float64)
    m = x_M.numel()
    if m <= 1:
        return torch.full((m,), 0.5, dtype=torch.float64, device=complexity.device)
    # avg_rank - 1 = (#strictly smaller) + (#equal - 1) / 2; O(M^2) over a chunk's groups, a few hundred at most.
    less_M = (x_M[None, :] < x_M[:, None]).sum(dim=1).to(torch.float64)
    equal_M = (x_M[None, :] == x_M[:, None]).sum(dim=1).to(torch.float64)
    return (less_M + (equal_M - 1) / 2) / (m - 1)


def thinking_reward(
    lengths: Tensor,
    correct: Tensor,
    formatted: Tensor,
    group_size: int,
    *,
    complexity: Tensor | None = None,
    percentile: float = 80.0,
    length_weight: float = 0.5,
    format_weight: float = 0.5,
    brevity_cap: float | None = 0.8,
) -> ThinkingReward:
    """The FAST thinking reward of one chunk of `G` groups of `group_size` responses.

    Args:
        lengths: `[N]` response lengths, real and `>= 0` (tokens by default; characters if the caller counts those).
        correct: `[N]` bool, or 0/1 numbers: the response's answer is right.
        formatted: `[N]` bool, or 0/1 numbers: the response has the expected think/answer format.
        group_size: responses per prompt, `>= 1`, dividing `N`.
        complexity: `[G]` optional real per-prompt complexity (any scale: only its ranks within the chunk count).
        percentile: in [0, 100]; groups with difficulty strictly above this percentile are hard.
        length_weight: weight of the length score in the reward.
        format_weight: weight of the format bonus in the reward.
        brevity_cap: the brevity budget as a fraction of `N` (the seed's 0.8): only the easy-and-correct
            responses met while `brevity_cap * N - (those scored before) > 0`, in the order of `lengths`, get the
            brevity score. `None` (or any value >= 1) removes the cap; 0 gives no brevity score at all.

    Returns:
        A `ThinkingReward`; every tensor on `lengths`' device.

    Raises:
        ValueError: naming the argument, for a wrong type, shape, dtype, device or value.
    """
    check_int("group_size", group_size, minimum=1)
    percentile = check_finite_number("percentile", percentile)
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    length_weight = check_finite_number("length_weight", length_weight)
    format_weight = check_finite_number("format_weight", format_weight)
    if brevity_cap is not None:
        brevity_cap = check_finite_number("brevity_cap", brevity_cap)
        if brevity_cap < 0:
            raise ValueError(f"brevity_cap must be >= 0 or None, got {brevity_cap}")

    check_1d_real("lengths", lengths)
    n = lengths.numel()
    if n == 0:
        raise ValueError("lengths is empty: a chunk needs at least one group")
    if n % group_size != 0:
        raise ValueError(f"lengths has {n} entries, not a multiple of group_size={group_size}")
    g = n // group_size
    device = lengths.device
    len_N = lengths.to(torch.float64)
    if not bool(torch.isfinite(len_N).all()) or bool((len_N < 0).any()):
        raise ValueError("lengths must be finite and >= 0")
    correct_N = _binary("correct", correct, n, device)
    formatted_N = _binary("formatted", formatted, n, device)
    if complexity is None:
        c_G = torch.full((g,), 0.5, dtype=torch.float64, device=device)
    else:
        check_1d_real("complexity", complexity)
        if complexity.numel() != g:
            raise ValueError(f"complexity has {complexity.numel()} entries, expected one per group ({g})")
        if complexity.device != device:
            raise ValueError(f"complexity is on {complexity.device} but lengths is on {device}")
        if not bool(torch.isfinite(complexity.to(torch.float64)).all()):
            raise ValueError("complexity must be finite")
        c_G = _avg_rank01(complexity)

    # float64 inside so the strict `d > thr` test is not decided by float32 rounding of the interpolation.
    pass_G = correct_N.view(g, group_size).mean(dim=1)
    d_G = (1.0 - pass_G) * c_G
    thr = torch.quantile(d_G, percentile / 100.0, interpolation="linear")
    hard_G = d_G > thr

    mean_len = len_N.mean()
    score_N = torch.zeros_like(len_N)
    if mean_len > 0:  # else every response is empty: no length signal, rather than 0/0
        rel_N = len_N / mean_len
        hard_N = hard_G.repeat_interleave(group_size)
        right_N = correct_N > 0.5
        brief_N = ~hard_N & right_N
        if brevity_cap is not None:
            # The seed's punish_count: the k-th easy-and-correct response (k = 0, 1, ...) is scored iff
            # cap * N - k > 0. Computed in float64 as the seed's float count, so 0.8 * 8 = 6.4 admits k = 0..6.
            k_N = torch.cumsum(brief_N.to(torch.int64), dim=0) - 1
            brief_N = brief_N & (brevity_cap * n - k_N.to(torch.float64) > 0)
        score_N = torch.where(brief_N, 1.0 - rel_N, score_N)
        score_N = torch.where(hard_N & ~right_N, torch.clamp(rel_N - 1.0, max=1.0), score_N)

    reward_N = correct_N + format_weight * formatted_N + length_weight * score_N
    f32 = torch.float32
    return ThinkingReward(
        rewards=reward_N.to(f32),
        difficulty=d_G.to(f32),
        hard=hard_G,
        threshold=thr.to(f32),
        pass_rate=pass_G.to(f32),
        complexity=c_G.to(f32),
        length_score=score_N.to(f32),
        mean_length=mean_len.to(f32),
    )


def _binary(name: str, t: object, n: int, device: torch.device) -> Tensor:
    """`t` as float64 `[n]` after checking it holds only 0 and 1 (or is bool)."""
    t = check_1d_real(name, t)
    if t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries, expected {n} (as lengths)")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but lengths is on {device}")
    t64 = t.to(torch.float64)
    if t.dtype != torch.bool and not bool(((t64 == 0) | (t64 == 1)).all()):
        raise ValueError(f"{name} must be bool or hold only 0 and 1")
    return t64
