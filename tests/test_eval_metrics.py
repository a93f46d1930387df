"""trainer.eval.metrics on hand-made cases: pass@k against brute-force enumeration, maj@n votes and ties, lengths
split by correctness, the per-difficulty split."""

from __future__ import annotations

import itertools
import math

import pytest

from trainer.eval.metrics import (
    PromptResult,
    difficulty_label,
    eval_metrics,
    ks_for,
    majority_correct,
    pass_at_k,
    summarize,
)


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The fraction of the k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_pass_at_k_equals_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_binomials_overflow() -> None:
    # C(2000, 1000) overflows a float; the product form does not, and matches the exact rational value.
    exact = 1 - math.comb(1990, 1000) / math.comb(2000, 1000)
    assert pass_at_k(2000, 10, 1000) == pytest.approx(exact, rel=1e-12)
    assert pass_at_k(2000, 0, 1000) == 0.0 and pass_at_k(2000, 1001, 1000) == 1.0
    assert pass_at_k(4, 1, 1) == 0.25
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)]:
        with pytest.raises(ValueError, match="pass_at_k"):
            pass_at_k(*bad)


def test_ks_are_powers_of_two_up_to_n() -> None:
    assert ks_for(1) == [1] and ks_for(4) == [1, 2, 4] and ks_for(5) == [1, 2, 4] and ks_for(16) == [1, 2, 4, 8, 16]


@pytest.mark.parametrize(
    ("answers", "correct", "expected"),
    [
        (["3", "3", "2", "1"], [True, True, False, False], True),  # clear majority
        (["2", "3", "2", "3"], [False, True, False, True], False),  # 2-2 tie: "2" was voted first
        (["3", "2", "2", "3"], [True, False, False, True], True),  # 2-2 tie: "3" was voted first
        (["1", "2", "3", "4"], [False, False, False, True], False),  # four singletons: the first wins
        ([None, "4", None, "1"], [False, True, False, False], True),  # no answer, no vote: 1-1, "4" first
        ([None, None], [False, False], False),  # nobody voted
        (["1", "1", "4", None], [False, False, True, False], False),
    ],
)
def test_majority_vote_and_ties(answers, correct, expected) -> None:
    assert majority_correct(answers, correct) is expected


def test_majority_vote_groups_equivalent_wrong_answers() -> None:
    # "1/2" and "0.5" are one (wrong) answer under the equivalence given, so they outvote the single correct one.
    answers, correct = ["7", "1/2", "0.5", "x"], [True, False, False, False]
    assert majority_correct(answers, correct) is True  # as strings: four singletons, the first (correct) wins
    same = lambda a, b: {a, b} == {"1/2", "0.5"} or a == b
    assert majority_correct(answers, correct, same) is False
    # Correct answers are one class however they are written (each matches the reference).
    assert majority_correct(["\\frac{1}{2}", "0.5", "3", "3"], [True, True, False, False]) is True
    with pytest.raises(ValueError, match="answers"):
        majority_correct(["1"], [True, False])


def test_summarize_by_hand() -> None:
    results = [
        PromptResult((True, True, False, False), (True, False, True, False), (2, 4, 10, 20), majority=True),
        PromptResult((False, False, False, False), (False, False, False, False), (6, 6, 6, 6), majority=False),
    ]
    m = summarize(results, 4)
    assert m["avg@4"] == pytest.approx(2 / 8)
    assert m["pass@1"] == pytest.approx(m["avg@4"])
    assert m["pass@2"] == pytest.approx((1 - 1 / 6 + 0) / 2)  # C(2,2)/C(4,2) = 1/6 of the pairs miss
    assert m["pass@4"] == pytest.approx(0.5)
    assert m["maj@4"] == 0.5
    assert m["length"] == pytest.approx((2 + 4 + 10 + 20 + 24) / 8)
    assert m["length_correct"] == pytest.approx(3.0)
    assert m["length_incorrect"] == pytest.approx((10 + 20 + 24) / 6)
    assert m["format"] == pytest.approx(2 / 8)
    assert m["prompts"] == 2.0
    none_right = summarize(results[1:], 4)
    assert math.isnan(none_right["length_correct"]) and none_right["length_incorrect"] == 6.0
    with pytest.raises(ValueError, match="n=3"):
        summarize(results, 3)


def test_split_by_difficulty() -> None:
    right, wrong = (True, True), (False, False)
    results = [
        PromptResult(right, right, (1, 1), True, difficulty="2"),
        PromptResult(wrong, right, (3, 3), False, difficulty="10"),
        PromptResult(right, wrong, (5, 5), True, difficulty="2"),
        PromptResult(wrong, wrong, (7, 7), False, difficulty=None),  # counted overall only
    ]
    m = eval_metrics(results, 2, prefix="eval/x/")
    assert m["eval/x/avg@2"] == 0.5 and m["eval/x/prompts"] == 4.0
    assert m["eval/x/level_2/avg@2"] == 1.0 and m["eval/x/level_2/prompts"] == 2.0
    assert m["eval/x/level_2/length"] == 3.0 and m["eval/x/level_2/format"] == 0.5
    assert m["eval/x/level_10/avg@2"] == 0.0 and m["eval/x/level_10/maj@2"] == 0.0
    levels = [k.split("/")[2] for k in m if k.endswith("/prompts") and "/level_" in k]
    assert levels == ["level_2", "level_10"]  # numeric order
    assert not any("level_None" in k for k in m)


def test_difficulty_labels() -> None:
    assert difficulty_label(3) == "3" and difficulty_label(3.0) == "3" and difficulty_label(2.5) == "2.5"
    assert difficulty_label("Level 3") == "Level_3" and difficulty_label(" hard ") == "hard"
    assert difficulty_label(None) is None and difficulty_label("  ") is None and difficulty_label(True) is None
