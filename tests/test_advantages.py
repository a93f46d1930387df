"""fastslow.advantages: GRPO and Dr. GRPO group advantages against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fastslow.advantages import group_advantages

S3 = math.sqrt(3) / 2  # 0.8660...


def test_grpo_two_groups_by_hand() -> None:
    # Group 0: [1, 0, 0, 1]: mean 0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std 0.57735 -> A = ±0.5 / 0.57735 = ±0.866.
    # Group 1: [2, 2, 2, 5]: mean 2.75, deviations -0.75 (x3) and 2.25, var = (3 * 0.5625 + 5.0625) / 3 = 2.25,
    # std 1.5 -> A = -0.5 (x3), 1.5.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    adv = group_advantages(rewards, 4)
    assert adv.dtype == torch.float32 and adv.shape == (8,)
    expected = torch.tensor([S3, -S3, -S3, S3, -0.5, -0.5, -0.5, 1.5])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)  # eps = 1e-6 moves the 4th digit at most


def test_dr_grpo_is_centred_only() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    adv = group_advantages(rewards, 4, std_normalize=False)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, -0.75, -0.75, -0.75, 2.25])
    torch.testing.assert_close(adv, expected, atol=0, rtol=0)


def test_eps_is_added_to_the_std() -> None:
    # [0, 2]: mean 1, unbiased std sqrt(2); with eps = 1: A = ±1 / (1.41421 + 1) = ±0.414214.
    adv = group_advantages(torch.tensor([0.0, 2.0]), 2, eps=1.0)
    torch.testing.assert_close(adv, torch.tensor([-0.414214, 0.414214]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("std_normalize", [True, False])
def test_all_equal_group_gives_zero(std_normalize: bool) -> None:
    rewards = torch.tensor([3.5, 3.5, 3.5, 1.0, 0.0, 0.5])
    adv = group_advantages(rewards, 3, std_normalize=std_normalize)
    assert torch.isfinite(adv).all()
    assert torch.equal(adv[:3], torch.zeros(3))
    # The other group is untouched by its neighbour: [1, 0, 0.5] centred is [0.5, -0.5, 0].
    assert torch.equal(adv[3:] > 0, torch.tensor([True, False, False]))


@pytest.mark.parametrize("std_normalize", [True, False])
def test_group_size_one_gives_zero_not_nan(std_normalize: bool) -> None:
    adv = group_advantages(torch.tensor([0.7, -2.0, 5.0]), 1, std_normalize=std_normalize)
    assert torch.equal(adv, torch.zeros(3))


@pytest.mark.parametrize(
    "rewards",
    [torch.tensor([True, False, False, True]), torch.tensor([1, 0, 0, 1]), torch.tensor([1.0, 0, 0, 1.0]).double()],
)
def test_bool_int_double_rewards_give_float32(rewards: torch.Tensor) -> None:
    adv = group_advantages(rewards, 4)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, torch.tensor([S3, -S3, -S3, S3]), atol=1e-5, rtol=0)


def test_empty_rewards_give_empty() -> None:
    assert group_advantages(torch.zeros(0), 4).shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(rewards=torch.rand(5) + 0.1, group_size=2), "group_size"),
        (dict(rewards=torch.rand(4) + 0.1, group_size=0), "group_size"),
        (dict(rewards=torch.rand(4) + 0.1, group_size=2.0), "group_size"),
        (dict(rewards=torch.rand(2, 4) + 0.1, group_size=4), "rewards"),
        (dict(rewards=[1.0, 0.0], group_size=2), "rewards"),
        (dict(rewards=torch.ones(4, dtype=torch.complex64), group_size=2), "rewards"),
        (dict(rewards=torch.tensor([1.0, float("nan")]), group_size=2), "rewards"),
        (dict(rewards=torch.tensor([1.0, float("inf")]), group_size=2), "rewards"),
        (dict(rewards=torch.rand(4) + 0.1, group_size=2, eps=0.0), "eps"),
        (dict(rewards=torch.rand(4) + 0.1, group_size=2, eps=float("nan")), "eps"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        group_advantages(**kwargs)


@pytest.mark.parametrize("value", [0.7, 1.3, -0.1, 1e-30, 3.0e-8, 12345.678, 1e30, -3e38])
@pytest.mark.parametrize("group_size", [2, 5, 8, 16])
@pytest.mark.parametrize("std_normalize", [True, False])
def test_constant_groups_are_exactly_zero(value: float, group_size: int, std_normalize: bool) -> None:
    # The float32 mean of eight 0.7s is off by an ulp; divided by std + 1e-6 that was an advantage of 0.056 for
    # every sample (1.3: -0.106), a push on every step from a reward that says nothing.
    rewards = torch.cat([torch.full((group_size,), value), torch.arange(group_size, dtype=torch.float32)])
    adv = group_advantages(rewards, group_size, std_normalize=std_normalize)
    assert torch.equal(adv[:group_size], torch.zeros(group_size))
    assert torch.isfinite(adv).all()  # 1e30 and -3e38: no overflow in the variance


@pytest.mark.parametrize("value", [0.7, 1.3, 1e-20, 1e30])
def test_groups_one_ulp_apart_match_float64(value: float) -> None:
    base = torch.tensor(value, dtype=torch.float32)
    up = torch.nextafter(base, torch.tensor(math.inf))
    r = torch.stack([up] + [base] * 7)  # one sample one ulp above the other seven
    adv = group_advantages(r, 8)
    r64 = r.double()
    expected = (r64 - r64.mean()) / (r64.std() + 1e-6)
    torch.testing.assert_close(adv, expected.float(), rtol=1e-6, atol=1e-12)
    assert adv[0] > 0 and bool((adv[1:] < 0).all())
    assert bool((adv[1:] == adv[1]).all())  # equal rewards, exactly equal advantages


def test_equal_rewards_get_equal_advantages_in_a_mixed_group() -> None:
    r = torch.tensor([0.7, 0.7, 0.7, 0.1, 0.7, 0.1, 0.1, 0.7])
    adv = group_advantages(r, 8)
    assert torch.unique(adv[r == 0.7]).numel() == 1 and torch.unique(adv[r == 0.1]).numel() == 1
    assert abs(float(adv.double().sum())) < 1e-6


def test_large_rewards_do_not_overflow() -> None:
    adv = group_advantages(torch.tensor([1e30, 0.0, 1e30, 0.0]), 4)
    torch.testing.assert_close(adv, torch.tensor([S3, -S3, S3, -S3]), atol=1e-5, rtol=0)
