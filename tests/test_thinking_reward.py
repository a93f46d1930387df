"""fastslow.thinking_reward: the FAST difficulty-aware reward on chunks worked out by hand."""

from __future__ import annotations

import pytest
import torch

from fastslow.thinking_reward import ThinkingReward, normalized_complexity, thinking_reward


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _close(actual: torch.Tensor, expected: list[float] | float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)


# Four groups of four. Lengths sum to 500 + 360 + 340 + 400 = 1600, so L = 100.
# pass rates [1, 0.75, 0.25, 0], no complexity so c = 0.5 -> d = [0, 0.125, 0.375, 0.5].
# 80th percentile of the sorted d [0, 0.125, 0.375, 0.5]: position 0.8 * 3 = 2.4 -> 0.375 + 0.4 * 0.125 = 0.425.
# Only group 3 (d = 0.5) is hard.
LENGTHS = [50, 100, 150, 200, 80, 120, 100, 60, 40, 100, 100, 100, 250, 50, 60, 40]
CORRECT = [1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0]
FORMATTED = [1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 0, 0]
# Length scores (len / L = len / 100):
#   g0 easy, all correct: 1 - len/L = [0.5, 0, -0.5, -1]
#   g1 easy: correct ones [0.2, -0.2, 0], the incorrect one 0
#   g2 easy: the correct one 1 - 0.4 = 0.6, the incorrect ones 0
#   g3 hard, all incorrect: min(len/L - 1, 1) = [min(1.5, 1) = 1, -0.5, -0.4, -0.6]
SCORES = [0.5, 0.0, -0.5, -1.0, 0.2, -0.2, 0.0, 0.0, 0.6, 0.0, 0.0, 0.0, 1.0, -0.5, -0.4, -0.6]
# reward = correct + 0.5 * formatted + 0.5 * score
REWARDS = [1.75, 1.5, 0.75, 1.0, 1.6, 1.4, 1.5, 0.5, 1.8, 0.0, 0.5, 0.0, 1.0, 0.25, -0.2, -0.3]


def _four_groups(**kwargs) -> ThinkingReward:
    return thinking_reward(_t(LENGTHS), torch.tensor(CORRECT).bool(), torch.tensor(FORMATTED), 4, **kwargs)


def test_four_groups_by_hand() -> None:
    out = _four_groups()
    _close(out.pass_rate, [1.0, 0.75, 0.25, 0.0])
    _close(out.complexity, [0.5] * 4)
    _close(out.difficulty, [0.0, 0.125, 0.375, 0.5])
    _close(out.threshold, 0.425)
    assert out.hard.tolist() == [False, False, False, True]
    _close(out.mean_length, 100.0)
    _close(out.length_score, SCORES)
    _close(out.rewards, REWARDS)
    for t in (out.rewards, out.difficulty, out.threshold, out.pass_rate, out.length_score, out.mean_length):
        assert t.dtype == torch.float32


def test_weights_changed() -> None:
    # length_weight 1, format_weight 0: reward = correct + score.
    out = _four_groups(length_weight=1.0, format_weight=0.0)
    _close(out.rewards, [1.5, 1, 0.5, 0, 1.2, 0.8, 1, 0, 1.6, 0, 0, 0, 1, -0.5, -0.4, -0.6])
    # format_weight 2, length_weight 0: reward = correct + 2 * formatted.
    out = _four_groups(length_weight=0.0, format_weight=2.0)
    _close(out.rewards, [3, 3, 1, 3, 3, 3, 3, 2, 3, 0, 2, 0, 2, 2, 0, 0])


def test_percentile_changed() -> None:
    # 50th percentile of [0, 0.125, 0.375, 0.5]: position 1.5 -> 0.125 + 0.5 * 0.25 = 0.25; groups 2 and 3 hard.
    # Group 2 now hard: its correct response gets 0, its incorrect ones (len = L) min(1 - 1, 1) = 0.
    out = _four_groups(percentile=50.0)
    _close(out.threshold, 0.25)
    assert out.hard.tolist() == [False, False, True, True]
    expected = list(SCORES)
    expected[8] = 0.0
    _close(out.length_score, expected)


def test_int_lengths_same_as_float() -> None:
    # Lengths may be token or character counts, ints or floats.
    a = _four_groups()
    b = thinking_reward(torch.tensor(LENGTHS), torch.tensor(CORRECT), torch.tensor(FORMATTED).bool(), 4)
    torch.testing.assert_close(a.rewards, b.rewards, atol=0, rtol=0)


def test_hard_and_correct_gets_no_length_term() -> None:
    # Five groups of two, pass rates [1, 1, 1, 1, 0.5] -> d = [0, 0, 0, 0, 0.25]; 80th percentile: position 3.2
    # -> 0 + 0.2 * 0.25 = 0.05, so group 4 is hard. Its correct response (len 300, L = 100) gets score 0.
    lengths = _t([50, 50, 50, 150, 100, 100, 100, 100, 300, 0])
    correct = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    out = thinking_reward(lengths, correct, torch.ones(10), 2)
    _close(out.threshold, 0.05)
    assert out.hard.tolist() == [False, False, False, False, True]
    # The hard incorrect response (len 0): min(0 - 1, 1) = -1.
    _close(out.mean_length, 100.0)
    _close(out.length_score, [0.5, 0.5, 0.5, -0.5, 0, 0, 0, 0, 0, -1])
    _close(out.rewards[8:], [1.5, 0.5 - 0.5])


def test_tie_at_threshold_is_not_hard() -> None:
    # Groups of two with pass rates [1, 0.5, 0, 0, 0] -> d = [0, 0.25, 0.5, 0.5, 0.5].
    # 80th percentile: position 0.8 * 4 = 3.2, between sorted[3] = 0.5 and sorted[4] = 0.5 -> thr = 0.5.
    # Strict `>`: no group is above 0.5, so none is hard and the incorrect responses get no length term.
    lengths = _t([10, 20, 30, 40, 50, 60, 70, 80, 90, 150])
    correct = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    out = thinking_reward(lengths, correct, torch.zeros(10), 2)
    _close(out.difficulty, [0, 0.25, 0.5, 0.5, 0.5])
    _close(out.threshold, 0.5)
    assert not out.hard.any()
    # L = 600 / 10 = 60; easy correct ones: 1 - [10, 20, 30] / 60.
    _close(out.length_score, [5 / 6, 4 / 6, 0.5, 0, 0, 0, 0, 0, 0, 0])


def test_one_above_a_lower_threshold_is_hard() -> None:
    # d = [0, 0, 0, 0.25, 0.5]: position 3.2 -> 0.25 + 0.2 * 0.25 = 0.3; only group 4 is hard.
    correct = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    out = thinking_reward(_t([5, 10, 15, 20, 25, 30, 35, 40, 45, 75]), correct, torch.ones(10), 2)
    _close(out.threshold, 0.3)
    assert out.hard.tolist() == [False, False, False, False, True]
    # L = 30: hard incorrect [45, 75] -> [0.5, min(1.5, 1) = 1].
    _close(out.length_score[8:], [0.5, 1.0])


def test_all_groups_equal_none_hard() -> None:
    # Every group has pass rate 0.5 -> every d = 0.25 = thr.
    correct = torch.tensor([1, 0] * 4)
    out = thinking_reward(_t([30, 10, 20, 40, 7, 13, 50, 30]), correct, torch.ones(8), 2)
    _close(out.difficulty, [0.25] * 4)
    _close(out.threshold, 0.25)
    assert not out.hard.any()
    # All easy: L = 25, correct ones 1 - [30, 20, 7, 50] / 25.
    _close(out.length_score, [-0.2, 0, 0.2, 0, 0.72, 0, -1, 0])


def test_single_group() -> None:
    # One group: d = 0.75 * 0.5 = 0.375 = thr, not hard; L = 25; the correct response 1 - 10/25 = 0.6.
    out = thinking_reward(_t([10, 20, 30, 40]), torch.tensor([1, 0, 0, 0]), torch.tensor([1, 1, 0, 1]), 4)
    assert out.hard.tolist() == [False]
    _close(out.threshold, 0.375)
    _close(out.rewards, [1 + 0.5 + 0.3, 0.5, 0, 0.5])


def test_complexity_ties_share_their_average_rank() -> None:
    # complexity [0.2, 0.9, 0.2, 0.5]: ranks 1.5, 4, 1.5, 3 -> (rank - 1) / 3 = [1/6, 1, 1/6, 2/3].
    # All responses incorrect, so d = c. Sorted [1/6, 1/6, 2/3, 1]: position 2.4 -> 2/3 + 0.4 * 1/3 = 0.8.
    out = thinking_reward(
        _t([1, 2, 3, 4, 5, 6, 7, 8]), torch.zeros(8), torch.zeros(8), 2, complexity=_t([0.2, 0.9, 0.2, 0.5])
    )
    _close(out.complexity, [1 / 6, 1, 1 / 6, 2 / 3])
    _close(out.difficulty, [1 / 6, 1, 1 / 6, 2 / 3])
    _close(out.threshold, 0.8)
    assert out.hard.tolist() == [False, True, False, False]


def test_complexity_scale_does_not_matter_only_ranks() -> None:
    _close(normalized_complexity(_t([30.0, 1.0, 2.5])), [1.0, 0.0, 0.5])
    _close(normalized_complexity(torch.tensor([3, 1, 2])), [1.0, 0.0, 0.5])


def test_complexity_all_equal_is_half() -> None:
    _close(normalized_complexity(_t([0.7, 0.7, 0.7])), [0.5] * 3)
    _close(normalized_complexity(_t([0.3])), [0.5])
    out = thinking_reward(_t([1, 2, 3, 4]), torch.tensor([1, 0, 0, 0]), torch.ones(4), 2, complexity=_t([4.0, 4.0]))
    _close(out.complexity, [0.5, 0.5])
    _close(out.difficulty, [0.25, 0.5])


def test_all_empty_responses_no_nan() -> None:
    # L = 0: length score 0 everywhere, reward = correct + 0.5 * formatted.
    correct = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0])
    formatted = torch.tensor([1, 1, 0, 0, 1, 0, 1, 0])
    out = thinking_reward(torch.zeros(8), correct, formatted, 4)
    _close(out.mean_length, 0.0)
    _close(out.length_score, [0.0] * 8)
    _close(out.rewards, [1.5, 0.5, 0, 0, 1.5, 1, 1.5, 0])


def test_result_on_input_device() -> None:
    out = _four_groups()
    assert all(t.device == torch.device("cpu") for t in (out.rewards, out.hard, out.threshold))


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        (dict(lengths=torch.rand(2, 8) + 1), "lengths"),
        (dict(lengths=[1.0] * 16), "lengths"),
        (dict(lengths=torch.zeros(0), correct=torch.zeros(0), formatted=torch.zeros(0)), "lengths"),
        (dict(lengths=-torch.rand(16) - 1), "lengths"),
        (dict(lengths=torch.full((16,), float("nan"))), "lengths"),
        (dict(correct=torch.ones(15)), "correct"),
        (dict(correct=torch.full((16,), 2.0)), "correct"),
        (dict(correct=torch.full((16,), 0.5)), "correct"),
        (dict(formatted=torch.ones(17)), "formatted"),
        (dict(formatted=-torch.ones(16)), "formatted"),
        (dict(group_size=3), "group_size"),
        (dict(group_size=0), "group_size"),
        (dict(complexity=torch.rand(3)), "complexity"),
        (dict(complexity=torch.rand(4, 1)), "complexity"),
        (dict(complexity=torch.tensor([0.1, float("inf"), 0.2, 0.3])), "complexity"),
        (dict(percentile=100.5), "percentile"),
        (dict(percentile=-1.0), "percentile"),
        (dict(percentile=float("nan")), "percentile"),
        (dict(length_weight=float("inf")), "length_weight"),
        (dict(format_weight="0.5"), "format_weight"),
        (dict(brevity_cap=-0.1), "brevity_cap"),
        (dict(brevity_cap=float("nan")), "brevity_cap"),
    ],
)
def test_bad_input_names_the_argument(changes: dict, name: str) -> None:
    kw = dict(
        lengths=torch.rand(16) * 100 + 1,
        correct=torch.tensor(CORRECT),
        formatted=torch.tensor(FORMATTED),
        group_size=4,
    )
    kw |= changes
    with pytest.raises(ValueError, match=name):
        thinking_reward(kw.pop("lengths"), kw.pop("correct"), kw.pop("formatted"), kw.pop("group_size"), **kw)


# The seed's brevity budget (punish_count = 0.8 * N, spent by each easy-and-correct response in chunk order).
# One group of 8 correct, formatted answers of 100 .. 800 characters: L = 450, the budget 6.4 admits responses
# 1 .. 7 (6.4, 5.4, ..., 0.4 > 0) and not the 8th, whose reward is then 1 + 0.5 = 1.5 (uncapped: 1.1111).
EIGHT = [100.0 * (i + 1) for i in range(8)]


def _eight(**kwargs) -> ThinkingReward:
    return thinking_reward(_t(EIGHT), torch.ones(8, dtype=torch.bool), torch.ones(8, dtype=torch.bool), 8, **kwargs)


def test_brevity_cap_seed_example() -> None:
    out = _eight()
    expected = [1.5 + 0.5 * (1 - x / 450) for x in EIGHT[:7]] + [1.5]
    _close(out.rewards, expected)
    _close(out.length_score[7], 0.0)
    torch.testing.assert_close(out.rewards[7], torch.tensor(1.5))


@pytest.mark.parametrize("cap", [None, 1.0, 2.5])
def test_brevity_cap_off_scores_every_easy_correct_response(cap: float | None) -> None:
    out = _eight(brevity_cap=cap)
    _close(out.rewards, [1.5 + 0.5 * (1 - x / 450) for x in EIGHT])
    assert abs(float(out.rewards[7]) - 1.1111111) < 1e-6


@pytest.mark.parametrize(("cap", "scored"), [(0.75, 6), (0.7, 6), (0.5, 4), (0.1, 1), (0.0, 0)])
def test_brevity_cap_counts_like_the_seed(cap: float, scored: int) -> None:
    # 0.75 * 8 = 6.0 exactly: the 7th response meets a budget of 0, which is not > 0. 0.7 * 8 = 5.6: six pass.
    out = _eight(brevity_cap=cap)
    expected = [1 - x / 450 for x in EIGHT[:scored]] + [0.0] * (8 - scored)
    _close(out.length_score, expected)


def test_brevity_budget_runs_over_the_chunk_in_order_and_only_easy_correct_spend_it() -> None:
    # Three groups of 4 (N = 12, budget 0.8 * 12 = 9.6: ten easy-and-correct responses at most).
    # g0 all correct, g1 all correct, g2 all wrong: p = [1, 1, 0], d = [0, 0, 0.5], thr = 0.3: g2 is hard.
    # The budget is spent by g0's 4 and g1's 4 (8 < 9.6): every one scored; g2's hard-incorrect ones spend nothing.
    lengths = _t([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120])  # L = 65
    correct = torch.tensor([1] * 8 + [0] * 4).bool()
    out = thinking_reward(lengths, correct, torch.ones(12), 4)
    rel = lengths.double() / 65
    _close(out.length_score[:8], (1 - rel[:8]).float().tolist())
    _close(out.length_score[8:], torch.clamp(rel[8:] - 1, max=1).float().tolist())

    # Budget 0.5 * 12 = 6: g0's four and g1's first two; g1's last two get 0, the hard group is untouched.
    out = thinking_reward(lengths, correct, torch.ones(12), 4, brevity_cap=0.5)
    _close(out.length_score[:6], (1 - rel[:6]).float().tolist())
    _close(out.length_score[6:8], [0.0, 0.0])
    _close(out.length_score[8:], torch.clamp(rel[8:] - 1, max=1).float().tolist())

    # The order is the order given: g1 first, its four are scored before g0's, so g0's last two lose theirs.
    swapped = torch.cat([lengths[4:8], lengths[:4], lengths[8:]])
    out = thinking_reward(swapped, correct, torch.ones(12), 4, brevity_cap=0.5)
    rel_s = swapped.double() / 65
    _close(out.length_score[:6], (1 - rel_s[:6]).float().tolist())
    _close(out.length_score[6:8], [0.0, 0.0])
